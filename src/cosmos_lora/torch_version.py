"""The oldest torch cosmos-lora runs on, in one place.

2.6 is the newest of the torch APIs the code relies on: `torch.serialization.skip_data` (merge
writes the merged checkpoint's archive without its tensors) and `sdpa_kernel(..., set_priority=True)`
(the DiT's attention backend order) both arrived in 2.6; `torch.load(mmap=)`, `init_process_group(
device_id=)` and `torch._scaled_mm` with rowwise scales are older. pyproject.toml's `torch>=` bound
says the same (a test checks), and the CLI refuses an older torch with one line instead of failing
halfway through a run.
"""

import re
from importlib import metadata

from cosmos_lora.errors import UserError

MIN_TORCH = "2.6"


def major_minor(version: str) -> tuple[int, int]:
    """'2.13.0+cu128' -> (2, 13); '2.7.0a0+git' -> (2, 7)."""
    found = re.match(r"\s*(\d+)\.(\d+)", version)
    if not found:
        raise ValueError(f"not a torch version: {version!r}")
    return int(found[1]), int(found[2])


def installed_torch() -> str:
    """The installed torch's version, read from its package metadata (importing torch takes seconds)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch built from source without metadata
        import torch

        return torch.__version__


def check_torch(installed: str | None = None) -> None:
    installed = installed or installed_torch()
    if major_minor(installed) < major_minor(MIN_TORCH):
        raise UserError(f"torch {installed} is installed; cosmos-lora needs torch >= {MIN_TORCH}.",
                        f"install a newer torch first (CPU: `pip install torch==2.13.0`; GPU: the CUDA build "
                        f"of torch >= {MIN_TORCH} for your driver), then rerun.")
