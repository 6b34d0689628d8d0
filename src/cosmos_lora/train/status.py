"""`<run>/status.json`: running, finished, interrupted or failed, and the step. Written by rank 0."""

import json
import time
from pathlib import Path

from cosmos_lora.paths import atomic_path

STATUS = "status.json"


def write_status(run_dir: Path, state: str, step: int, dist_info=None, message: str | None = None) -> None:
    """`message` says why a run failed, for the launcher to repeat."""
    if dist_info is not None and not dist_info.is_main:
        return
    path = Path(run_dir) / STATUS
    tmp = atomic_path(path)
    status = {"state": state, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp.write_text(json.dumps(status | ({"message": message} if message else {})))
    tmp.replace(path)


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else None
