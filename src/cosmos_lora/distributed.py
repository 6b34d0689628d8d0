"""Processes: the one place that reads the rank variables (torchrun's and Slurm's), and the one launcher.

Works alone (one process, no process group), under torchrun, and under `srun` with several tasks
(Slurm's variables are translated into torchrun's by `adopt_slurm_environment`); NCCL on GPUs,
gloo on CPU. `launch` runs a worker module (`embed`, `posttrain`, `infer`) in this process or in
torchrun's, and says how it ended; `run_worker` is every worker's life in one process.
"""

import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_lora.errors import EXIT_STOPPED, Stopped, UserError


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


@dataclass(frozen=True)
class Launch:
    """The shape of a launch: processes per node, nodes, this node, the rendezvous (several nodes)."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


@dataclass(frozen=True)
class Outcome:
    """How a launch ended: finished, stopped (Ctrl-C/SIGTERM; rerun to continue) or failed."""

    state: str
    code: int  # the workers' exit code (EXIT_STOPPED when stopped)
    error: UserError | None = None  # the user error the lowest rank reported, if one did
    error_rank: int | None = None

    def raise_unless_finished(self, unfinished: str, rerun: str) -> None:
        """Stopped -> `Stopped`; failed -> the worker's own user error, else one naming the exit code.

        `unfinished`: what is left undone (`every video was made`); `rerun`: how to go on."""
        if self.state == "stopped":
            raise Stopped(f"Stopped before {unfinished}.", rerun)
        if self.state == "failed":
            if self.error is not None:
                raise self.error
            raise UserError(f"A worker process failed (exit code {self.code}) before {unfinished}; "
                            "see the messages above.", rerun)


@dataclass(frozen=True)
class ExternalLaunch:
    """This process as one of the workers that torchrun or srun started (rather than our own torchrun)."""

    rank: int
    world_size: int
    launch_id: str  # the same in every process of one launch, different in the next launch

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def external_launch() -> ExternalLaunch | None:
    """Set when a launcher (torchrun, or srun after `adopt_slurm_environment`) started this process."""
    if not launched_by_torchrun():
        return None
    env = os.environ
    # torchrun gives every launch its own run id; srun its own job and step ids. The rendezvous address
    # tells apart launches that have neither (and two torchruns on one machine).
    parts = [env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID")]
    return ExternalLaunch(int(env["RANK"]), int(env["WORLD_SIZE"]), "/".join(parts))


# -- Slurm ------------------------------------------------------------------------------------------

DEFAULT_MASTER_PORT = "29500"


def slurm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for a task that `srun` started as one of several; {} otherwise.

    RANK/WORLD_SIZE/LOCAL_RANK come from SLURM_PROCID/SLURM_STEP_NUM_TASKS (else SLURM_NTASKS)/
    SLURM_LOCALID; MASTER_ADDR is the first host of the step's (else the job's) node list.
    MASTER_ADDR and MASTER_PORT already in the environment win. Already under torchrun (RANK set): {}.
    """
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if "RANK" in env or "SLURM_PROCID" not in env or tasks < 2:
        return {}
    master = env.get("MASTER_ADDR")
    if not master:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        try:
            master = expand_hostlist(nodes)[0]
        except (ValueError, IndexError):
            raise UserError(
                f"Cannot tell the first host of this Slurm job from its node list {nodes!r}.",
                "export MASTER_ADDR=<host of task 0> (and MASTER_PORT) before srun.",
            ) from None
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": master,
        "MASTER_PORT": env.get("MASTER_PORT") or DEFAULT_MASTER_PORT,
    }


def adopt_slurm_environment() -> bool:
    """Under `srun` with several tasks, sets torchrun's variables from Slurm's; True if it did."""
    values = slurm_environment(os.environ)
    os.environ.update(values)
    return bool(values)


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, expanded: `node[01-03,07],gpu-a[1-2]` ->
    node01 node02 node03 node07 gpu-a1 gpu-a2. Zero padding follows the range's first number;
    several bracket groups in one name expand to every combination (`r[1-2]n[1-2]`)."""
    hosts = [host for item in _split_outside_brackets(hostlist.strip()) for host in _expand_host(item)]
    if not hosts:
        raise ValueError(f"empty host list {hostlist!r}")
    return hosts


def _split_outside_brackets(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"unbalanced brackets in host list {text!r}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced brackets in host list {text!r}")
    return [item.strip() for item in items + [text[start:]] if item.strip()]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _expand_host(name: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", name)
    if match is None:
        return [name]
    prefix, rests = name[: match.start()], _expand_host(name[match.end() :])
    hosts = []
    for part in match.group(1).split(","):
        bounds = _RANGE.match(part.strip())
        if bounds is None:
            raise ValueError(f"{part!r} in host list {name!r} is not a number or a range")
        first, last = bounds.group(1), bounds.group(2) or bounds.group(1)
        hosts += [f"{prefix}{n:0{len(first)}d}{rest}" for n in range(int(first), int(last) + 1) for rest in rests]
    return hosts


# -- the process group ------------------------------------------------------------------------------


def init_distributed(process_group: bool = True) -> Distributed:
    """This process's place; with `process_group`, the NCCL/gloo group too when there are several."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        # srun may show each task only its own GPU (--gpus-per-task): then local rank 1 is device 0
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if process_group and world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Distributed(rank, local_rank, world_size, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_nproc() -> int:
    """One process per visible GPU; one on a CPU machine."""
    return visible_gpus() or 1


def torchrun_command(module: str, args: list[str], shape: Launch) -> list[str]:
    """torchrun (through `cosmos_lora.torchrun`) `... -m module args`; multi-node when shape.nnodes > 1
    (c10d rendezvous at shape.rdzv_endpoint)."""
    command = [sys.executable, "-m", "cosmos_lora.torchrun", f"--nproc_per_node={shape.nproc}"]
    if shape.nnodes > 1:
        command += [f"--nnodes={shape.nnodes}", f"--node_rank={shape.node_rank}", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint={shape.rdzv_endpoint}"]
    else:
        command += ["--standalone"]
    return command + ["-m", module, *args]


# -- the launcher -----------------------------------------------------------------------------------

REPORTS_ENV = "COSMOS_LORA_REPORTS"  # the folder where workers leave their user errors for the launcher
STOP_CODES = (EXIT_STOPPED, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)


def launch(module: str, args: list[str], shape: Launch, alone_in_process: bool = True,
           env: Mapping[str, str] | None = None) -> Outcome:
    """Runs the worker module `module` (its `main(args) -> exit code`) in every process of `shape`.

    Already under torchrun or srun (this process is one of the workers), or alone with
    `alone_in_process`, `main` runs in this process. Otherwise torchrun starts the processes, and
    Ctrl-C/SIGTERM here reach all of them as SIGTERM, so they finish what they are doing, keep it and
    exit EXIT_STOPPED. `env`: defaults for the workers' environment (the user's own values win).
    """
    with tempfile.TemporaryDirectory(prefix="cosmos-lora-launch-") as reports, \
            _environment(env or {}, {REPORTS_ENV: reports}):
        if launched_by_torchrun() or (alone_in_process and shape.world_size == 1):
            code = importlib.import_module(module).main(args)
        else:
            code = _run_torchrun(torchrun_command(module, args, shape))
        rank, error = _first_report(Path(reports))
    state = "finished" if code == 0 else "stopped" if code in STOP_CODES else "failed"
    return Outcome(state, EXIT_STOPPED if state == "stopped" else code, error, rank)


@contextlib.contextmanager
def _environment(defaults: Mapping[str, str], values: Mapping[str, str]) -> Iterator[None]:
    """`defaults` where the user set nothing, and `values`, for the workers; restored afterwards."""
    before = {key: os.environ.get(key) for key in {**defaults, **values}}
    os.environ.update({k: v for k, v in defaults.items() if k not in os.environ} | dict(values))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_torchrun(command: list[str]) -> int:
    """The one place torchrun starts: in its own process group, Ctrl-C/SIGTERM forwarded to all of it
    as SIGTERM, so workers get to finish the step and save before exiting."""
    # torchrun sets 1 thread per worker anyway, with a banner; saying it ourselves silences the banner
    env = {"OMP_NUM_THREADS": "1"} | os.environ
    child = subprocess.Popen(command, start_new_session=True, env=env)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_error(rank: int, error: UserError) -> None:
    """A worker's user error, for its launcher to repeat as the outcome (else printed as one line)."""
    folder = os.environ.get(REPORTS_ENV)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"error.rank{rank}.json").write_text(json.dumps({"problem": error.problem, "fix": error.fix}))
    else:
        print(f"Error (rank {rank}): {error}", file=sys.stderr)


def _first_report(folder: Path) -> tuple[int | None, UserError | None]:
    reports = sorted((int(p.name[len("error.rank"):-len(".json")]), p) for p in folder.glob("error.rank*.json"))
    if not reports:
        return None, None
    rank, path = reports[0]
    report = json.loads(path.read_text())
    return rank, UserError(report["problem"], report["fix"])


# -- one worker -------------------------------------------------------------------------------------


class _Stopped(BaseException):
    """SIGTERM or Ctrl-C in a worker: unwinds the work, so its temporary files are removed on the way."""


def _stop(signum, frame):
    # The first stop unwinds; later ones are ignored. A worker gets each stop twice (from the CLI, which
    # signals torchrun's whole process group, and from torchrun, which forwards it), and a second
    # _Stopped raised while the first unwinds would end the worker with a traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped(signum)


def run_worker(work: Callable[[Distributed], object], process_group: bool = True) -> int:
    """One worker's life: process group up, `work`, process group down.

    A user error is reported to the launcher (`report_error`) and gives exit code 1; SIGTERM/SIGINT
    stop the work quietly with EXIT_STOPPED (also while the process group forms); anything else is a
    bug and keeps its traceback.
    """
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        dist_info = init_distributed(process_group)
        work(dist_info)
        if dist.is_initialized():
            dist.barrier()  # leave together: a gloo peer that tears down first can abort the others
        return 0
    except UserError as error:
        report_error(int(os.environ.get("RANK", 0)), error)
        return 1
    except _Stopped:
        return EXIT_STOPPED
    finally:
        close_distributed()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
