"""The supported torch range: one lower bound, the same everywhere, and the CLI refuses anything older."""

import inspect
import re
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist
from typer.testing import CliRunner

from cosmos_lora import torch_version
from cosmos_lora.cli.app import app
from cosmos_lora.torch_version import MIN_TORCH, major_minor

REPO = Path(__file__).resolve().parents[1]

# Every version-dependent torch API in src/, with the release that brought it. MIN_TORCH must be
# the newest of them: raising the bound needs a reason here, using a newer API needs a line here.
APIS_SINCE = {
    "torch.serialization.skip_data (model/merge.py)": "2.6",
    "sdpa_kernel(set_priority=) (model/dit.py)": "2.6",
    "torch._scaled_mm rowwise scales (model/fp8.py)": "2.5",
    "init_process_group(device_id=) (distributed.py)": "2.3",
    "torch.load(mmap=) (model/checkpoint.py, infer/adapters.py)": "2.1",
}


def test_min_torch_is_the_newest_api_the_code_uses():
    assert max(APIS_SINCE.values(), key=major_minor) == MIN_TORCH


def test_the_installed_torch_has_every_api_of_the_lower_bound():
    from torch.nn.attention import sdpa_kernel

    assert callable(torch.serialization.skip_data)
    assert "set_priority" in inspect.signature(sdpa_kernel).parameters
    assert "device_id" in inspect.signature(dist.init_process_group).parameters
    assert "mmap" in inspect.signature(torch.load).parameters
    assert hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")


def test_pyproject_container_and_ci_agree_with_min_torch():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in dependencies if re.match(r"torch\b", d)] == [f"torch>={MIN_TORCH}"]
    container = re.findall(r"torch==([\d.]+)", (REPO / ".devcontainer" / "Dockerfile").read_text())
    ci = re.findall(r"torch==([\d.]+)", (REPO / ".ci" / "run").read_text())
    assert len(container) == len(ci) == 1
    assert major_minor(container[0]) >= major_minor(MIN_TORCH) and major_minor(ci[0]) >= major_minor(MIN_TORCH)


def test_cli_refuses_an_older_torch_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch_version, "installed_torch", lambda: "2.5.1+cu124")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path), "--name", "a/b"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0] == f"Error: torch 2.5.1+cu124 is installed; cosmos-lora needs torch >= {MIN_TORCH}."
    assert len(lines) == 2 and lines[1].startswith("Fix:")
    assert not (tmp_path / "a").exists()


def test_the_lower_bound_itself_and_newer_are_accepted():
    torch_version.check_torch(f"{MIN_TORCH}.0+cu124")
    torch_version.check_torch(f"{MIN_TORCH}.0a0+git1234")
    torch_version.check_torch("2.13.0+cpu")
