"""The tiny runs that several test files read, made once per session (tests/conftest.py):

    A  30 steps at lr 1e-2, a metrics row at every step, 2 of the 8 clips held out (--eval-fraction 0.25) and
       evaluated at steps 0, 10, 20 and 30                                 read by test_posttrain, test_evaluation
    B  A's command with 2 data loader workers, SIGTERM'd once its first step is logged, then resumed with
       the command the CLI prints (the signal reaches the loader workers too, as from Slurm or a terminal)

and, on 1 process, `saved_every_step`: run A of other roots, 4 steps with a state saved (and kept) at each
step, trained through the CLI in a process of its own                    read by test_security, test_stops

Each test asserts its own properties on them; none writes into them (tests copy the 1-process run first).
"""

import csv
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.model.lora import read_adapter
from cosmos_lora.model.tiny import TINY_DIT
from cosmos_lora.paths import Roots
from cosmos_lora.train.state_files import load_state

DATASET = "demo/shapes"
STEPS = 30
EVAL_EVERY = 10
TRAIN = ["posttrain", "--model", "tiny", "-d", DATASET, "--nproc", "2"]
HIGH_LR = ["--lr", "1e-2"]  # 5x the tiny preset's: 30 steps visibly fit the 8 clips
HELD_OUT = ["--eval-fraction", "0.25", "--eval-every", str(EVAL_EVERY)]
EVERY_STEP = ["--", "trainer.log_every=1"]
A_ARGS = [*TRAIN, "--max-iter", str(STEPS), *HIGH_LR, *HELD_OUT, *EVERY_STEP]  # `--name X` goes before the `--`

ONE_PROCESS = ["posttrain", "--model", "tiny", "-d", DATASET, "--nproc", "1", "--name", "A", "--save-every", "1"]
ONE_PROCESS_STEPS = 4


@dataclasses.dataclass
class World:
    roots: Roots
    env: dict[str, str]
    base_sha256: str

    def invoke(self, *args: str):
        result = CliRunner().invoke(app, list(args), env=self.env)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def train(self, *args: str) -> Path:
        result = self.invoke(*args)
        assert result.exit_code == 0, result.output
        return Path(result.stdout.strip().splitlines()[-1])

    def run(self, name: str) -> Path:
        return self.roots.outputs / "runs" / name


@dataclasses.dataclass
class Interrupted:
    run_dir: Path
    code: int
    stderr: str
    status: dict
    latest: dict
    state_files: list[str]


def named(name: str, args: list[str] = A_ARGS) -> list[str]:
    """`args` with `--name name` before their `--` overrides."""
    split = args.index("--") if "--" in args else len(args)
    return [*args[:split], "--name", name, *args[split:]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def all_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics(run_dir: Path) -> list[dict]:
    """The training rows of metrics.csv (an evaluation is a row of its own, without a loss)."""
    return [r for r in all_rows(run_dir) if r["loss"]]


def train_state(run_dir: Path) -> dict:
    return load_state(run_dir / read_json(run_dir / "latest.json")["state"], "train_state")


def adapters(run_dir: Path, step: int) -> tuple[dict, dict]:
    raw, _, _ = read_adapter(run_dir / "adapters" / f"step_{step:06d}.safetensors")
    ema, _, _ = read_adapter(run_dir / "adapters" / f"step_{step:06d}.ema.safetensors")
    return raw, ema


def train_in_process(roots: Roots, preset: str, name: str, options: dict, overrides: list[str] = ()) -> Path:
    """A run trained to its end in this process, as one worker trains it (`Trainer`): for tests whose
    subject is not the launch, so they pay no torchrun start-up."""
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Distributed, Launch
    from cosmos_lora.train.launch import prepare_run_dir
    from cosmos_lora.train.trainer import Trainer

    config = build_experiment(preset, roots, DATASET, options, list(overrides), name, Launch(1))
    prepare_run_dir(config, resume=False)
    trainer = Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))
    try:
        assert trainer.train() == "finished"
    finally:
        trainer.close()
    return Path(config.job.run_dir)


def make_world(tiny_world: Roots, base: Path) -> World:
    roots = Roots(tiny_world.checkpoints, base / "datasets", base / "outputs")
    shutil.copytree(tiny_world.datasets, roots.datasets)
    env = {"COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
           "COSMOS_LORA_OUTPUTS": str(roots.outputs)}
    return World(roots, env, sha256(roots.checkpoints / TINY_DIT))


def cosmos_lora(roots: Roots, *args: str) -> subprocess.CompletedProcess:
    """The CLI as users start it, in a process of its own (the workers' output included)."""
    env = {**os.environ, "COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
           "COSMOS_LORA_OUTPUTS": str(roots.outputs)}
    return subprocess.run([sys.executable, "-m", "cosmos_lora", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def make_saved_every_step(tiny_world: Roots, base: Path) -> Roots:
    world = make_world(tiny_world, base)
    done = cosmos_lora(world.roots, *ONE_PROCESS, "--max-iter", str(ONE_PROCESS_STEPS),
                       "--", f"checkpoint.keep_states={ONE_PROCESS_STEPS}")
    assert done.returncode == 0, done.stderr[-3000:]
    return world.roots


def sigterm_then_resume(world: World, name: str, args: list[str]) -> Interrupted:
    """`cosmos-lora *args --name name` started as users start it, SIGTERM'd after its first logged training
    step, then resumed with the command the CLI prints."""
    run_dir = world.run(name)
    command = [sys.executable, "-m", "cosmos_lora", *named(name, args)]
    with tempfile.TemporaryFile("w+") as log:
        cli = subprocess.Popen(command, env={**os.environ, **world.env}, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 120
            while not ((run_dir / "metrics.csv").is_file() and len(metrics(run_dir)) >= 1):
                assert cli.poll() is None and time.monotonic() < deadline, "the run ended or hung before its first step"
                time.sleep(0.05)
        finally:
            cli.send_signal(signal.SIGTERM)  # the CLI forwards it to torchrun and the workers
            cli.wait(timeout=120)
        log.seek(0)
        stderr = log.read()
    interrupted = Interrupted(
        run_dir, cli.returncode, stderr, read_json(run_dir / "status.json"), read_json(run_dir / "latest.json"),
        sorted(p.name for p in (run_dir / "state").glob("*/*")),
    )
    hint = re.search(r"Resume with: (.+)", stderr)
    assert hint, stderr[-2000:]
    program, *resume = shlex.split(hint.group(1))
    assert program == "cosmos-lora"
    assert resume[-2:] == ["--nproc", "2"]  # the hint repeats the launch shape
    world.train(*resume)
    return interrupted


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
