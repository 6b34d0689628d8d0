"""What a run keeps on disk, and resume.

    <run>/adapters/step_000100.safetensors       LoRA tensors (+ spec, step, base fingerprint in metadata)
    <run>/adapters/step_000100.ema.safetensors   the EMA of the same
    <run>/state/step_000100/train_state.{json,safetensors}   optimizer, scheduler, EMA, LoRA, step, data position
    <run>/state/step_000100/rng_rank{r}.{json,safetensors}   every rank's RNG streams
    <run>/latest.json                            the newest complete save

A save is written into a hidden folder and renamed when every rank has finished, and
`latest.json` is replaced atomically after that, so an interrupted save is never picked up.
Adapters are kept at every save (a few MB); only the last `keep_states` states are kept.
States are JSON and safetensors (see `state_files`): resuming a run folder from elsewhere runs no code.
"""

import hashlib
import json
import shutil
from pathlib import Path

import torch.distributed as dist

from cosmos_lora.distributed import Distributed
from cosmos_lora.files import atomic_write
from cosmos_lora.model.lora import LoraSpec, save_adapter
from cosmos_lora.run_folder import RunFolder, step_name
from cosmos_lora.train.state_files import load_state, save_state


def base_fingerprint(path: Path, sample_bytes: int = 1 << 24) -> str:
    """sha256 of the base checkpoint's size, head and tail: cheap on 14 GB, catches a different base."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(sample_bytes))
        f.seek(max(0, size - sample_bytes))
        digest.update(f.read(sample_bytes))
    return digest.hexdigest()[:16]


def _barrier(dist_info: Distributed) -> None:
    if dist_info.enabled:
        dist.barrier()


class Checkpointer:
    def __init__(self, run_dir: Path, dist_info: Distributed, spec: LoraSpec, keep_states: int, metadata: dict):
        self.run, self.dist, self.spec = RunFolder(run_dir), dist_info, spec
        self.keep_states, self.metadata = keep_states, metadata
        self.states_dir = self.run.states_dir

    def save(self, step: int, lora: dict, ema: dict | None, train_state: dict, rng_state: dict) -> None:
        tmp = self.states_dir / f".{step_name(step)}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_state(tmp, f"rng_rank{self.dist.rank}", rng_state)
        if self.dist.is_main:
            save_state(tmp, "train_state", train_state)
            raw_path, ema_path = self.run.adapter(step), self.run.adapter(step, ema=True)
            save_adapter(raw_path, lora, self.spec, {**self.metadata, "step": step, "ema": False})
            if ema is not None:
                save_adapter(ema_path, ema, self.spec, {**self.metadata, "step": step, "ema": True})
        _barrier(self.dist)
        if self.dist.is_main:
            final = self.run.state(step)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._write_latest(step, ema is not None)
            self._prune()
        _barrier(self.dist)

    def _write_latest(self, step: int, has_ema: bool) -> None:
        run = self.run
        latest = {
            "step": step,
            "state": run.relative(run.state(step)),
            "adapter": run.relative(run.adapter(step)),
            "ema_adapter": run.relative(run.adapter(step, ema=True)) if has_ema else None,
            "world_size": self.dist.world_size,  # a resume must use as many processes (data order, RNG streams)
        }
        atomic_write(run.latest_file, json.dumps(latest, indent=1))

    def _prune(self) -> None:
        states = sorted(p for p in self.states_dir.glob("step_*") if p.is_dir())
        for old in states[: -self.keep_states]:
            shutil.rmtree(old)

    def load_latest(self) -> tuple[dict, dict] | None:
        """(train state, this rank's RNG state) of the newest save, or None for a fresh run."""
        latest = self.run.read_latest()
        if latest is None:
            return None
        self.run.check_resumable(self.dist.world_size)
        folder = self.run.path / latest["state"]
        return load_state(folder, "train_state"), load_state(folder, f"rng_rank{self.dist.rank}")
