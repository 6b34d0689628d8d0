"""What a run keeps on disk, and resume.

    <run>/adapters/step_000100.safetensors       LoRA tensors (+ spec, step, base fingerprint in metadata)
    <run>/adapters/step_000100.ema.safetensors   the EMA of the same
    <run>/state/step_000100/train_state.pt       optimizer, scheduler, EMA, LoRA, step, data position
    <run>/state/step_000100/rng_rank{r}.pt       every rank's RNG streams
    <run>/latest.json                            the newest complete save

A save is written into a hidden folder and renamed when every rank has finished, and
`latest.json` is replaced atomically after that, so an interrupted save is never picked up.
Adapters are kept at every save (a few MB); only the last `keep_states` states are kept.
"""

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_lora.model.lora import LoraSpec, save_adapter
from cosmos_lora.paths import atomic_path
from cosmos_lora.distributed import Distributed

LATEST = "latest.json"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def adapter_paths(run_dir: Path, step: int) -> tuple[Path, Path]:
    folder = run_dir / "adapters"
    return folder / f"{step_name(step)}.safetensors", folder / f"{step_name(step)}.ema.safetensors"


def read_latest(run_dir: Path) -> dict | None:
    path = run_dir / LATEST
    return json.loads(path.read_text()) if path.is_file() else None


def _barrier(dist_info: Distributed) -> None:
    if dist_info.enabled:
        dist.barrier()


class Checkpointer:
    def __init__(self, run_dir: Path, dist_info: Distributed, spec: LoraSpec, keep_states: int, metadata: dict):
        self.run_dir, self.dist, self.spec = Path(run_dir), dist_info, spec
        self.keep_states, self.metadata = keep_states, metadata
        self.states_dir = self.run_dir / "state"

    def save(self, step: int, lora: dict, ema: dict | None, train_state: dict, rng_state: dict) -> None:
        tmp = self.states_dir / f".{step_name(step)}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state, tmp / f"rng_rank{self.dist.rank}.pt")
        if self.dist.is_main:
            torch.save(train_state, tmp / "train_state.pt")
            raw_path, ema_path = adapter_paths(self.run_dir, step)
            save_adapter(raw_path, lora, self.spec, {**self.metadata, "step": step, "ema": False})
            if ema is not None:
                save_adapter(ema_path, ema, self.spec, {**self.metadata, "step": step, "ema": True})
        _barrier(self.dist)
        if self.dist.is_main:
            final = self.states_dir / step_name(step)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._write_latest(step, ema is not None)
            self._prune()
        _barrier(self.dist)

    def _write_latest(self, step: int, has_ema: bool) -> None:
        raw_path, ema_path = adapter_paths(self.run_dir, step)
        latest = {
            "step": step,
            "state": str(Path("state") / step_name(step)),
            "adapter": str(raw_path.relative_to(self.run_dir)),
            "ema_adapter": str(ema_path.relative_to(self.run_dir)) if has_ema else None,
            "world_size": self.dist.world_size,  # a resume must use as many processes (data order, RNG streams)
        }
        tmp = atomic_path(self.run_dir / LATEST)
        tmp.write_text(json.dumps(latest, indent=1))
        tmp.replace(self.run_dir / LATEST)

    def _prune(self) -> None:
        states = sorted(p for p in self.states_dir.glob("step_*") if p.is_dir())
        for old in states[: -self.keep_states]:
            shutil.rmtree(old)

    def load_latest(self) -> tuple[dict, dict] | None:
        """(train state, this rank's RNG state) of the newest save, or None for a fresh run."""
        latest = read_latest(self.run_dir)
        if latest is None:
            return None
        folder = self.run_dir / latest["state"]
        rng_path = folder / f"rng_rank{self.dist.rank}.pt"
        if not rng_path.is_file():
            raise RuntimeError(f"{folder} has no RNG state for rank {self.dist.rank}: resume with the same number of processes")
        train_state = torch.load(folder / "train_state.pt", map_location="cpu", weights_only=False)
        return train_state, torch.load(rng_path, map_location="cpu", weights_only=False)
