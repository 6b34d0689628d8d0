import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official reference tensors: ../shared/fixtures/cosmos_predict1, or COSMOS_LORA_FIXTURES."""
    path = Path(os.environ.get("COSMOS_LORA_FIXTURES", REPO.parent / "shared" / "fixtures" / "cosmos_predict1"))
    assert path.is_dir(), f"fixtures not found at {path}; set COSMOS_LORA_FIXTURES"
    return path
