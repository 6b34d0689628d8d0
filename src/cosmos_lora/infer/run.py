"""An inference plan (settings + prompts) run by one process or spread over torchrun's processes.

`python -m cosmos_lora.infer.run <out>/plan.json` is what torchrun starts on each GPU: every
process takes its share of the (prompt, seed) jobs; the main one writes `index.html` at the end.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from cosmos_lora.distributed import Distributed, close_distributed, init_distributed
from cosmos_lora.errors import UserError
from cosmos_lora.infer.pipeline import InferSettings, finish, run_jobs
from cosmos_lora.infer.prompts import Job, Prompt, plan_jobs, shard
from cosmos_lora.paths import atomic_path

PLAN = "plan.json"


def save_plan(settings: InferSettings, prompts: list[Prompt], num_videos: int, seed: int) -> Path:
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    path = settings.out_dir / PLAN
    plan = {"settings": settings.to_json(), "prompts": [asdict(p) for p in prompts], "num_videos": num_videos, "seed": seed}
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(plan, indent=1))
    tmp.replace(path)
    return path


def load_plan(path: Path) -> tuple[InferSettings, list[Job]]:
    plan = json.loads(Path(path).read_text())
    prompts = [Prompt(**p) for p in plan["prompts"]]
    return InferSettings.from_json(plan["settings"]), plan_jobs(prompts, plan["num_videos"], plan["seed"])


def run_plan(plan_path: Path, dist_info: Distributed) -> tuple[list[Path], Path | None]:
    settings, jobs = load_plan(plan_path)
    written = run_jobs(settings, shard(jobs, dist_info.rank, dist_info.world_size), dist_info.device, dist_info.is_main)
    if dist_info.enabled:
        dist.barrier()
    index = finish(settings, jobs) if dist_info.is_main else None
    return written, index


def main(plan_path: str) -> int:
    dist_info = init_distributed()
    try:
        run_plan(Path(plan_path), dist_info)
        return 0
    except UserError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    finally:
        close_distributed()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
