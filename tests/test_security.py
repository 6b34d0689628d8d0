"""Nothing from a file runs code: run folders, saved configs and datasets received from elsewhere.

One tiny run (4 steps, a state at every step: `saved_every_step` in conftest.py) is trained once through the
CLI; each test resumes a private copy of it after planting what an attacker would, with a payload that creates a file.
"""

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from posttrain_runs import ONE_PROCESS, ONE_PROCESS_STEPS, cosmos_lora

from cosmos_lora.cli.app import app
from cosmos_lora.config import check_targets, instantiate, load_preset
from cosmos_lora.config.experiment import preset_names
from cosmos_lora.errors import UserError
from cosmos_lora.model.lora import read_adapter
from cosmos_lora.paths import Roots
from cosmos_lora.train.state_files import load_state

DATASET = "demo/shapes"
TRAIN, STEPS = ONE_PROCESS, ONE_PROCESS_STEPS  # the run of the session fixture `saved_every_step`


class CreatesFile:
    """Unpickling this calls `open(marker, "w")`: the file exists afterwards iff the pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def refused_before_launch(roots: Roots, *args: str) -> subprocess.CompletedProcess:
    """The CLI called in this process, for what it refuses before starting any: a payload that ran here
    would create its file all the same, and an exception other than the CLI's exit is a traceback."""
    env = {"COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
           "COSMOS_LORA_OUTPUTS": str(roots.outputs)}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "Error" in line or "failed" in line.lower()]


@pytest.fixture
def world(saved_every_step, tmp_path) -> Roots:
    """A private copy of the trained run (the checkpoints stay shared, read-only)."""
    roots = Roots(saved_every_step.checkpoints, tmp_path / "datasets", tmp_path / "outputs")
    shutil.copytree(saved_every_step.datasets, roots.datasets)
    shutil.copytree(saved_every_step.outputs, roots.outputs)
    return roots


def run_dir(roots: Roots) -> Path:
    return roots.outputs / "runs" / "A"


def rewind(run: Path, step: int) -> None:
    """Points latest.json at an earlier save, as if the run had been stopped there."""
    latest = json.loads((run / "latest.json").read_text())
    latest.update(step=step, state=f"state/step_{step:06d}", adapter=f"adapters/step_{step:06d}.safetensors",
                  ema_adapter=f"adapters/step_{step:06d}.ema.safetensors")
    (run / "latest.json").write_text(json.dumps(latest))


def as_pickles(state: Path, write) -> None:
    """Replaces the state's files by `<name>.pt` pickles, the format of run folders written before."""
    for name in ("train_state", "rng_rank0"):
        content = write(name)
        for old in state.glob(f"{name}.*"):
            old.unlink()
        torch.save(content, state / f"{name}.pt")


# -- run folders ----------------------------------------------------------------------------------


def test_a_crafted_state_pickle_runs_no_code_and_the_resume_from_the_old_pickle_save_before_it_is_bit_exact(world, tmp_path):
    """The newest save's pickles are an attacker's; the one before it is in the `.pt` format of run folders
    written before: refused in one line, the resume falls back to that save and ends with the very adapters
    the run had (issue 15: a damaged newest save)."""
    marker = tmp_path / "pwned"
    run = run_dir(world)
    uninterrupted = final_adapters(run)
    older = run / "state" / f"step_{STEPS - 1:06d}"
    as_pickles(older, lambda name: load_state(older, name))
    as_pickles(run / "state" / f"step_{STEPS:06d}", lambda name: {"payload": CreatesFile(marker)})
    done = cosmos_lora(world, *TRAIN, "--max-iter", str(STEPS), "--resume")
    assert not marker.exists(), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    refusals = [line for line in done.stderr.splitlines() if "train_state.pt" in line]
    assert len(refusals) == 1, done.stderr[-3000:]
    assert "refers to io.open; refusing to run code" in refusals[0] and "the save before it" in refusals[0]
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming at step {STEPS - 1}" in done.stderr + done.stdout
    assert_resumed_exactly(run, uninterrupted)


def test_a_resume_is_bit_exact(world):
    """Rewound to step 2 and resumed to 4, a run ends with the very adapters it had. (From a save in the
    pickle format of run folders written before: the test above.)"""
    run = run_dir(world)
    uninterrupted = final_adapters(run)
    rewind(run, 2)
    done = cosmos_lora(world, *TRAIN, "--max-iter", str(STEPS), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at step 2" in done.stderr + done.stdout
    assert_resumed_exactly(run, uninterrupted)


def final_adapters(run: Path) -> list[dict]:
    return [read_adapter(run / "adapters" / f"step_{STEPS:06d}.{kind}")[0] for kind in ("safetensors", "ema.safetensors")]


def assert_resumed_exactly(run: Path, uninterrupted: list[dict]) -> None:
    """The final adapters (raw and EMA) bit for bit, and a final save in today's format."""
    for expected, again, kind in zip(uninterrupted, final_adapters(run), ("safetensors", "ema.safetensors")):
        assert expected.keys() == again.keys() and all(torch.equal(expected[k], again[k]) for k in expected), kind
    written = {p.name for p in (run / "state" / f"step_{STEPS:06d}").iterdir()}
    assert written == {"train_state.json", "train_state.safetensors", "rng_rank0.json", "rng_rank0.safetensors"}


# -- saved configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--config", "--name"])
def test_a_config_yaml_target_payload_is_refused_before_launch(world, tmp_path, how):
    marker, payload = tmp_path / "pwned", tmp_path / "payload.pt"
    torch.save(CreatesFile(marker), payload)
    run = run_dir(world)
    config = OmegaConf.load(run / "config.yaml")
    config.scheduler = {"_target_": "torch.load", "f": str(payload), "weights_only": False}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    status_before = (run / "status.json").read_text()
    args = ["posttrain", "--config", str(run / "config.yaml"), "--resume"] if how == "--config" else [*TRAIN, "--resume"]
    done = refused_before_launch(world, *args, "--max-iter", str(STEPS + 2))
    assert not marker.exists()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr[-3000:]
    assert "scheduler._target_" in lines[0] and "'torch.load'" in lines[0]
    assert (run / "status.json").read_text() == status_before  # nothing was launched


@pytest.mark.parametrize("target", [
    "torch.load", "builtins.exec", "os.system",
    "cosmos_lora.train.checkpointer.torch.load",  # a name under this package that is not its callable
    "cosmos_lora.config.load_preset",  # a callable of this package that runs a .py file
])
def test_instantiate_calls_only_allowed_targets(tmp_path, target):
    """What the workers do with the config.yaml they read: refused whatever put it there."""
    marker, payload = tmp_path / "pwned", tmp_path / "payload.pt"
    torch.save(CreatesFile(marker), payload)
    node = OmegaConf.create({"optimizer": {"inner": [{"_target_": target, "f": str(payload), "weights_only": False}]}})
    with pytest.raises(UserError, match=r"optimizer\.inner\[0\]\._target_ .* may not call") as info:
        instantiate(node.optimizer)
    assert target in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("preset", preset_names())
def test_what_the_presets_call_is_allowed(preset):
    check_targets(load_preset(preset))


def test_any_torch_optimizer_may_be_named():
    optimizer = instantiate(OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.5}),
                            params=[torch.zeros(1, requires_grad=True)])
    assert isinstance(optimizer, torch.optim.SGD)


# -- datasets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 4])
def test_a_crafted_embedding_pickle_runs_no_code(roots, tmp_path, protocol):
    marker = tmp_path / "pwned"
    embedding = sorted((roots.dataset(DATASET) / "t5_xxl").glob("*.pickle"))[0]
    embedding.write_bytes(pickle.dumps([CreatesFile(marker)], protocol=protocol))
    done = refused_before_launch(roots, "posttrain", "--model", "tiny", "-d", DATASET, "--nproc", "1", "--name", "B",
                                 "--max-iter", "1")
    assert not marker.exists()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert str(embedding) in done.stderr and "refers to io.open" in done.stderr


# -- adapters -----------------------------------------------------------------------------------------


def test_a_crafted_official_adapter_checkpoint_runs_no_code(tmp_path):
    """`infer --lora FILE.pt` / `merge -a FILE.pt`: official checkpoints are pickles; they are read weights-only."""
    from cosmos_lora.model.adapter_files import from_file

    marker, adapter = tmp_path / "pwned", tmp_path / "lora.pt"
    torch.save({"net.blocks.0.lora": CreatesFile(marker)}, adapter)
    with pytest.raises(UserError) as info:
        from_file(adapter)
    assert not marker.exists()
    assert "refers to io.open; refusing to run code" in str(info.value) and "\n" not in str(info.value)
