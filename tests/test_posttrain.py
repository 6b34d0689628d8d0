"""`cosmos-lora posttrain` end to end: the tiny model through real torchrun with two gloo processes.

Runs are made once and shared between the tests that read them; A and B (tests/posttrain_runs.py) once per
session, as test_evaluation.py reads them too:

    A  30 steps, lr 1e-2, 2 clips held out for the eval loss   loss, frozen base, resume reference
    B  the same with 2 data loader workers, SIGTERM after the first step, then resumed with the command
       the CLI prints (the signal reaches the loader workers too, as from Slurm or a terminal)
    C  the same with a derived name, 5 steps, then `--config <run>/config.yaml --resume -- trainer.max_iter=30`
    D  --rank 4 --alpha 8 --target k --max-iter 3 --grad-accum 4, FP8 base linears (model.fp8=true)
"""

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.data.dataset import VideoTextDataset
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.edm import SIGMA_DATA, training_loss
from cosmos_lora.model.lora import EXTRA_TARGETS, OFFICIAL_TARGETS, add_lora, load_lora_state, lora_state_dict, read_adapter
from cosmos_lora.model.tiny import TINY_DIT, TINY_TOKENIZER
from cosmos_lora.model.tokenizer import VideoTokenizer
from cosmos_lora.errors import EXIT_STOPPED
from posttrain_runs import (  # the shared runs A and B (session fixtures `world`, `run_a`, `run_b` in conftest.py)
    A_ARGS, DATASET, EVERY_STEP, STEPS, TRAIN, adapters, assert_identical, metrics, named, read_json, sha256, train_state,
)


# -- the runs of this file -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_c(world) -> Path:
    """Trained to step 5, then continued to STEPS from its saved config with a new max_iter."""
    short = world.train(*A_ARGS[:A_ARGS.index("--max-iter")], "--max-iter", "5", *A_ARGS[A_ARGS.index("--max-iter") + 2:])
    assert read_json(short / "status.json")["step"] == 5
    resumed = world.train("posttrain", "--config", str(short / "config.yaml"), "--nproc", "2", "--resume",
                          "--", f"trainer.max_iter={STEPS}")
    assert resumed == short  # a run's config keeps naming its run, though the derived name had iter5 in it
    return resumed


@pytest.fixture(scope="module")
def run_d(world) -> Path:
    return world.train(*TRAIN, "--name", "D", "--rank", "4", "--alpha", "8", "--target", "k",
                       "--max-iter", "3", "--grad-accum", "4", *EVERY_STEP, "model.fp8=true")


# -- 1. the run finishes and the loss goes down ----------------------------------------------------


def fixed_batch_loss(net, logvar, x0, text, fps) -> list[float]:
    """The EDM loss at fixed noise levels and noise: a deterministic measure of the fit."""
    generator = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        for sigma in (0.2, 0.5, 1.0, 2.0, 5.0):
            epsilon = torch.randn(x0.shape, generator=generator)
            out = training_loss(net, logvar, x0, torch.full((x0.shape[0],), sigma), epsilon, crossattn_emb=text, fps=fps)
            losses.append(out.edm_loss.mean().item())
    return losses


@pytest.mark.slow
def test_two_processes_finish_and_the_loss_goes_down(world, run_a):
    assert read_json(run_a / "status.json")["state"] == "finished"
    rows = metrics(run_a)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert all(float(r["lr"]) == 1e-2 and float(r["samples_per_s"]) > 0 for r in rows)
    latest = read_json(run_a / "latest.json")
    assert (latest["step"], latest["world_size"]) == (STEPS, 2)

    checkpoints = world.roots.checkpoints
    dataset = VideoTextDataset(world.roots.dataset(DATASET), num_frames=17, height=64, width=64)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    tokenizer = VideoTokenizer(checkpoints / TINY_TOKENIZER, torch.device("cpu"), torch.float32, 17)
    with torch.no_grad():
        x0 = tokenizer.encode(batch["video"]).float() * SIGMA_DATA
    condition = (x0, batch["t5_text_embeddings"], batch["fps"])

    net, logvar = load_official_dit(checkpoints / TINY_DIT)
    before = fixed_batch_loss(net, logvar, *condition)
    state, spec, _ = read_adapter(run_a / "adapters" / f"step_{STEPS:06d}.safetensors")
    add_lora(net, spec)
    load_lora_state(net, state)
    after = fixed_batch_loss(net, logvar, *condition)
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert sum(after) < 0.8 * sum(before), (before, after)  # measured: about 0.53x after 30 steps at lr 1e-2


# -- 2. only LoRA tensors train ----------------------------------------------------------------------


@pytest.mark.slow
def test_only_lora_tensors_change(world, run_a):
    assert sha256(world.roots.checkpoints / TINY_DIT) == world.base_sha256  # the base file is never rewritten
    trained, spec, _ = read_adapter(run_a / "adapters" / f"step_{STEPS:06d}.safetensors")
    assert set(trained) == {f"{m}.lora_{ab}.weight" for m in spec.module_names() for ab in "AB"}

    # the optimizer held exactly the LoRA tensors: one state per LoRA tensor, of its shape
    state = train_state(run_a)
    lora, optimizer = state["lora"], state["optimizer"]
    assert all(".lora_" in name for name in lora) and len(lora) == len(trained)
    assert optimizer["param_groups"][0]["params"] == list(range(len(lora)))
    assert [optimizer["state"][i]["exp_avg"].shape for i in range(len(lora))] == [t.shape for t in lora.values()]

    # both LoRA factors moved away from their initialisation (up = 0, down ~ N(0, 1/rank) from the seed)
    net, _ = load_official_dit(world.roots.checkpoints / TINY_DIT)
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    add_lora(net, spec, seed=0)
    initial = lora_state_dict(net)
    for key, tensor in trained.items():
        if ".lora_B." in key:
            assert not torch.equal(initial[key], tensor) and tensor.abs().sum() > 0, key
        else:
            assert not torch.equal(initial[key], tensor), key

    # base + adapter: the base weights are the checkpoint's; with the adapter off the output is the base's
    load_lora_state(net, trained)
    loaded = {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if ".lora_" not in k}
    assert_identical(loaded, base_state)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(1, 5, 32)
    with torch.no_grad():
        adapted = net(x, torch.zeros(1), text)
        net.disable_adapters()
        plain = net(x, torch.zeros(1), text)
        fresh, _ = load_official_dit(world.roots.checkpoints / TINY_DIT)
        assert torch.equal(plain, fresh(x, torch.zeros(1), text))
    assert not torch.allclose(adapted, plain)


# -- 3. the adapter is what the options say ----------------------------------------------------------


@pytest.mark.slow
def test_adapter_has_the_configured_rank_scale_and_targets(run_d):
    for suffix in ("safetensors", "ema.safetensors"):
        state, spec, metadata = read_adapter(run_d / "adapters" / f"step_000003.{suffix}")
        assert (spec.rank, spec.scale) == (4, 2.0)  # --alpha 8 with --rank 4: scale = alpha / rank
        assert set(spec.targets) == set(OFFICIAL_TARGETS + EXTRA_TARGETS["k"]) and spec.blocks == (0, 1)
        assert metadata["step"] == "3" and metadata["ema"] == str(suffix.startswith("ema"))
        for key, tensor in state.items():
            assert tensor.dtype == torch.float32
            assert (tensor.shape[0] if ".lora_A." in key else tensor.shape[1]) == 4, key
        assert {k.rsplit(".lora_", 1)[0].split(".", 2)[2] for k in state} == set(spec.targets)


# -- 4. the scale does what the formula says ---------------------------------------------------------


def lora_delta(net, module_name: str, x, text) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the LoRA added to the layer's output, the layer's input) in one forward pass."""
    seen = {}
    layer = net.get_submodule(module_name)

    def hook(module, args, output):
        seen["x"], seen["delta"] = args[0], output - module.base_layer(args[0])

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        net(x, torch.zeros(1), text)
    handle.remove()
    return seen["delta"], seen["x"]


@pytest.mark.slow
def test_scale_multiplies_the_trained_update_as_the_official_formula(world, run_d):
    state, spec, _ = read_adapter(run_d / "adapters" / "step_000003.safetensors")
    x, text = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.randn(1, 5, 32)
    outputs = {}
    for scale in (spec.scale, 0.5):
        net, _ = load_official_dit(world.roots.checkpoints / TINY_DIT)
        add_lora(net, dataclasses.replace(spec, scale=scale))
        load_lora_state(net, state)
        for module in ("transformer_blocks.0.attn1.to_k", "transformer_blocks.1.attn2.to_q"):
            delta, inputs = lora_delta(net, module, x, text)
            down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
            expected = scale * inputs @ down.T @ up.T  # official: scale * up(down(x))
            assert expected.abs().max() > 0 and torch.allclose(delta, expected, rtol=1e-4, atol=1e-6), module
        with torch.no_grad():
            outputs[scale] = net(x, torch.zeros(1), text)
    assert not torch.allclose(outputs[spec.scale], outputs[0.5])


# -- 5. --max-iter counts optimizer steps ----------------------------------------------------------


@pytest.mark.slow
def test_max_iter_counts_optimizer_steps_with_grad_accumulation(run_d):
    assert [int(r["step"]) for r in metrics(run_d)] == [1, 2, 3]
    assert float(metrics(run_d)[0]["samples_per_s"]) > 0
    assert read_json(run_d / "latest.json")["step"] == 3 and read_json(run_d / "status.json")["state"] == "finished"
    state = train_state(run_d)
    assert state["step"] == 3
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {3.0}  # AdamW's own step count
    # 8 clips over 2 ranks at batch 1 = 4 micro-batches per epoch and rank; 3 steps x 4 = 12 of them
    assert state["epoch"] * 4 + state["batch_in_epoch"] == 12
    assert sorted(p.name for p in (run_d / "adapters").iterdir()) == ["step_000003.ema.safetensors", "step_000003.safetensors"]


@pytest.mark.slow
def test_fp8_training_runs_over_ddp_and_moves_the_lora(run_d):
    assert read_json(run_d / "status.json")["state"] == "finished"
    assert "fp8: true" in (run_d / "config.yaml").read_text()
    assert all(math.isfinite(float(row["loss"])) for row in metrics(run_d))
    raw, _ = adapters(run_d, 3)
    assert all(raw[k].abs().max() > 0 for k in raw if ".lora_B." in k)  # up-matrices start at zero


# -- 6, 7. SIGTERM leaves a resumable state; a resume is exact -----------------------------------------


@pytest.mark.slow
def test_sigterm_saves_a_resumable_state_and_says_how_to_resume(run_b):
    step = run_b.status["step"]
    assert run_b.code == EXIT_STOPPED and run_b.status["state"] == "interrupted"
    assert 1 <= step < STEPS and run_b.latest["step"] == step
    assert f"Interrupted after step {step}" in run_b.stderr
    assert "Traceback" not in run_b.stderr and "ChildFailedError" not in run_b.stderr  # one line, not the launcher's
    assert f"posttrain --config {run_b.run_dir / 'config.yaml'} --resume" in run_b.stderr
    saved = {f"{name}.{ext}" for name in ("rng_rank0", "rng_rank1", "train_state") for ext in ("json", "safetensors")}
    assert saved <= set(run_b.state_files)
    assert read_json(run_b.run_dir / "status.json")["state"] == "finished"
    assert [int(r["step"]) for r in metrics(run_b.run_dir)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(run_a, run_b):
    assert_same_training(run_a, run_b.run_dir)


@pytest.mark.slow
def test_longer_max_iter_on_resume_equals_uninterrupted(run_a, run_c):
    assert_same_training(run_a, run_c)


def assert_same_training(reference_dir: Path, run_dir: Path) -> None:
    reference, again = adapters(reference_dir, STEPS), adapters(run_dir, STEPS)
    assert_identical(reference[0], again[0])  # LoRA weights, bit for bit
    assert_identical(reference[1], again[1])  # and their EMA
    a, b = train_state(reference_dir), train_state(run_dir)
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])
    assert_identical(
        {str(i): s["exp_avg_sq"] for i, s in a["optimizer"]["state"].items()},
        {str(i): s["exp_avg_sq"] for i, s in b["optimizer"]["state"].items()},
    )
    assert [r["loss"] for r in metrics(reference_dir)] == [r["loss"] for r in metrics(run_dir)]


# -- what is refused before any process starts -------------------------------------------------------


def test_bad_dataset_fails_before_launch_listing_every_problem(cli_env):
    dataset = cli_env.dataset(DATASET)
    embedding = sorted((dataset / "t5_xxl").glob("*.pickle"))[0]
    embedding.unlink()
    video = sorted((dataset / "videos").glob("*.mp4"))[-1]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    result = CliRunner().invoke(app, [*TRAIN, "--name", "bad", "--max-iter", "2"])
    assert result.exit_code == 1
    assert str(embedding) in result.stderr and str(video) in result.stderr and "2 problem(s)" in result.stderr
    assert "Traceback" not in result.output
    assert not (cli_env.outputs / "runs").exists()  # no run folder, no config.yaml: nothing was launched


def test_a_batch_the_clips_cannot_fill_is_a_user_error_of_the_workers(roots):
    """Found by the workers, as they build the data loader (end to end, a problem only the workers see ends as
    one line: the diverging run below)."""
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Distributed, Launch
    from cosmos_lora.errors import UserError
    from cosmos_lora.train.launch import prepare_run_dir
    from cosmos_lora.train.trainer import Trainer

    config = build_experiment("tiny_lora", roots, DATASET, {"dataloader_train.batch_size": 16}, [], "E", Launch(2))
    prepare_run_dir(config, resume=False)
    with pytest.raises(UserError) as raised:
        Trainer(config, Distributed(0, 0, 2, torch.device("cpu")))
    assert "cannot fill 2 processes x batch 16" in str(raised.value) and raised.value.fix
    assert "\n" not in str(raised.value)


@pytest.mark.slow
def test_a_run_folder_is_not_reused_unless_resuming(world, run_a):
    before = sha256(run_a / "config.yaml")
    result = world.invoke(*named("A"))
    assert result.exit_code == 1 and "exists already" in result.stderr
    assert "--resume" in result.stderr and "--name NEW" in result.stderr
    changed = world.invoke("posttrain", "--config", str(run_a / "config.yaml"), "--nproc", "2", "--resume",
                           "--", "optimizer.lr=0.5")
    assert changed.exit_code == 1 and "optimizer.lr" in changed.stderr and "--name NEW" in changed.stderr
    assert sha256(run_a / "config.yaml") == before


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(world, run_a):
    result = world.invoke("posttrain", "--config", str(run_a / "config.yaml"), "--resume", "--nproc", "1")
    assert result.exit_code == 1
    assert "saved by 2 processes" in result.stderr and "--nproc 2" in result.stderr
    assert read_json(run_a / "latest.json")["step"] == STEPS and read_json(run_a / "status.json")["state"] == "finished"


# -- a diverging run stops ---------------------------------------------------------------------------


@pytest.mark.slow
def test_nonfinite_loss_stops_with_the_step_and_the_last_good_checkpoint_in_one_line_without_tracebacks(world):
    """A problem only the workers see (here in the middle of training) ends as one line: no worker's or
    the launcher's traceback, in the output of every process."""
    command = [sys.executable, "-m", "cosmos_lora", *TRAIN, "--name", "nan", "--max-iter", "10", "--save-every", "1",
               "--", "optimizer.lr=1e30", "trainer.log_every=1"]
    done = subprocess.run(command, env={**os.environ, **world.env}, capture_output=True, text=True, timeout=300)
    run_dir = world.run("nan")
    status = read_json(run_dir / "status.json")
    assert done.returncode == 1 and status["state"] == "failed"
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    step = status["step"]
    assert 1 < step < 10  # step 1 is finite (LoRA up starts at 0), lr 1e30 blows up what follows
    assert re.search(rf"The loss became (nan|inf|-inf) at step {step};", errors[0]), done.stderr[-3000:]
    assert f"Last good checkpoint: step {step - 1}" in errors[0] and "Fix:" in errors[0]
    assert read_json(run_dir / "latest.json")["step"] == step - 1
    assert [int(r["step"]) for r in metrics(run_dir)] == list(range(1, step))
