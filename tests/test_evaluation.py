"""The evaluation loss end to end: held-out clips chosen by name, the official loss at fixed noise written to
metrics.csv, deterministic across world sizes and a SIGTERM + resume, lower after training on the domain,
and read back by `runs` and `runs compare`.

Runs on the tiny model and the shared 8-clip synthetic dataset, 2 of its clips held out (--eval-fraction 0.25):

    A  2 gloo processes, 30 steps at lr 1e-2, eval every 10 steps   the reference (tests/posttrain_runs.py)
    B  the same, SIGTERM'd after its first step, resumed with the command the CLI prints (same file)
    S  1 process (in the test's process), 1 step                    its step-0 evaluation (the base model) is A's

A rerun of A is covered by B: up to its stop B is a rerun, and after the resume its evaluations must match
A's bit for bit too.
"""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_user_error
from posttrain_runs import EVAL_EVERY, STEPS, World, train_in_process, train_state  # A and B: session fixtures in conftest.py

from cosmos_lora.data.split import held_out_clips, too_small


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def evaluations(run_dir: Path) -> dict[int, dict[str, str]]:
    """step -> the eval columns of that step's evaluation row, as written (every digit)."""
    return {int(r["step"]): {k: v for k, v in r.items() if k.startswith("eval_")} for r in rows(run_dir) if r["eval_loss"]}


@pytest.fixture(scope="module")
def run_s(world: World) -> Path:
    """S: trained in this process as the one worker of a 1-process launch trains."""
    return train_in_process(world.roots, "tiny_lora", "S", {"trainer.evaluation.fraction": 0.25, "trainer.eval_every": EVAL_EVERY,
                                                       "trainer.max_iter": 1})


def test_the_split_is_chosen_by_clip_name_and_a_small_dataset_has_none():
    names = [f"clip_{i:03d}" for i in range(40)]
    held = held_out_clips(names, 0.05, 2)
    assert len(held) == 2 and held == held_out_clips(list(reversed(names)), 0.05, 2)  # order does not matter
    assert set(held) <= set(held_out_clips(names + ["zz_new"], 0.1, 2))  # a bigger share keeps the clips it had
    assert held_out_clips(names[:19], 0.05, 2) == [] and too_small(19, 0.05, 2) and not too_small(20, 0.05, 2)
    assert held_out_clips(names, 0, 2) == []


@pytest.mark.slow
def test_held_out_clips_are_recorded_and_never_trained_on(run_a):
    config = (run_a / "config.yaml").read_text()
    held = re.search(r"clips:\n((?:    - .+\n)+)", config).group(1).split()[1::2]
    assert len(held) == 2 and held == sorted(held_out_clips([f"synthetic_{i:06d}" for i in range(8)], 0.25, 2))
    log = json.loads((run_a / "status.json").read_text())
    assert log["state"] == "finished"
    # 6 training clips over 2 processes x batch 1: 3 steps per epoch (4 with all 8 clips), so 30 steps end
    # with epoch 10 begun
    state = train_state(run_a)
    assert (state["epoch"], state["batch_in_epoch"]) == (10, 0)


@pytest.mark.slow
def test_the_eval_loss_is_written_at_step_0_every_n_steps_and_at_the_end_and_falls(run_a):
    evaluated = evaluations(run_a)
    assert sorted(evaluated) == [0, 10, 20, STEPS]
    columns = list(evaluated[0])
    assert columns[:2] == ["eval_loss", "eval_loss_ema"] and len(columns) == 2 + 2 * 8  # totals, 8 sigmas each
    for values in evaluated.values():
        for total in ("eval_loss", "eval_loss_ema"):
            per_sigma = [float(values[c]) for c in columns if c.startswith(total + "_sigma_")]
            assert len(per_sigma) == 8 and float(values[total]) == pytest.approx(np.mean(per_sigma), rel=1e-12)
    lowest = columns[2].removeprefix("eval_loss_sigma_")  # the EMA's own values, level by level
    assert evaluated[STEPS][f"eval_loss_ema_sigma_{lowest}"] != evaluated[STEPS][f"eval_loss_sigma_{lowest}"]
    base, last = float(evaluated[0]["eval_loss"]), float(evaluated[STEPS]["eval_loss"])
    assert evaluated[0]["eval_loss"] == evaluated[0]["eval_loss_ema"]  # step 0: the EMA is the LoRA, a no-op
    assert last < base - 0.05 * abs(base), (base, last)  # trained on the domain: clearly better on its held-out clips
    assert (run_a / "tensorboard").is_dir() and list((run_a / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_the_eval_loss_is_identical_after_sigterm_and_resume(run_a, run_b):
    assert evaluations(run_b.run_dir) == evaluations(run_a)  # every digit, every step, base and EMA


@pytest.mark.slow
def test_the_eval_loss_is_identical_for_one_and_two_processes(run_a, run_s):
    """Each (clip, sigma) runs alone with noise drawn on the CPU from its name, and the sum is taken in clip order."""
    assert evaluations(run_s)[0] == evaluations(run_a)[0]


@pytest.mark.slow
def test_runs_shows_the_best_step_and_compare_names_what_differs(world, run_a, run_s, tmp_path):
    listed = {r["name"]: r for r in json.loads(world.invoke("runs", "--json").stdout)["runs"]}
    evaluated = {step: float(v["eval_loss"]) for step, v in evaluations(run_a).items()}
    best = min(evaluated, key=evaluated.get)
    assert listed["A"]["eval_best_step"] == best and listed["A"]["eval_improvement_pct"] > 5
    table = world.invoke("runs").stdout.splitlines()
    assert "BEST_EVAL" in table[0].split() and table[0].split().index("BEST_EVAL") == 7
    assert next(line for line in table if line.startswith("A ")).split()[7] == str(best)

    result = world.invoke("runs", "compare", "A", "S", "--json", "--plot", str(tmp_path / "eval.png"))
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert [r["name"] for r in comparison["runs"]] == ["A", "S"] and comparison["comparable"]
    assert comparison["runs"][0]["eval_best_step"] == best
    assert [p["step"] for p in comparison["runs"][1]["curve"]] == [0, 1]
    assert comparison["differing"]["trainer.max_iter"] == [STEPS, 1] and comparison["differing"]["optimizer.lr"] == [1e-2, 2e-3]
    assert "job.name" not in comparison["differing"]
    image = np.asarray(Image.open(tmp_path / "eval.png").convert("RGB"))
    assert image.shape == (500, 900, 3) and np.all(image == (31, 119, 180), axis=-1).sum() > 200  # A's curve
    text = world.invoke("runs", "compare", "A", "S").stdout
    assert f"A: best step {best}" in text and "differs: optimizer.lr: 0.01 | 0.002" in text


def test_eval_options_are_checked_before_anything_runs(cli_env):
    from cli_helpers import cli

    base = ["posttrain", "--model", "tiny", "-d", "demo/shapes", "--dry-run"]
    assert_user_error(cli(*base, "--eval-fraction", "0.7"), "--eval-fraction (trainer.evaluation.fraction) is 0.7")
    assert_user_error(cli(*base, "--eval-fraction", "0.1", "--eval-dataset", "demo/other"), "give only one of them")
    assert_user_error(cli(*base, "--eval-dataset", "demo/shapes"), "is the training dataset")
    assert_user_error(cli(*base, "--eval-every", "0", "--eval-dataset", "demo/other"), "no effect with --eval-every 0")
    assert_user_error(cli(*base, "--eval-dataset", "demo/other"), "demo/other is not ready", "videos: folder is missing")


def test_eval_dataset_is_evaluated_whole_and_nothing_is_held_out(cli_env):
    import shutil

    from cli_helpers import assert_ok, cli

    shutil.copytree(cli_env.dataset("demo/shapes"), cli_env.dataset("demo/other"))
    base = ["posttrain", "--model", "tiny", "-d", "demo/shapes", "--nproc", "1", "--epochs", "1", "--dry-run"]
    result = cli(*base, "--eval-dataset", "demo/other")
    assert_ok(result)
    evaluation = re.search(r"  evaluation:\n((?:    .+\n)+)", result.stdout).group(1)
    assert "dataset: demo/other" in evaluation and evaluation.count("- synthetic_") == 8
    assert "  max_iter: 8\n" in result.stdout  # an epoch is all 8 training clips
    held_out = cli(*base, "--eval-fraction", "0.25")
    assert_ok(held_out)
    assert "  max_iter: 6\n" in held_out.stdout  # an epoch is the 6 clips not held out


def test_a_dataset_too_small_for_a_split_says_so_in_the_first_log_line():
    from cosmos_lora.config import load_preset
    from cosmos_lora.train.evaluation import evaluation_summary

    config = load_preset("tiny_lora")  # --eval-fraction 0.05, at least 2 clips: a split needs 20 clips
    line = evaluation_summary(config, None, training_clips=8)
    assert line == ("; no eval loss: 8 clips are too few to hold out 2 or 0.05 of them (a split needs 20), "
                    "so every clip is trained on")
    config.trainer.eval_every = 0
    assert evaluation_summary(config, None, training_clips=8) == ""  # evaluation off: nothing to explain


def test_video2world_eval_loss_is_conditioned_on_the_input_frame_and_repeats(world: World):
    """A Video2World run evaluates the image-to-video case: the clip's first latent frame given. Giving none
    (plain text-to-video) is another number. (Reruns repeat the number: the Text2World tests above; both runs
    train in this process, as the worker of a 1-process launch does: `demo --v2w` evaluates through torchrun.)"""
    from cosmos_lora.config import load_preset
    from cosmos_lora.config.experiment import changed_keys

    options = {"trainer.evaluation.fraction": 0.25, "trainer.eval_every": 1, "trainer.max_iter": 1}
    one = evaluations(train_in_process(world.roots, "tiny_v2w_lora", "V1", options))
    none = evaluations(train_in_process(world.roots, "tiny_v2w_lora", "V0", {**options, "model.video2world.eval_condition_frames": 0}))
    saved = [load_preset(str(world.run(name) / "config.yaml")) for name in ("V1", "V0")]
    assert changed_keys(*saved) == ["job.name", "job.run_dir", "model.video2world.eval_condition_frames"]
    assert sorted(one) == [0, 1]
    assert all(np.isfinite(float(v)) for v in one[0].values() if v)
    assert one[0]["eval_loss"] != none[0]["eval_loss"]
    # the sigmas are the ones it trains at: 4x the Text2World quantiles (0.22 .. 4.6)
    sigmas = sorted(float(k.removeprefix("eval_loss_sigma_")) for k in one[0] if k.startswith("eval_loss_sigma_"))
    assert 0.8 < sigmas[0] < 1.0 and 17 < sigmas[-1] < 20


def test_a_stop_on_the_last_step_leaves_the_final_evaluation_to_the_resume(cli_env):
    """A SIGTERM that lands on the last step saves and stops without the final evaluation (it could take
    minutes); the run is left resumable, and the resume evaluates the last step and finishes."""
    import torch

    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Distributed, Launch
    from cosmos_lora.train.launch import prepare_run_dir
    from cosmos_lora.train.trainer import Trainer

    options = {"trainer.max_iter": 2, "trainer.eval_every": 10, "trainer.evaluation.fraction": 0.25,
               "trainer.evaluation.ema": False}
    config = build_experiment("tiny_lora", cli_env, "demo/shapes", options, [], "last", Launch(1))
    prepare_run_dir(config, resume=False)
    trainer = Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))
    step = trainer.train_step

    def step_then_sigterm_at_the_last():
        out = step()
        trainer.stop_requested = trainer.step == 1  # raised during step 2 of 2, as a signal would be
        return out

    trainer.train_step = step_then_sigterm_at_the_last
    try:
        assert trainer.train() == "interrupted"
    finally:
        trainer.close()
    run_dir = Path(config.job.run_dir)
    assert sorted(evaluations(run_dir)) == [0]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 2

    resumed = Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))
    try:
        assert resumed.step == 2 and resumed.train() == "finished"
    finally:
        resumed.close()
    assert sorted(evaluations(run_dir)) == [0, 2]
