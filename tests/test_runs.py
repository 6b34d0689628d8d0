"""`cosmos-lora runs` and `runs show` over run folders written by the trainer's own writers
(config, status, metrics, checkpointer): fields, states (stale detection included), JSON, plot, errors."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.config import load_preset, resolved, save_config
from cosmos_lora.distributed import Distributed
from cosmos_lora.model.lora import LoraSpec
from cosmos_lora.train.checkpointer import Checkpointer
from cosmos_lora.train.metrics import MetricsLogger
from cosmos_lora.train.status import write_status

FIELDS = {"name", "dataset", "rank", "scale", "lr", "steps_done", "steps_total", "loss_smoothed", "state", "size_bytes"}
THREE_HOURS = 3 * 3600


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def make_run(runs_dir, name, state=None, logged_to=0, saved_at=None, message=None, max_iter=40):
    """A run folder as posttrain writes it: config.yaml, metrics.csv (+ TensorBoard) every 5 steps, saves, status.json."""
    run_dir = runs_dir / name
    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir, config.trainer.max_iter = name, "demo/shapes", str(run_dir), max_iter
    save_config(resolved(config), run_dir / "config.yaml")
    if logged_to:
        metrics = MetricsLogger(run_dir, max_iter, 0, enabled=True)
        for step in range(5, logged_to + 1, 5):
            metrics.log(step, {"loss": 1.0 / step + 0.01 * (step % 2), "lr": 2e-3, "grad_norm": 0.5, "s_per_step": 0.2,
                               "samples_per_s": 5.0, "gpu_mem_gb": None})
        metrics.close()
    if saved_at:
        spec = LoraSpec(rank=2, blocks=(0,), targets=("attn1.to_q",))
        lora = {"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 8), "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(8, 2)}
        cpu = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        Checkpointer(run_dir, cpu, spec, 1, {}).save(saved_at, lora, lora, {"step": saved_at}, {})
    if state:
        write_status(run_dir, state, saved_at or 0, message=message)
    return run_dir


def age(run_dir, seconds: float) -> None:
    """Every file of the run last written `seconds` ago."""
    then = time.time() - seconds
    for path in run_dir.rglob("*"):
        os.utime(path, (then, then))


@pytest.fixture
def runs(cli_env):
    runs_dir = cli_env.outputs / "runs"
    made = {
        "done": make_run(runs_dir, "done", "finished", logged_to=40, saved_at=40),
        "live": make_run(runs_dir, "live", "running", logged_to=15, saved_at=10),
        "killed": make_run(runs_dir, "killed", "running", logged_to=10, saved_at=10),
        "crashed": make_run(runs_dir, "crashed", "failed", logged_to=5, message="The loss became nan at step 7."),
        "fresh": make_run(runs_dir, "fresh"),
    }
    age(made["killed"], THREE_HOURS)
    age(made["done"], 3600)
    return made


def last_csv_row(run_dir) -> dict:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def test_runs_json_has_every_run_with_its_fields_and_states(runs):
    result = cli("runs", "--json")
    assert result.exit_code == 0, result.output
    listed = {r["name"]: r for r in json.loads(result.stdout)["runs"]}
    assert set(listed) == set(runs)
    assert all(FIELDS <= set(r) for r in listed.values())
    done = listed["done"]
    assert (done["dataset"], done["rank"], done["scale"], done["lr"]) == ("demo/shapes", 8, 1.0, 2e-3)
    assert (done["steps_done"], done["steps_total"], done["state"], done["latest_save"]) == (40, 40, "finished", 40)
    assert done["loss_smoothed"] == pytest.approx(float(last_csv_row(runs["done"])["loss_smoothed"]))
    assert done["size_bytes"] == sum(p.stat().st_size for p in runs["done"].rglob("*") if p.is_file())
    assert (listed["live"]["state"], listed["live"]["steps_done"]) == ("running", 15)  # metrics are ahead of the save
    assert listed["killed"]["state"] == "stale" and listed["killed"]["quiet_s"] > THREE_HOURS - 60
    assert "--resume" in listed["killed"]["message"]
    assert (listed["crashed"]["state"], listed["crashed"]["message"]) == ("failed", "The loss became nan at step 7.")
    assert (listed["fresh"]["state"], listed["fresh"]["steps_done"], listed["fresh"]["loss_smoothed"]) == ("new", 0, None)


def test_runs_prints_one_line_per_run_and_explains_stale_and_failed(runs):
    result = cli("runs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DATASET", "RANK", "SCALE", "LR", "STEPS", "LOSS", "BEST_EVAL", "VS_BASE", "STATE", "SIZE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(runs) and len(lines) == 1 + len(runs)
    assert rows["done"][1:10] == ["demo/shapes", "8", "1", "0.002", "40/40", f"{float(last_csv_row(runs['done'])['loss_smoothed']):.4f}",
                                  "-", "-", "finished"]  # no held-out clips: no eval loss
    assert rows["killed"][9] == "stale" and rows["fresh"][6:10] == ["-", "-", "-", "new"]
    assert [line.split()[0] for line in lines[1:]][-2:] == ["done", "killed"]  # most recent activity first
    assert "killed: status.json says running" in result.stderr and "crashed: The loss became nan" in result.stderr


def test_a_quiet_run_with_a_live_trainer_process_here_is_running_not_stale(cli_env):
    run_dir = make_run(cli_env.outputs / "runs", "quiet", "running", logged_to=5)
    age(run_dir, THREE_HOURS)  # e.g. a long validation pass
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "cosmos_lora.train.worker",
                               str(run_dir / "config.yaml")])
    try:
        time.sleep(0.2)
        assert json.loads(cli("runs", "--json").stdout)["runs"][0]["state"] == "running"
    finally:
        worker.kill()
        worker.wait()
    assert json.loads(cli("runs", "--json").stdout)["runs"][0]["state"] == "stale"


def test_show_prints_config_and_metrics_and_plots_the_loss_curve(runs, tmp_path):
    result = cli("runs", "show", "done", "--plot", str(tmp_path / "loss.png"))
    assert result.exit_code == 0, result.output
    assert "max_iter: 40" in result.stdout and "dataset: demo/shapes" in result.stdout  # the resolved config
    assert "state     finished" in result.stdout and "logged_rows         8" in result.stdout
    summary = json.loads(cli("runs", "show", "done", "--json").stdout)
    assert summary["config"]["trainer"]["max_iter"] == 40 and summary["run"]["state"] == "finished"
    assert summary["metrics"]["loss_smoothed_last"] == pytest.approx(float(last_csv_row(runs["done"])["loss_smoothed"]))
    assert summary["metrics"]["s_per_step"] == pytest.approx(0.2)

    image = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    assert image.shape == (500, 900, 3)
    ys, xs = np.nonzero(np.all(image == (8, 81, 156), axis=-1))  # the smoothed curve
    assert len(xs) > 500
    left, right = ys[xs < xs.min() + 100].mean(), ys[xs > xs.max() - 100].mean()
    assert left < right - 100  # the loss falls: high on the left, low on the right


def test_show_errors_and_an_empty_runs_folder(cli_env, tmp_path):
    empty = cli("runs")
    assert empty.exit_code == 0 and empty.stdout == "" and "No runs in" in empty.stderr
    assert json.loads(cli("runs", "--json").stdout)["runs"] == []
    for args, phrase in ((["runs", "show", "nope"], "No run 'nope'"),
                         (["runs", "show", "fresh", "--plot", str(tmp_path / "x.png")], "0 logged step(s): too few")):
        make_run(cli_env.outputs / "runs", "fresh")
        result = cli(*args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert phrase in result.stderr and "Fix:" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
    (cli_env.outputs / "runs" / "broken").mkdir()
    (cli_env.outputs / "runs" / "broken" / "config.yaml").write_text("model: [unclosed\n")  # a hand edit gone wrong
    listed = {r["name"]: r for r in json.loads(cli("runs", "--json").stdout)["runs"]}
    assert listed["fresh"]["state"] == "new" and listed["broken"]["state"] == "unreadable"  # one bad run hides no other
    assert "ParserError" in listed["broken"]["message"]


def test_hand_edited_numbers_are_listed_as_numbers(cli_env):
    """YAML reads `1e-4` as text where OmegaConf (posttrain --config) reads a number; the listing agrees with posttrain."""
    run_dir = make_run(cli_env.outputs / "runs", "edited")
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.002", "lr: 1e-4", 1))
    listed = json.loads(cli("runs", "--json").stdout)["runs"]
    assert [(r["name"], r["lr"], r["rank"], r["state"]) for r in listed] == [("edited", 1e-4, 8, "new")]
    assert "0.0001" in cli("runs").stdout
