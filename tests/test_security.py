"""Nothing from a file runs code: run folders, saved configs and datasets received from elsewhere.

One tiny run (4 steps, a state at every step) is trained once through the CLI; each test resumes
a private copy of it after planting what an attacker would, with a payload that creates a file.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cosmos_lora.config import check_targets, instantiate, load_preset
from cosmos_lora.config.experiment import preset_names
from cosmos_lora.errors import UserError
from cosmos_lora.model.lora import read_adapter
from cosmos_lora.paths import Roots
from cosmos_lora.train.state_files import load_state

DATASET = "demo/shapes"
TRAIN = ["posttrain", "--model", "tiny", "-d", DATASET, "--nproc", "1", "--name", "A", "--save-every", "1"]
STEPS = 4


class CreatesFile:
    """Unpickling this calls `open(marker, "w")`: the file exists afterwards iff the pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def cosmos_lora(roots: Roots, *args: str) -> subprocess.CompletedProcess:
    """The CLI as users start it, in a process of its own (the workers' output included)."""
    env = {**os.environ, "COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
           "COSMOS_LORA_OUTPUTS": str(roots.outputs)}
    return subprocess.run([sys.executable, "-m", "cosmos_lora", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "Error" in line or "failed" in line.lower()]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Roots:
    base = tmp_path_factory.mktemp("security")
    roots = Roots(tiny_world.checkpoints, base / "datasets", base / "outputs")
    shutil.copytree(tiny_world.datasets, roots.datasets)
    done = cosmos_lora(roots, *TRAIN, "--max-iter", str(STEPS), "--", f"checkpoint.keep_states={STEPS}")
    assert done.returncode == 0, done.stderr[-3000:]
    return roots


@pytest.fixture
def world(trained, tmp_path) -> Roots:
    """A private copy of the trained run (the checkpoints stay shared, read-only)."""
    roots = Roots(trained.checkpoints, tmp_path / "datasets", tmp_path / "outputs")
    shutil.copytree(trained.datasets, roots.datasets)
    shutil.copytree(trained.outputs, roots.outputs)
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


def test_a_crafted_state_pickle_runs_no_code_on_resume(world, tmp_path):
    marker = tmp_path / "pwned"
    run = run_dir(world)
    as_pickles(run / "state" / f"step_{STEPS:06d}", lambda name: {"payload": CreatesFile(marker)})
    done = cosmos_lora(world, *TRAIN, "--max-iter", str(STEPS + 2), "--resume")
    assert not marker.exists(), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # refused in one line; the resume falls back to the save before it (issue 15: a damaged newest save)
    refusals = [line for line in done.stderr.splitlines() if "train_state.pt" in line]
    assert len(refusals) == 1, done.stderr[-3000:]
    assert "refers to io.open; refusing to run code" in refusals[0] and "the save before it" in refusals[0]
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("state_format", ["safetensors", "pickle from before"])
def test_a_resume_is_bit_exact_from_either_state_format(world, state_format):
    """Rewound to step 2 and resumed to 4, a run ends with the very adapters it had."""
    run = run_dir(world)
    uninterrupted = [read_adapter(run / "adapters" / f"step_{STEPS:06d}.{kind}")[0] for kind in ("safetensors", "ema.safetensors")]
    rewind(run, 2)
    if state_format == "pickle from before":
        state = run / "state" / "step_000002"
        as_pickles(state, lambda name: load_state(state, name))
    done = cosmos_lora(world, *TRAIN, "--max-iter", str(STEPS), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at step 2" in done.stderr + done.stdout
    for expected, kind in zip(uninterrupted, ("safetensors", "ema.safetensors")):
        again = read_adapter(run / "adapters" / f"step_{STEPS:06d}.{kind}")[0]
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
    done = cosmos_lora(world, *args, "--max-iter", str(STEPS + 2))
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
    done = cosmos_lora(roots, "posttrain", "--model", "tiny", "-d", DATASET, "--nproc", "1", "--name", "B", "--max-iter", "1")
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
