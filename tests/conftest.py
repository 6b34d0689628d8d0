import os
import shutil
from pathlib import Path

import pytest
import torch

from cosmos_lora.paths import Roots

REPO = Path(__file__).resolve().parents[1]
TINY_DATASET = "demo/shapes"


FIXTURES = REPO / "tests" / "fixtures"


def _fixtures(variable: str, folder: str) -> Path:
    path = Path(os.environ.get(variable, FIXTURES / folder))
    assert path.is_dir(), f"fixtures not found at {path}; set {variable}"
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official Text2World reference tensors: tests/fixtures/cosmos_predict1, or COSMOS_LORA_FIXTURES."""
    return _fixtures("COSMOS_LORA_FIXTURES", "cosmos_predict1")


@pytest.fixture(scope="session")
def v2w_fixtures_dir() -> Path:
    """The official Video2World reference tensors: tests/fixtures/cosmos_predict1_v2w, or COSMOS_LORA_FIXTURES_V2W."""
    return _fixtures("COSMOS_LORA_FIXTURES_V2W", "cosmos_predict1_v2w")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Roots:
    """Roots holding the tiny checkpoints and an embedded 8-clip synthetic dataset (made once per session).

    Read-only for tests: copy it with `roots` to write runs and videos.
    """
    from cosmos_lora.data.embed import embed_dataset
    from cosmos_lora.data.synthetic import make_synthetic_dataset
    from cosmos_lora.model.tiny import TINY_T5, write_tiny_checkpoints

    base = tmp_path_factory.mktemp("tiny_world")
    roots = Roots(base / "checkpoints", base / "datasets", base / "outputs")
    write_tiny_checkpoints(roots.checkpoints)
    dataset = roots.dataset(TINY_DATASET)
    make_synthetic_dataset(dataset, num_clips=8, num_frames=17, height=64, width=64, fps=24, seed=0)
    embed_dataset(dataset, roots.checkpoints / TINY_T5, torch.device("cpu"), torch.float32)
    return roots


@pytest.fixture(scope="session")
def world(tiny_world, tmp_path_factory):
    """Tiny roots and their CLI environment, where the shared 2-process runs of tests/posttrain_runs.py are made."""
    from posttrain_runs import make_world

    return make_world(tiny_world, tmp_path_factory.mktemp("posttrain"))


@pytest.fixture(scope="session")
def run_a(world) -> Path:
    """Run A of tests/posttrain_runs.py: 30 steps on 2 processes, 2 clips held out and evaluated every 10 steps."""
    from posttrain_runs import A_ARGS, named

    return world.train(*named("A", A_ARGS))


@pytest.fixture(scope="session")
def run_b(world):
    """Run B of tests/posttrain_runs.py: A's command with 2 loader workers, SIGTERM'd after a step and resumed."""
    from posttrain_runs import A_ARGS, sigterm_then_resume

    return sigterm_then_resume(world, "B", [*A_ARGS, "dataloader_train.num_workers=2"])


@pytest.fixture(scope="session")
def saved_every_step(tiny_world, tmp_path_factory) -> Roots:
    """Roots holding run A of 1 process, 4 steps, each step's state kept (tests/posttrain_runs.py). Read-only:
    copy it before writing."""
    from posttrain_runs import make_saved_every_step

    return make_saved_every_step(tiny_world, tmp_path_factory.mktemp("saved_every_step"))


@pytest.fixture
def roots(tiny_world, tmp_path) -> Roots:
    """A private copy of the tiny world: checkpoints shared (read-only), dataset and outputs per test."""
    datasets = tmp_path / "datasets"
    shutil.copytree(tiny_world.datasets, datasets)
    return Roots(tiny_world.checkpoints, datasets, tmp_path / "outputs")


@pytest.fixture
def cli_env(roots, monkeypatch) -> Roots:
    """The roots exported the way users set them, for CLI and subprocess tests."""
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(roots.checkpoints))
    monkeypatch.setenv("COSMOS_LORA_DATASETS", str(roots.datasets))
    monkeypatch.setenv("COSMOS_LORA_OUTPUTS", str(roots.outputs))
    return roots


@pytest.fixture(autouse=True)
def _stop_handlers_restored():
    """Tests that build a `Trainer` in this process (as the worker does) leave its SIGINT/SIGTERM handlers
    behind unless they close it; the next test must see Python's own (Ctrl-C raises KeyboardInterrupt)."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
