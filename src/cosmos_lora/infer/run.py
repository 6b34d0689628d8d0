"""An inference plan (settings + prompts) run by one process or spread over torchrun's processes.

`python -m cosmos_lora.infer.run <out>/plan.json` is what torchrun starts on each GPU: every
process takes its share of the (prompt, seed) jobs; the main one writes `index.html` at the end.
"""

import time

STARTED = time.time()  # before the heavy imports below: the start-up line splits the time at this point

import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist

from cosmos_lora.distributed import Distributed, run_worker
from cosmos_lora.errors import UserError
from cosmos_lora.files import atomic_write, require_writable
from cosmos_lora.infer.pipeline import RERUN_MAY_CHANGE, InferSettings, dit_fingerprint, finish, job_done, run_jobs
from cosmos_lora.infer.prompts import Job, Prompt, plan_jobs, shard
from cosmos_lora.model.parallel import make_groups, video_layout
from cosmos_lora.quick_exit import exit_now

IMPORTED = time.time()
PLAN = "plan.json"


def save_plan(settings: InferSettings, prompts: list[Prompt], num_videos: int, seed: int) -> Path:
    """Writes `<out>/plan.json`. Refuses to remake an existing folder's videos with other settings (each
    would be replaced as its sidecar no longer matches: `job_done`) unless `overwrite` asks for it."""
    require_writable(settings.out_dir, "the videos")
    path = settings.out_dir / PLAN
    if path.is_file() and not settings.overwrite:
        _check_same_settings(json.loads(path.read_text())["settings"], settings.to_json(), settings.out_dir)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "settings": settings.to_json(), "dit_fingerprint": dit_fingerprint(settings.dit),
        "prompts": [asdict(p) for p in prompts], "num_videos": num_videos, "seed": seed,
    }
    atomic_write(path, json.dumps(plan, indent=1))
    return path


def _check_same_settings(before: dict, now: dict, out_dir: Path) -> None:
    changed = [k for k in now if k not in RERUN_MAY_CHANGE and before.get(k) != now[k]]
    if changed:
        what = ", ".join(f"{k} {before.get(k)} -> {now[k]}" for k in changed[:3])
        raise UserError(
            f"{out_dir} holds videos made with other settings ({what}).",
            "pass --name NEW for a new folder, or --overwrite to remake them with these settings.",
        )


def load_plan(path: Path) -> tuple[InferSettings, list[Job]]:
    plan = json.loads(Path(path).read_text())
    prompts = [Prompt(**p) for p in plan["prompts"]]
    return InferSettings.from_json(plan["settings"]), plan_jobs(prompts, plan["num_videos"], plan["seed"])


def run_plan(plan_path: Path, dist_info: Distributed) -> tuple[list[Path], Path | None]:
    """This video group's share of the plan's jobs (a group of `gpus_per_video` processes makes each of
    its videos together); the main process writes `index.html` once all are done."""
    settings, jobs = load_plan(plan_path)
    if dist_info.is_main:  # the plan is written just before the launch: this is torchrun + imports + joining
        launched, now = plan_path.stat().st_mtime, time.time()
        split = (f" (torchrun and python {STARTED - launched:.1f} s, imports {IMPORTED - STARTED:.1f} s, "
                 f"process group {now - IMPORTED:.1f} s)") if STARTED >= launched else ""  # else: the CLI's process
        print(f"workers up {now - launched:.1f} s after the launch{split}", file=sys.stderr)
    layout = video_layout(dist_info.world_size, settings.gpus_per_video, settings.cfg_parallel)
    groups = make_groups(layout, dist_info.rank) if dist_info.enabled else None
    video = groups.video if groups else 0
    settings.extra_meta["process"] = f"{dist_info.rank}/{dist_info.world_size}"
    if layout.per_video > 1:
        settings.extra_meta["parallel"] = layout.describe()
    mine = shard(jobs, video, layout.videos_at_once)
    finished = 0 if settings.overwrite else sum(job_done(settings, job) for job in mine)
    written = run_jobs(settings, mine, dist_info.device, dist_info.is_main, groups)
    print(
        f"process {dist_info.rank}/{dist_info.world_size}: {len(mine)} jobs, {finished} finished before, "
        f"{len(written)} videos written" + (f" (video group {video})" if layout.per_video > 1 else ""),
        file=sys.stderr,
    )
    if dist_info.enabled:
        dist.barrier()
    index = finish(settings, jobs) if dist_info.is_main else None
    return written, index


def main(argv: list[str]) -> int:
    """A worker's life: `argv` = [plan.json]; see `distributed.run_worker` for the exit codes."""
    return run_worker(lambda dist_info: run_plan(Path(argv[0]), dist_info))


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))  # the launcher waits for every worker: skip the interpreter's teardown
