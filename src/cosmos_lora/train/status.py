"""`<run>/status.json`: running, finished, interrupted or failed, and the step. Written by rank 0;
read with `RunFolder.read_status`."""

import json
import time
from pathlib import Path

from cosmos_lora.files import atomic_write
from cosmos_lora.run_folder import RunFolder


def write_status(run_dir: Path, state: str, step: int, dist_info=None, message: str | None = None) -> None:
    """`message` says why a run failed, for the launcher to repeat."""
    if dist_info is not None and not dist_info.is_main:
        return
    status = {"state": state, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(RunFolder(run_dir).status_file, json.dumps(status | ({"message": message} if message else {})))
