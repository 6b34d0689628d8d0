"""The command line: help, dry runs, one-line user errors, and the demo end to end."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.data.video import probe_video, read_video

runner = CliRunner()


def test_help_lists_every_stage_and_examples():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("download", "prepare", "embed", "posttrain", "infer", "demo"):
        assert command in result.stdout
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Examples" in sub.stdout and f"cosmos-lora {command}" in sub.stdout


def test_dry_run_prints_the_resolved_config_and_the_torchrun_command(cli_env):
    result = runner.invoke(app, ["posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--rank", "4", "--dry-run",
                                 "--", "trainer.max_iter=7", "optimizer.lr=5e-5"])
    assert result.exit_code == 0, result.output
    assert "max_iter: 7" in result.stdout and "lr: 5.0e-05" in result.stdout and "rank: 4" in result.stdout
    command = result.stdout.strip().splitlines()[-1]
    assert "--nproc_per_node=1" in command and "-m cosmos_lora.train.worker" in command  # 1 process on a CPU machine
    assert "demo-shapes_r4_iter7_bs1_accum1_scale1_lr5e-05_seed0/config.yaml" in command
    assert not (cli_env.outputs / "runs").exists()  # a dry run writes nothing
    nproc = runner.invoke(app, ["posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--nproc", "3", "--dry-run"])
    assert "--nproc_per_node=3" in nproc.stdout.splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["posttrain", "--model", "tiny", "--dataset", "../escape", "--dry-run"], "must be a path inside the datasets folder"),
    (["posttrain", "--model", "tiny", "--dry-run"], "No dataset given"),
    (["posttrain", "--model", "tiny", "-d", "demo/shapes", "--scale", "2", "--alpha", "8"], "--scale and --alpha"),
    (["posttrain", "--model", "huge", "-d", "demo/shapes"], "Unknown --model"),
    (["posttrain", "--model", "tiny", "-d", "demo/shapes", "--", "trainer.max_iterr=3"], "Unknown config key"),
    (["posttrain", "--config", "no_such_preset", "-d", "demo/shapes"], "No config 'no_such_preset'"),
    (["posttrain", "-d", "demo/shapes"], "No DiT checkpoint"),
    (["posttrain", "--model", "tiny", "-d", "not/there"], "not ready for training"),
])
def test_user_errors_are_one_message_with_a_fix_and_exit_1(cli_env, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not (cli_env.outputs / "runs").exists()


def test_alpha_is_peft_spelling_of_the_scale(cli_env):
    result = runner.invoke(app, ["posttrain", "--model", "tiny", "-d", "demo/shapes", "--rank", "4", "--alpha", "8", "--dry-run"])
    assert result.exit_code == 0 and "scale: 2.0" in result.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end_and_the_lora_changes_the_video(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_LORA_")}
    done = subprocess.run([sys.executable, "-m", "cosmos_lora", "demo", "--max-iter", "20"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / done.stdout.strip().splitlines()[-1]
    assert out == tmp_path / "outputs" / "infer" / "demo"
    compares = sorted((out / "compare").glob("*/seed_0.mp4"))
    assert len(compares) == 2 and (out / "index.html").is_file()
    for compare in compares:
        original = read_video(out / "original" / compare.parent.name / "seed_0.mp4")[0]
        lora = read_video(out / "lora" / compare.parent.name / "seed_0.mp4")[0]
        assert original.shape == lora.shape == (17, 64, 64, 3)
        assert np.abs(original.astype(int) - lora).mean() > 1.0  # the LoRA visibly changes the video
        assert probe_video(compare).frames == 17
    assert (tmp_path / "outputs" / "runs" / "demo" / "adapters" / "step_000020.safetensors").is_file()
    # it ends with the LoRA's eval loss on held-out clips against the base model's: training visibly helped
    line = re.search(r"eval loss on 4 held-out clips .*: base model ([\d.-]+), LoRA after 20 steps ([\d.-]+)", done.stderr)
    assert line, done.stderr[-3000:]
    base, lora = float(line.group(1)), float(line.group(2))
    assert lora < base - 0.03 * abs(base), (base, lora)
