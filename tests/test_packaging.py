"""The wheel carries the presets: `pip install .` (not editable) finds `text2world_7b_lora` too."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.slow
def test_the_wheel_holds_the_presets_and_they_load(tmp_path, monkeypatch):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for folder in ("src", "configs"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("cosmos_lora-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        packaged = sorted(Path(n).name for n in archive.namelist() if n.startswith("cosmos_lora/presets/"))
        assert packaged == PRESETS
        archive.extractall(tmp_path / "installed")

    # the unpacked wheel alone, from another folder: its presets load without the source tree
    monkeypatch.delenv("COSMOS_LORA_CONFIGS", raising=False)
    probe = ("from cosmos_lora.config import load_preset; from cosmos_lora.config.experiment import configs_dir; "
             "print(configs_dir()); print(load_preset('text2world_7b_lora').model.dit, load_preset('tiny_lora').model.dit)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path / "installed"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    presets_dir, dits = done.stdout.splitlines()
    assert Path(presets_dir).is_relative_to(tmp_path / "installed") and not Path(presets_dir).is_symlink()
    assert len(dits.split()) == 2
