"""Which LoRA to generate with: a run's adapter (latest, or `--step`), or a file.

The adapter's rank, scale, blocks and targets always come from the file itself.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_lora.errors import UserError
from cosmos_lora.model.lora import LoraSpec, adapter_summary, from_official, read_adapter
from cosmos_lora.train.checkpointer import adapter_paths, read_latest


@dataclass
class Adapter:
    state: dict[str, torch.Tensor]
    spec: LoraSpec
    source: Path
    step: int | None = None
    ema: bool = False

    def describe(self, lora_scale: float = 1.0) -> dict:
        return {
            "adapter": str(self.source), "adapter_sha256": _sha256(self.source), "adapter_step": self.step,
            "adapter_ema": self.ema, "lora_rank": self.spec.rank, "lora_scale": self.spec.scale * lora_scale,
            "lora_blocks": list(self.spec.blocks), "lora_targets": list(self.spec.targets),
        }

    def summary(self) -> str:
        what = f"step {self.step}" + (" (EMA)" if self.ema else "") if self.step is not None else "file"
        return f"{self.source} [{what}]: {adapter_summary(self.spec)}"


def from_run(run_dir: Path, step: int | None = None, ema: bool = True) -> Adapter:
    """The run's newest adapter (or the one at `step`); its EMA when `ema` and one was saved."""
    latest = read_latest(run_dir)
    if latest is None:
        raise UserError(f"{run_dir} has no saved adapter yet.", "wait for the first save, or check the run name.")
    step = latest["step"] if step is None else step
    raw, averaged = adapter_paths(run_dir, step)
    if not raw.is_file():
        saved = sorted(p.name for p in (run_dir / "adapters").glob("step_*.safetensors") if ".ema." not in p.name)
        raise UserError(f"{run_dir} has no adapter for step {step}.", f"use one of: {', '.join(saved)}.")
    path = averaged if ema and averaged.is_file() else raw
    state, spec, _ = read_adapter(path)
    return Adapter(state, spec, path, step, path == averaged)


def from_file(path: Path, scale: float | None = None) -> Adapter:
    """Our `.safetensors` adapter, or an official cosmos-predict1 checkpoint holding LoRA tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No LoRA file at {path}.", "check the path given to --lora.")
    if path.suffix == ".safetensors":
        state, spec, metadata = read_adapter(path)
        return Adapter(state, spec, path, int(metadata["step"]) if "step" in metadata else None, metadata.get("ema") == "True")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    # official files do not store the scale; the official LoRA example trains with scale 1
    state, spec = from_official(checkpoint, scale=1.0 if scale is None else scale, source=path)
    return Adapter(state, spec, path)


def resolve_run(name_or_dir: str, runs_dir: Path) -> Path:
    path = Path(name_or_dir)
    run_dir = path if path.is_dir() else runs_dir / name_or_dir
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"No run {name_or_dir!r} (looked in {run_dir}).", f"list runs with `ls {runs_dir}`.")
    return run_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


