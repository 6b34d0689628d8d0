"""`<out>/plan.json`: one inference run's settings, prompts and seeds, written by the CLI before it starts
the workers (`infer/run.py`), which each read it back. Nothing here imports the model stack.
"""

import json
from dataclasses import asdict
from pathlib import Path

from cosmos_lora.errors import UserError
from cosmos_lora.files import atomic_write, require_writable
from cosmos_lora.infer.prompts import Job, Prompt, plan_jobs
from cosmos_lora.infer.settings import RERUN_MAY_CHANGE, InferSettings, dit_fingerprint

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
