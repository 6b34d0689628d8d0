"""Validation samples during training: videos of the right size appear, and training does not notice.

In one process: validation restores every RNG stream, weight, gradient and mode it touches and leaks
no tensors, and activation-checkpointed blocks sample exactly as plain ones under no_grad.
Through real torchrun (2 gloo processes): a run with validation ends bit-identical to the same run
without it (the shared run A of tests/posttrain_runs.py), and the samples are where the README says.
"""

import csv
import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.config import load_preset
from cosmos_lora.data.video import probe_video
from cosmos_lora.distributed import Distributed
from cosmos_lora.model.lora import read_adapter
from cosmos_lora.paths import Roots
from cosmos_lora.config.build import build_experiment
from cosmos_lora.distributed import Launch
from cosmos_lora.train.checks import check_validation
from cosmos_lora.train.launch import prepare_run_dir
from cosmos_lora.train.state_files import load_state
from cosmos_lora.train.trainer import Trainer

DATASET = "demo/shapes"
FRAMES, SIZE = 17, 64  # the tiny preset's training size
PROMPTS = ["a green square moves from right to left on a dark gray background", "a blue circle moves slowly"]
SAMPLING = {"trainer.validation.steps": 3, "trainer.validation.ema": True}  # 3 steps: fast, still a real sampler


def make_trainer(roots: Roots, name: str, **options) -> Trainer:
    options = {"trainer.validate_every": 1, "model.activation_checkpointing": 1.0, **SAMPLING, **options}
    config = build_experiment("tiny_lora", roots, DATASET, options, [], name, Launch(1))
    check_validation(config)
    prepare_run_dir(config, resume=False)
    return Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def snapshot(trainer: Trainer) -> dict:
    return {
        "torch_rng": torch.get_rng_state(),
        "noise_rng": trainer.noise_generator.get_state(),
        **{f"param:{k}": p.detach().clone() for k, p in trainer.params.items()},
        **{f"grad:{k}": p.grad.clone() for k, p in trainer.params.items()},
        **{f"ema:{k}": t.clone() for k, t in trainer.ema.state_dict().items()},
    }


def test_validation_changes_no_training_state_and_leaks_nothing(roots):
    trainer = make_trainer(roots, "inproc")
    try:
        trainer._start_data()
        for _ in range(2):  # from step 2 on the EMA differs from the weights
            trainer.train_step()
            trainer.step += 1
        before, modes = snapshot(trainer), [m.training for m in trainer.net.modules()]
        requires_grad = {k: p.requires_grad for k, p in trainer.net.named_parameters()}

        folder = trainer.validate()
        after_first = live_tensors()
        for _ in range(2):
            assert trainer.validate() == folder
        assert live_tensors() == after_first  # nothing accumulates from one validation to the next

        after = snapshot(trainer)
        different = [k for k in before if not torch.equal(before[k], after[k])]
        assert not different, different
        assert [m.training for m in trainer.net.modules()] == modes
        assert {k: p.requires_grad for k, p in trainer.net.named_parameters()} == requires_grad
    finally:
        trainer.close()

    names = trainer.validator.prompts
    assert folder == trainer.run_dir / "samples" / "step_000002"
    expected = {f"{p.name}_seed0{suffix}.{ext}" for p in names for suffix in ("", "_ema") for ext in ("mp4", "json")} | {"prompts.txt"}
    assert {p.name for p in folder.iterdir()} == expected
    for p in names:  # each sample's sidecar: what it is and its video metrics (tests/test_video_metrics.py)
        for suffix in ("", "_ema"):
            sidecar = json.loads((folder / f"{p.name}_seed0{suffix}.json").read_text())
            assert (sidecar["prompt"], sidecar["seed"], sidecar["ema"]) == (p.text, 0, suffix == "_ema")
            assert sidecar["metrics"]["flicker"] >= 0 and sidecar["metrics"]["motion_px_per_frame"] >= 0
    lines = (folder / "prompts.txt").read_text().splitlines()
    assert lines == [f"{p.name}\t{p.text}" for p in names] and [p.text for p in names] == list(trainer.config.trainer.validation.prompts)


def test_checkpointed_blocks_sample_as_plain_blocks_under_no_grad(roots):
    """Activation checkpointing wraps block.forward in torch.utils.checkpoint; validation runs it under no_grad."""
    frames = {}
    for fraction in (1.0, 0.0):
        trainer = make_trainer(roots, f"ckpt{fraction}", **{"model.activation_checkpointing": fraction})
        trainer.close()
        assert trainer.recomputed_blocks == (2 if fraction else 0)
        prompt = trainer.validator.prompts[0]
        with torch.random.fork_rng():
            torch.manual_seed(123)  # both LoRAs get the same random up-weights, so the LoRA path counts
            with torch.no_grad():
                for name, p in trainer.params.items():
                    if ".lora_B." in name:
                        p.normal_(0, 0.5)
        frames[fraction] = trainer.validator.sample(trainer.net, trainer.tokenizer, prompt, seed=3)
    assert frames[1.0].shape == (FRAMES, SIZE, SIZE, 3) and frames[1.0].dtype == np.uint8
    assert np.array_equal(frames[1.0], frames[0.0])


# -- the CLI ---------------------------------------------------------------------------------------


def test_validation_options_reach_the_config_and_bad_ones_stop_early(cli_env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n  {PROMPTS[1]}  \n", encoding="utf-8")
    base = ["posttrain", "--model", "tiny", "-d", DATASET, "--name", "v"]
    runner = CliRunner()

    dry = runner.invoke(app, [*base, "--validate-every", "5", "--validation-prompts", str(prompts), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "validate_every: 5" in dry.stdout and all(p in dry.stdout for p in PROMPTS)

    cases = {
        "has no effect without validation": [*base, "--validation-prompts", str(prompts)],
        "is not a .txt file": [*base, "--validate-every", "5", "--validation-prompts", str(prompts.with_suffix(".jsonl"))],
        "need the T5 text encoder": [*base, "--validate-every", "5", "--", "model.text_encoder=nowhere/t5"],
        "trainer.validation.steps 0": [*base, "--validate-every", "5", "--", "trainer.validation.steps=0"],
    }
    prompts.with_suffix(".jsonl").write_text('{"prompt": "x"}\n')
    for message, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.stderr, (message, result.output)
        assert "Traceback" not in result.output
    assert not (cli_env.outputs / "runs").exists()  # refused before any run folder was made


def test_a_resume_may_change_the_validation_settings(roots):
    """They do not change the training (see below), so a resume may sample other prompts, more often."""
    first = build_experiment("tiny_lora", roots, DATASET, {}, [], "resumable", Launch(1))
    prepare_run_dir(first, resume=False)
    changed = {"trainer.validate_every": 10, "trainer.validation.prompts": PROMPTS, "trainer.validation.seeds": [4, 5],
               "trainer.validation.steps": 8, "trainer.validation.guidance": 5.0, "trainer.validation.ema": True}
    again = build_experiment("tiny_lora", roots, DATASET, changed, [], "resumable", Launch(1))
    prepare_run_dir(again, resume=True)
    assert load_preset(again.job.run_dir + "/config.yaml").trainer.validation.seeds == [4, 5]


# -- through torchrun --------------------------------------------------------------------------------


def training_losses(run_dir: Path) -> list[str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row["loss"] for row in csv.DictReader(f) if row["loss"]]  # evaluations are rows without one


@pytest.mark.slow
def test_a_run_with_validation_trains_exactly_as_one_without(world, run_a, tmp_path):
    """Run A of tests/posttrain_runs.py (2 processes, 30 steps), again with validation samples every 15 steps."""
    from posttrain_runs import A_ARGS, STEPS

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    split = A_ARGS.index("--")
    sampled = world.train(
        *A_ARGS[:split], "--name", "sampled", "--validate-every", "15", "--validation-prompts", str(prompts),
        *A_ARGS[split:], "trainer.validation.steps=3", "trainer.validation.ema=true", "trainer.validation.seeds=[0,1]",
    )

    last = f"step_{STEPS:06d}"
    for suffix in ("safetensors", "ema.safetensors"):  # the LoRA and its EMA, bit for bit
        a, _, _ = read_adapter(run_a / "adapters" / f"{last}.{suffix}")
        b, _, _ = read_adapter(sampled / "adapters" / f"{last}.{suffix}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), suffix
    for rank in (0, 1):  # every RNG stream of every rank goes on as if no sample had been made
        a = load_state(run_a / "state" / last, f"rng_rank{rank}")
        b = load_state(sampled / "state" / last, f"rng_rank{rank}")
        assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["noise"], b["noise"]), rank
    assert training_losses(run_a) == training_losses(sampled) and len(training_losses(run_a)) == STEPS

    for step in (15, STEPS):
        folder = sampled / "samples" / f"step_{step:06d}"
        videos = sorted(folder.glob("*.mp4"))
        assert len(videos) == 2 * 2 * 2, videos  # 2 prompts x seeds 0 and 1 x raw and EMA weights
        assert {v.name.rsplit("_seed", 1)[1] for v in videos} == {"0.mp4", "1.mp4", "0_ema.mp4", "1_ema.mp4"}
        for video in videos:
            info = probe_video(video)
            assert (info.frames, info.height, info.width) == (FRAMES, SIZE, SIZE), video
        assert [line.split("\t")[1] for line in (folder / "prompts.txt").read_text().splitlines()] == PROMPTS
    assert not (run_a / "samples").exists()
