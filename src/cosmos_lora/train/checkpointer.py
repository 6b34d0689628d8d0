"""What a run keeps on disk, and resume.

    <run>/adapters/step_000100.safetensors       LoRA tensors (+ spec, step, base fingerprint in metadata)
    <run>/adapters/step_000100.ema.safetensors   the EMA of the same
    <run>/state/step_000100/train_state.{json,safetensors}   optimizer, scheduler, EMA, LoRA, step, data position
    <run>/state/step_000100/rng_rank{r}.{json,safetensors}   every rank's RNG streams
    <run>/latest.json                            the newest complete save

A save is written into a hidden folder and renamed when every rank has finished, and
`latest.json` is replaced atomically after that, so an interrupted save is never picked up; a
save that fails (a full disk) removes its hidden folder and stops with one line.
Adapters are kept at every save (a few MB); only the last `keep_states` states are kept.
A resume takes latest.json's save; where latest.json or that save's files cannot be read, the
newest readable save before it, saying so.
States are JSON and safetensors (see `state_files`): resuming a run folder from elsewhere runs no code.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_lora.distributed import Distributed
from cosmos_lora.errors import UserError
from cosmos_lora.files import atomic_write, remove_quietly
from cosmos_lora.model.lora import LoraSpec, save_adapter
from cosmos_lora.run_folder import RunFolder, step_name
from cosmos_lora.train.state_files import load_state, save_state


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
        try:
            self._save(tmp, step, lora, ema, train_state, rng_state)
        except OSError as error:  # a full disk, a folder made read-only, a quota
            raise UserError(
                f"Could not save step {step} in {self.run.path}: {error.strerror or error}.",
                "free disk space (or make the folder writable) and resume with --resume: the saves before it are kept.",
            ) from None
        finally:
            remove_quietly(tmp)  # renamed into place when the save succeeded; the unfinished save otherwise

    def _save(self, tmp: Path, step: int, lora: dict, ema: dict | None, train_state: dict, rng_state: dict) -> None:
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
        """(train state, this rank's RNG state) of the newest readable save, or None for a fresh run.

        latest.json names the newest save; where it is damaged, the newest save in state/ is taken,
        and where a save's files cannot be read, the one before it: each fallback says so in one line.
        Every rank takes the same save (one whose files every rank could read)."""
        run, latest = self.run, self.run.read_latest()
        steps = run.saved_steps()
        if latest is None and not run.latest_damaged():
            return None
        run.check_resumable(self.dist.world_size)
        if latest is None:
            self._note(f"{run.latest_file} is damaged; resuming from the newest save in {run.states_dir}"
                       + (f", step {steps[0]}." if steps else "."))
        else:
            steps = [latest["step"]] + [step for step in steps if step < latest["step"]]
        tried = "none (state/ is empty)."
        for index, step in enumerate(steps):
            loaded, problem = self._read_state(step)
            if self._everyone(loaded is not None):
                return self._same_world_size(loaded)
            tried = problem
            if index + 1 < len(steps):
                self._note(f"{problem} Resuming from step {steps[index + 1]}, the save before it.")
        raise UserError(
            f"Cannot resume {run.path}: no save in {run.states_dir} can be read. The last one tried: {tried}",
            "start a new run with --name NEW; the adapters saved so far stay usable.",
        )

    def _read_state(self, step: int) -> tuple[tuple[dict, dict] | None, str]:
        """((train state, this rank's RNG state), '') or (None, what is wrong with the save's files)."""
        folder = self.run.state(step)
        try:
            return (load_state(folder, "train_state"), load_state(folder, f"rng_rank{self.dist.rank}")), ""
        except UserError as error:  # a missing, truncated or overwritten file: the caller tries the save before
            return None, error.problem

    def _same_world_size(self, loaded: tuple[dict, dict]) -> tuple[dict, dict]:
        """A save found without latest.json is checked against its own record of the process count."""
        saved = loaded[0].get("world_size", self.dist.world_size)
        if saved != self.dist.world_size:
            raise UserError(f"{self.run.path} was saved by {saved} processes; this launch has {self.dist.world_size}.",
                            f"resume with {saved} processes in all.")
        return loaded

    def _everyone(self, ok: bool) -> bool:
        if not self.dist.enabled:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.dist.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _note(self, text: str) -> None:
        if self.dist.is_main:
            print(text, file=sys.stderr, flush=True)
