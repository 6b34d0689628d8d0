"""Which LoRA to generate with: a run's adapter (latest, or `--step`); files are read by
`cosmos_lora.model.adapter_files`."""

from cosmos_lora.errors import UserError
from cosmos_lora.model.adapter_files import Adapter, from_file
from cosmos_lora.run_folder import RunFolder


def from_run(run: RunFolder, step: int | None = None, ema: bool = True) -> Adapter:
    """The run's newest adapter (or the one at `step`); its EMA when `ema` and one was saved."""
    latest = run.read_latest()
    if latest is None:
        raise UserError(f"{run.path} has no saved adapter yet.", "wait for the first save, or check the run name.")
    step = latest["step"] if step is None else step
    raw, averaged = run.adapter(step), run.adapter(step, ema=True)
    if not raw.is_file():
        raise UserError(f"{run.path} has no adapter for step {step}.", f"use one of: {', '.join(run.saved_adapter_names())}.")
    return from_file(averaged if ema and averaged.is_file() else raw)
