"""An inference plan (settings + prompts) run by one process or spread over torchrun's processes.

`python -m cosmos_lora.infer.run <out>/plan.json` is what torchrun starts on each GPU: every
process takes its share of the (prompt, seed) jobs; the main one writes `index.html` at the end.
"""

import time

STARTED = time.time()  # before the heavy imports below: the start-up line splits the time at this point

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist

from cosmos_lora.distributed import Distributed, run_worker
from cosmos_lora.infer.pipeline import finish, run_jobs
from cosmos_lora.infer.plan import load_plan
from cosmos_lora.infer.prompts import shard
from cosmos_lora.infer.settings import job_done
from cosmos_lora.model.parallel import make_groups, video_layout
from cosmos_lora.quick_exit import exit_now

IMPORTED = time.time()


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
