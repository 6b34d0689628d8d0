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
