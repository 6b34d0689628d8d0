"""A training run's folder, `<outputs>/runs/<run>/`: every path in it, and finding one by `--run`.

    config.yaml                              the resolved experiment (`posttrain --config` input)
    adapters/step_000100.safetensors         LoRA tensors of each save (+ .ema.safetensors: their EMA)
    state/step_000100/                       optimizer, scheduler, EMA, data position, RNG streams
    latest.json                              the newest complete save (step, state, adapters, world size)
    status.json                              running | finished | interrupted | failed, and the step
    metrics.csv, tensorboard/                one row / event per logged step
    samples/step_000100/                     validation videos
    ../.<run>.launch.json                    what task 0 made of the latest srun/torchrun launch

The twin of `data.layout.DatasetLayout`: training writes these paths, `runs`, `infer`, `export`
read them, and none of them spells a file name itself.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from cosmos_lora.errors import UserError

CONFIG = "config.yaml"
LATEST = "latest.json"
STATUS = "status.json"
METRICS = "metrics.csv"
ADAPTERS = "adapters"
STATES = "state"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"
LAUNCH_NOTE_SUFFIX = ".launch.json"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def resolve(cls, name_or_dir: str | Path, runs_dir: Path) -> "RunFolder":
        """`--run NAME|PATH`: a folder holding a config.yaml, else `runs_dir/NAME`."""
        path = Path(name_or_dir)
        run = cls(path if path.is_dir() else Path(runs_dir) / name_or_dir)
        if not run.config_file.is_file():
            raise UserError(f"No run {str(name_or_dir)!r} (looked in {run.path}).", "list the runs with `cosmos-lora runs`.")
        return run

    @classmethod
    def all_in(cls, runs_dir: Path) -> list["RunFolder"]:
        """Every run folder of `runs_dir` (those holding a config.yaml), by name."""
        runs_dir = Path(runs_dir)
        folders = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
        return [cls(p) for p in folders if (p / CONFIG).is_file()]

    @property
    def name(self) -> str:
        return self.path.name

    # -- files and folders ------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def latest_file(self) -> Path:
        return self.path / LATEST

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def adapters_dir(self) -> Path:
        return self.path / ADAPTERS

    @property
    def states_dir(self) -> Path:
        return self.path / STATES

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES

    @property
    def launch_note(self) -> Path:
        """Beside the run folder, not in it: a failed first launch may leave no run folder."""
        return self.path.with_name(f".{self.name}{LAUNCH_NOTE_SUFFIX}")

    def adapter(self, step: int, ema: bool = False) -> Path:
        return self.adapters_dir / f"{step_name(step)}{'.ema' if ema else ''}.safetensors"

    def state(self, step: int) -> Path:
        return self.states_dir / step_name(step)

    def samples(self, step: int) -> Path:
        return self.samples_dir / step_name(step)

    def relative(self, path: Path) -> str:
        """How latest.json names a file of the run: relative to the run folder."""
        return str(Path(path).relative_to(self.path))

    def saved_adapter_names(self) -> list[str]:
        """File names of the raw (not EMA) adapters saved so far."""
        return sorted(p.name for p in self.adapters_dir.glob("step_*.safetensors") if ".ema." not in p.name)

    # -- what the trainer reports -----------------------------------------------------------------

    def saved_steps(self) -> list[int]:
        """Steps of the saves in state/, newest first. A save's folder gets its name only once every rank
        has written it, so each is complete (though a disk error may since have damaged a file)."""
        steps = [p.name[len("step_"):] for p in self.states_dir.glob("step_*") if p.is_dir()]
        return sorted((int(step) for step in steps if step.isdigit()), reverse=True)

    def read_latest(self) -> dict | None:
        """latest.json; None where there is none, or where it is damaged (`latest_damaged` tells which)."""
        try:
            latest = json.loads(self.latest_file.read_text())
        except (OSError, ValueError):
            return None
        return latest if isinstance(latest, dict) and isinstance(latest.get("step"), int) else None

    def latest_damaged(self) -> bool:
        return self.latest_file.exists() and self.read_latest() is None

    def read_status(self) -> dict | None:
        return json.loads(self.status_file.read_text()) if self.status_file.is_file() else None

    def check_resumable(self, world_size: int, nnodes: int = 1) -> None:
        """A resume needs as many processes as saved the state (the data order and RNG streams depend on it)."""
        saved = (self.read_latest() or {}).get("world_size")
        if saved is not None and saved != world_size:
            shape = f" ({nnodes} node(s) x {world_size // nnodes})" if nnodes > 1 else ""
            raise UserError(
                f"{self.path} was saved by {saved} processes; this launch has {world_size}{shape}.",
                f"resume with {saved} processes in all (e.g. --nproc {max(1, saved // nnodes)}).",
            )
