"""Processes: the one place that reads torchrun's rank variables, and the torchrun launch.

Works alone (one process, no process group) and under torchrun (NCCL on GPUs, gloo on CPU).
Training and inference both launch their workers through `torchrun_command` + `run_torchrun`.
"""

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed() -> Distributed:
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Distributed(rank, local_rank, world_size, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torchrun_command(module: str, args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None) -> list[str]:
    """`torchrun ... -m module args`; multi-node when nnodes > 1 (c10d rendezvous at rdzv_endpoint)."""
    launcher = Path(sys.executable).with_name("torchrun")
    command = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command += [f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        command += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    else:
        command += ["--standalone"]
    return command + ["-m", module, *args]


def run_torchrun(command: list[str]) -> int:
    """Runs torchrun in its own process group and forwards Ctrl-C/SIGTERM to all of it as SIGTERM,
    so workers get to finish the step and save before exiting."""
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
