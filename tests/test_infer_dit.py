"""`infer --dit` (any official-format DiT checkpoint) and stacked `--lora FILE[:WEIGHT]`, through the CLI on the tiny model.

The central check: adapters stacked at inference give the latents that `infer --dit` gives on the `merge`
of the same adapters (float32, the tiny preset's precision).
"""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cosmos_lora.cli.lora_option import parse_weighted
from cosmos_lora.config import load_preset, resolved, save_config
from cosmos_lora.distributed import Distributed
from cosmos_lora.model import lora_formats
from cosmos_lora.model.checkpoint import base_fingerprint, load_official_dit
from cosmos_lora.model.lora import add_lora, lora_state_dict, save_adapter, spec_for
from cosmos_lora.model.prompts import prompt_folder
from cosmos_lora.model.tiny import TINY_DIT, write_tiny_dit
from cosmos_lora.train.checkpointer import Checkpointer

from cli_helpers import assert_ok, assert_user_error, cli

RED = prompt_folder("a red square")
FAST = ["-p", "a red square", "--steps", "2"]
# stacked LoRA layers compute x W + sum_i s_i (x A_i) B_i, the merged weights x (W + sum_i s_i B_i A_i):
# the same sums in another order, so float32 rounding only, grown by 2 steps at guidance 7 (measured: at
# most 6.1e-5 on latents up to 4.5, where the adapters move them by up to 4.6); compared as
# |stacked - merged| <= 1e-4 + 1e-4 * |merged|
LATENT_TOLERANCE = 1e-4


def a_lora(checkpoints, rank: int, scale: float, seed: int, first_blocks=None, extra=()):
    """(tensors, spec) of a LoRA on the tiny DiT with non-zero up-matrices, as training leaves them."""
    net, _ = load_official_dit(checkpoints / TINY_DIT)
    spec = spec_for(len(net.transformer_blocks), rank, scale, first_blocks, extra)
    add_lora(net, spec, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=generator) for k, v in lora_state_dict(net).items()}
    return state, spec


@pytest.fixture
def two_loras(cli_env, tmp_path):
    """Ours (rank 4, scale 1.5, q/v of both blocks) and a diffusers export (rank 2, q/v + MLP of block 0 only)."""
    ours = tmp_path / "sports.safetensors"
    save_adapter(ours, *a_lora(cli_env.checkpoints, rank=4, scale=1.5, seed=0))
    tensors, metadata = lora_formats.to_diffusers(*a_lora(cli_env.checkpoints, rank=2, scale=2.0, seed=7, first_blocks=1, extra=("mlp",)))
    diffusers = tmp_path / "night.safetensors"
    save_file(tensors, diffusers, metadata=metadata)
    return ours, diffusers


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latents(out, stage: str) -> torch.Tensor:
    return load_file(out / stage / RED / "seed_0.latents.safetensors")["latents"]


def sidecar(out, stage: str) -> dict:
    return json.loads((out / stage / RED / "seed_0.json").read_text())


def other_dit(folder, seed: int = 1, size: str = "tiny"):
    write_tiny_dit(folder / "model.pt", seed=seed, size=size)
    return folder / "model.pt"


# -- stacked adapters == the merge of the same adapters ------------------------------------------------

def test_stacked_loras_give_the_latents_of_infer_dit_on_their_merge(cli_env, two_loras, tmp_path):
    ours, diffusers = two_loras
    loras = [f"{ours}:0.7", f"{diffusers}:-0.5"]
    result = cli("infer", "--model", "tiny", *[a for lora in loras for a in ("--lora", lora)], "--save-latents", *FAST)
    assert_ok(result)
    stacked_out = cli_env.outputs / "infer" / "sports+night"  # the default name: every adapter's
    assert "LoRA x 0.7" in result.stderr and "LoRA x -0.5" in result.stderr

    merged = tmp_path / "merged" / "model.pt"
    adapters = [a for lora in loras for a in ("-a", lora)]
    assert_ok(cli("merge", "--base", str(cli_env.checkpoints / TINY_DIT), *adapters, "--out", str(merged)))
    assert_ok(cli("infer", "--dit", str(merged.parent), "--stages", "original", "--save-latents", *FAST))
    merged_out = cli_env.outputs / "infer" / "merged"  # a model.pt is named by its folder

    stacked, on_merge, base = latents(stacked_out, "lora"), latents(merged_out, "original"), latents(stacked_out, "original")
    torch.testing.assert_close(stacked, on_merge, atol=LATENT_TOLERANCE, rtol=LATENT_TOLERANCE)
    assert (stacked - base).abs().max() > 1000 * LATENT_TOLERANCE  # the adapters act

    # the sidecar records every adapter with its weight and file hash
    recorded = sidecar(stacked_out, "lora")["adapters"]
    assert [(a["adapter"], a["weight"], a["adapter_format"]) for a in recorded] == [
        (str(ours), 0.7, "cosmos-lora"), (str(diffusers), -0.5, "diffusers")]
    assert [a["adapter_sha256"] for a in recorded] == [sha256_of(ours), sha256_of(diffusers)]
    assert [a["lora_scale"] for a in recorded] == [pytest.approx(0.7 * 1.5), pytest.approx(-0.5 * 2.0)]


def test_each_adapter_of_the_stack_counts(cli_env, two_loras):
    """Dropping either adapter changes the latents by far more than the tolerance: the check above would see it."""
    ours, diffusers = two_loras
    runs = {"both": [f"{ours}:0.7", f"{diffusers}:-0.5"], "first": [f"{ours}:0.7"], "second": [f"{diffusers}:-0.5"]}
    for name, loras in runs.items():
        assert_ok(cli("infer", "--model", "tiny", *[a for lora in loras for a in ("--lora", lora)], "--stages", "lora",
                      "--save-latents", "--name", name, *FAST))
    made = {name: latents(cli_env.outputs / "infer" / name, "lora") for name in runs}
    for name in ("first", "second"):
        assert (made["both"] - made[name]).abs().max() > 100 * LATENT_TOLERANCE, name


# -- --dit: which checkpoint, named everywhere ----------------------------------------------------------

def test_dit_is_the_original_stage_and_is_named_in_sidecars_plan_and_gallery(cli_env, two_loras, tmp_path):
    ours, _ = two_loras
    own = cli_env.checkpoints / TINY_DIT
    dit = other_dit(tmp_path / "Tiny-Text2World_post-trained")
    assert_ok(cli("infer", "--model", "tiny", "--lora", str(ours), "--save-latents", "--name", "own", *FAST))
    result = cli("infer", "--dit", str(dit.parent), "--lora", str(ours), "--save-latents", *FAST)
    assert_ok(result)
    out = cli_env.outputs / "infer" / "sports-on-Tiny-Text2World_post-trained"
    assert f"DiT: {dit} (tiny)" in result.stderr

    for stage in ("original", "lora"):
        meta = sidecar(out, stage)
        assert (meta["dit"], meta["dit_fingerprint"]) == (str(dit), base_fingerprint(dit))
        assert sidecar(cli_env.outputs / "infer" / "own", stage)["dit"] == str(own)
        assert (latents(out, stage) - latents(cli_env.outputs / "infer" / "own", stage)).abs().max() > 0.01  # another model
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["settings"]["dit"], plan["dit_fingerprint"]) == (str(dit), base_fingerprint(dit))
    gallery = (out / "index.html").read_text()
    assert f"Left: <span class=\"original\">DiT {dit} (fingerprint {base_fingerprint(dit)})" in gallery
    assert f"with LoRA {ours} x 1" in gallery


def a_run(outputs, checkpoints):
    """A finished tiny run as posttrain leaves it (config.yaml naming its base, an adapter at step 10)."""
    run_dir = outputs / "runs" / "shapes-lora"
    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir = "shapes-lora", "demo/shapes", str(run_dir)
    save_config(resolved(config), run_dir / "config.yaml")
    state, spec = a_lora(checkpoints, rank=4, scale=1.0, seed=0)
    cpu = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    checkpointer = Checkpointer(run_dir, cpu, spec, keep_states=1, metadata={"base": TINY_DIT})
    checkpointer.save(10, state, None, train_state={"step": 10}, rng_state={})
    return run_dir


def test_a_run_keeps_its_base_unless_dit_names_a_folder_under_the_checkpoints_root(cli_env, two_loras):
    checkpoints = cli_env.outputs.parent / "checkpoints"  # a root holding an official-style post-trained folder
    shutil.copytree(cli_env.checkpoints, checkpoints)
    post_trained = other_dit(checkpoints / "Cosmos-Predict1-Tiny-Text2World_post-trained", seed=3)
    a_run(cli_env.outputs, checkpoints)
    roots = ["--checkpoints-dir", str(checkpoints)]
    assert_ok(cli(*roots, "infer", "--run", "shapes-lora", "--stages", "original", *FAST))
    assert sidecar(cli_env.outputs / "infer" / "shapes-lora", "original")["dit"] == str(checkpoints / TINY_DIT)
    # with a --lora stacked on the run's adapter
    assert_ok(cli(*roots, "infer", "--run", "shapes-lora", "--dit", "Cosmos-Predict1-Tiny-Text2World_post-trained",
                  "--lora", f"{two_loras[0]}:0.5", *FAST))
    out = cli_env.outputs / "infer" / "shapes-lora+sports-on-Cosmos-Predict1-Tiny-Text2World_post-trained"
    assert {sidecar(out, stage)["dit"] for stage in ("original", "lora")} == {str(post_trained)}
    run_adapter = cli_env.outputs / "runs" / "shapes-lora" / "adapters" / "step_000010.safetensors"
    assert [(a["adapter"], a["weight"]) for a in sidecar(out, "lora")["adapters"]] == [(str(run_adapter), 1.0), (str(two_loras[0]), 0.5)]


# -- cache: a video is never reused from another checkpoint ---------------------------------------------

def test_a_checkpoint_rewritten_in_place_makes_its_videos_again_and_another_one_is_refused(cli_env, tmp_path):
    dit = other_dit(tmp_path / "ckpt", seed=1)
    args = ["infer", "--dit", str(dit), "--stages", "original", "--name", "same", *FAST]
    assert_ok(cli(*args))
    assert "1 jobs, 1 finished before, 0 videos written" in cli(*args).stderr
    first = sidecar(cli_env.outputs / "infer" / "same", "original")

    other_dit(tmp_path / "ckpt", seed=2)  # another model at the same path (as a second `merge --out` writes)
    result = cli(*args)
    assert_ok(result)
    assert "1 jobs, 0 finished before, 1 videos written" in result.stderr
    assert sidecar(cli_env.outputs / "infer" / "same", "original")["dit_fingerprint"] != first["dit_fingerprint"]

    # another path into the same folder would mix models: refused, with the fix
    elsewhere = other_dit(tmp_path / "ckpt2", seed=1)
    assert_user_error(cli("infer", "--dit", str(elsewhere), "--stages", "original", "--name", "same", *FAST),
                      "made with other settings", f"dit {dit} -> {elsewhere}", "--overwrite")


# -- user errors: one line, before any model loads -------------------------------------------------------

def test_a_lora_that_does_not_fit_the_chosen_checkpoint_is_one_line_naming_dit(cli_env, two_loras, tmp_path):
    ours, _ = two_loras
    wider = other_dit(tmp_path / "tiny14b", size="tiny14b")  # 5 heads, 3 blocks: the 14B's shape at test scale
    result = cli("infer", "--dit", str(wider), "--lora", str(ours), *FAST)
    assert_user_error(result, str(ours), "does not fit the base model", str(wider), "--dit")
    assert not (cli_env.outputs / "infer").exists()


@pytest.mark.parametrize("args, phrases", [
    (["--lora", "{ours}:half"], ["--lora", "'half' is not a number", "FILE:WEIGHT"]),
    (["--lora", "{ours}:inf"], ["the weight inf is not a finite number"]),
    (["--lora", "{tmp}/missing.safetensors:0.5"], ["No LoRA file at", "missing.safetensors"]),
    (["--lora", "{tmp}/missing.safetensors:abc"], ["No LoRA file at", "missing.safetensors:abc"]),
    (["--dit", "nowhere"], ["No DiT checkpoint at nowhere nor at"]),
    (["--dit", "{tmp}"], ["holds no model.pt"]),
    (["--dit", "{ours}"], ["is not a Cosmos-Predict1 DiT checkpoint"]),
    (["--dit", "{lora_checkpoint}"], ["holds LoRA tensors", "--lora FILE"]),
    (["--dit", "{dit}", "--model", "tiny"], ["--dit names the checkpoint", "give only one"]),
])
def test_dit_and_lora_user_errors(cli_env, two_loras, tmp_path, fixtures_dir, args, phrases):
    ours, _ = two_loras
    dit = other_dit(tmp_path / "d")
    lora_checkpoint = tmp_path / "post_trained.pt"  # an official LoRA post-trained checkpoint: base + LoRA
    torch.save({"model": torch.load(fixtures_dir / "dit_tiny_lora_native.pt", weights_only=True)}, lora_checkpoint)
    args = [a.format(ours=ours, tmp=tmp_path, dit=dit, lora_checkpoint=lora_checkpoint) for a in args]
    assert_user_error(cli("infer", *args, *FAST), *phrases)
    assert not (cli_env.outputs / "infer").exists()


@pytest.mark.parametrize("item, expected", [
    ("a.safetensors", ("a.safetensors", None)),
    ("a.safetensors:0.5", ("a.safetensors", 0.5)),
    ("a.safetensors:-1e-1", ("a.safetensors", -0.1)),
    (r"C:\loras\a.safetensors", (r"C:\loras\a.safetensors", None)),  # Windows-style: no number after the ':'
    (r"C:\loras\a.safetensors:2", (r"C:\loras\a.safetensors", 2.0)),
    ("runs:v2/a.safetensors", ("runs:v2/a.safetensors", None)),
])
def test_file_weight_splits_at_the_last_colon_only_before_a_number(item, expected):
    path, weight = parse_weighted(item, "--lora")
    assert (str(path), weight) == expected
