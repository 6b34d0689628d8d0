"""Which LoRA to generate with: a run's adapter (latest, or `--step`); files are read by
`cosmos_lora.model.adapter_files`."""

from pathlib import Path

from cosmos_lora.errors import UserError
from cosmos_lora.model.adapter_files import Adapter, from_file
from cosmos_lora.train.checkpointer import adapter_paths, read_latest


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
    return from_file(averaged if ema and averaged.is_file() else raw)


def resolve_run(name_or_dir: str, runs_dir: Path) -> Path:
    path = Path(name_or_dir)
    run_dir = path if path.is_dir() else runs_dir / name_or_dir
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"No run {name_or_dir!r} (looked in {run_dir}).", "list them with `cosmos-lora runs`.")
    return run_dir
