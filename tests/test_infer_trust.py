"""Results mean what they say (issue 14): infer outputs tied to what made them, no black videos with
exit 0, foreign adapters at their real strength, exports that never overwrite an input, published
files readable as the umask allows. Everything through the CLI on the tiny world, 2 denoising steps.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from cosmos_lora.config import load_preset, resolved, save_config
from cosmos_lora.data.video import read_video
from cosmos_lora.distributed import Distributed
from cosmos_lora.model import adapter_files as adapters
from cosmos_lora.model.prompts import prompt_folder
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.lora import add_lora, load_lora_state, lora_state_dict, save_adapter, spec_for
from cosmos_lora.model.tiny import TINY_DIT
from cosmos_lora.train.checkpointer import Checkpointer

from cli_helpers import assert_ok, assert_user_error, cli

FAST = ["--steps", "2"]
TARGETS = ["attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v"]  # the official q/v targets
RUN, STEP = "trust-run", 10




def frames_of(path) -> np.ndarray:
    return read_video(path)[0].astype(int)


def trained_state(checkpoints, rank: int = 4, seed: int = 0):
    """(tensors, spec) of a LoRA on the tiny DiT with non-zero up matrices, as training leaves them."""
    net, _ = load_official_dit(checkpoints / TINY_DIT)
    spec = spec_for(len(net.transformer_blocks), rank=rank, scale=1.0)
    add_lora(net, spec, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=generator) for k, v in lora_state_dict(net).items()}
    return state, spec


def make_run(cli_env, state, spec) -> "Path":
    run_dir = cli_env.outputs / "runs" / RUN
    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir = RUN, "demo/shapes", str(run_dir)
    save_config(resolved(config), run_dir / "config.yaml")
    cpu = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    Checkpointer(run_dir, cpu, spec, keep_states=1, metadata={"base": TINY_DIT}).save(
        STEP, state, {k: 0.9 * v for k, v in state.items()}, train_state={"step": STEP}, rng_state={},
    )
    return run_dir


def peft_folder(checkpoints, folder, r: int = 4, lora_alpha: int = 8, **patterns):
    """What PEFT's own `save_pretrained` writes for a LoRA on the tiny DiT (up matrices made non-zero)."""
    net, _ = load_official_dit(checkpoints / TINY_DIT)
    model = get_peft_model(net, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=TARGETS, init_lora_weights="gaussian", **patterns))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder)
    return model


# -- 1. colliding infer outputs ---------------------------------------------------------------------

def test_prompts_that_differ_late_or_have_no_ascii_letters_never_share_a_folder(cli_env):
    long = "a red square slides slowly from the left edge of the frame to the right edge"
    pairs = [(long + " and stops", long + " and bounces"), ("赤い四角が動く", "青い丸が跳ねる"), ("🟥", "🔵")]
    for first, second in pairs:
        for text in (first, second):
            result = cli("infer", "--model", "tiny", "--stages", "original", "--name", "shared", "-p", text, *FAST)
            assert_ok(result)
            assert "0 finished before, 1 videos written" in result.stderr  # never the other prompt's video
            video_dir = cli_env.outputs / "infer" / "shared" / "original" / prompt_folder(text)
            assert (video_dir / "prompt.txt").read_text() == text + "\n"
            assert json.loads((video_dir / "seed_0.json").read_text())["prompt"] == text
    folders = {p.name for p in (cli_env.outputs / "infer" / "shared" / "original").iterdir()}
    assert len(folders) == 6 and all(name.strip("-") for name in folders)


def test_a_video_made_from_anything_else_is_redone_not_reported_finished(cli_env, tmp_path):
    state, spec = trained_state(cli_env.checkpoints)
    lora = tmp_path / "style.safetensors"
    save_adapter(lora, state, spec)
    args = ["infer", "--model", "tiny", "--lora", str(lora), "--name", "same", "-p", "a red square", *FAST]
    assert_ok(cli(*args))
    lora_dir = cli_env.outputs / "infer" / "same" / "lora" / prompt_folder("a red square")
    first = frames_of(lora_dir / "seed_0.mp4")
    assert "1 finished before, 0 videos written" in cli(*args).stderr

    # another negative prompt: both stages redone, the sidecar records the new one
    result = cli(*args, "--negative-prompt", "blurry")
    assert_ok(result)
    assert "0 finished before, 2 videos written" in result.stderr
    assert json.loads((lora_dir / "seed_0.json").read_text())["negative_prompt"] == "blurry"

    # another adapter saved at the same path: the job is redone
    save_adapter(lora, {k: 2 * v if ".lora_B." in k else v for k, v in state.items()}, spec)
    result = cli(*args, "--negative-prompt", "blurry")
    assert_ok(result)
    assert "0 finished before, 2 videos written" in result.stderr
    assert np.abs(frames_of(lora_dir / "seed_0.mp4") - first).mean() > 1
    assert json.loads((lora_dir / "seed_0.json").read_text())["adapters"][0]["adapter_sha256"] == adapters.from_file(lora).sha256


# -- 2. no all-black videos with exit 0 -------------------------------------------------------------

@pytest.mark.parametrize("extra, phrases", [
    (["--guidance", "nan"], ["--guidance nan"]),
    (["--guidance", "-inf"], ["--guidance -inf"]),
    (["--fps", "0"], ["--fps 0.0 is not a frame rate"]),
    (["--fps", "-24"], ["--fps -24.0"]),
    (["--fps", "inf"], ["--fps inf"]),
    (["--steps", "1000000"], ["--steps 1000000"]),
    (["--lora-scale", "nan"], ["--lora-scale nan"]),
    (["--nan-adapter"], ["holds non-finite numbers", "lora_B"]),
])
def test_non_finite_adapters_and_out_of_range_options_are_refused_before_writing(cli_env, tmp_path, extra, phrases):
    state, spec = trained_state(cli_env.checkpoints)
    if extra == ["--nan-adapter"]:
        key = next(k for k in state if ".lora_B." in k)
        state[key][0, 0], extra = float("nan"), []
    save_adapter(tmp_path / "lora.safetensors", state, spec)
    assert_user_error(cli("infer", "--model", "tiny", "--lora", str(tmp_path / "lora.safetensors"), "-p", "x", *FAST, *extra), *phrases)
    assert not (cli_env.outputs / "infer").exists()


def test_a_nan_adapter_is_refused_by_export_and_merge_too(cli_env, tmp_path):
    state, spec = trained_state(cli_env.checkpoints)
    state[next(k for k in state if ".lora_B." in k)][0, 0] = float("inf")
    make_run(cli_env, state, spec)
    assert_user_error(cli("export", "--run", RUN, "--no-ema", "--format", "comfyui", "--out", str(tmp_path / "c.safetensors")), "non-finite")
    raw = cli_env.outputs / "runs" / RUN / "adapters" / f"step_{STEP:06d}.safetensors"
    assert_user_error(cli("merge", "--base", str(cli_env.checkpoints / TINY_DIT), "-a", str(raw), "--out", str(tmp_path / "m.pt")), "non-finite")
    assert not (tmp_path / "c.safetensors").exists() and not (tmp_path / "m.pt").exists()


def test_a_sample_that_goes_non_finite_stops_its_video_with_one_line(cli_env, tmp_path):
    state, spec = trained_state(cli_env.checkpoints)
    save_adapter(tmp_path / "lora.safetensors", state, spec)
    # a finite but absurd strength: the sample overflows while denoising
    result = cli("infer", "--model", "tiny", "--lora", str(tmp_path / "lora.safetensors"), "--lora-scale", "1e30",
                 "-p", "a red square", *FAST)
    assert_user_error(result, "went NaN/inf while sampling", "--lora-scale")
    assert "lora video of" in result.stderr and "no video written" in result.stderr
    out = cli_env.outputs / "infer" / "lora" / prompt_folder("a red square")
    assert not out.exists() or not any(out.iterdir())  # no video, no sidecar
    original = cli_env.outputs / "infer" / "lora" / "original" / prompt_folder("a red square")
    assert (original / "seed_0.json").is_file()  # the base video is fine and kept
    assert not (cli_env.outputs / "infer" / "lora" / "compare").exists()


# -- 3. foreign adapters at their real strength -----------------------------------------------------

def test_a_peft_save_pretrained_adapter_is_applied_at_lora_alpha_over_r(cli_env, tmp_path):
    peft_folder(cli_env.checkpoints, tmp_path / "peft", r=4, lora_alpha=8)  # scale 2
    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    state = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    spec = spec_for(2, rank=4, scale=2.0)
    save_adapter(tmp_path / "ours.safetensors", state, spec)

    videos = {}
    for name, path in (("folder", tmp_path / "peft"), ("file", tmp_path / "peft" / "adapter_model.safetensors"), ("ours", tmp_path / "ours.safetensors")):
        assert_ok(cli("infer", "--model", "tiny", "--lora", str(path), "--stages", "lora", "--name", name, "-p", "a red square", *FAST))
        lora_dir = cli_env.outputs / "infer" / name / "lora" / prompt_folder("a red square")
        [meta] = json.loads((lora_dir / "seed_0.json").read_text())["adapters"]
        assert meta["lora_scale"] == 2.0, meta
        videos[name] = frames_of(lora_dir / "seed_0.mp4")
    assert "adapter_config.json" in meta["lora_scale_origin"] or name == "ours"
    assert np.array_equal(videos["folder"], videos["ours"]) and np.array_equal(videos["file"], videos["ours"])


def test_per_module_alphas_and_ranks_are_folded_and_match_peft_itself(cli_env, fixtures_dir, tmp_path):
    model = peft_folder(cli_env.checkpoints, tmp_path / "peft", r=4, lora_alpha=4,
                        rank_pattern={"attn2.to_q": 2}, alpha_pattern={"attn2.to_v": 16, "attn2.to_q": 6})
    io = load_file(fixtures_dir / "dit_tiny_lora_io.safetensors")
    inputs = {k: io[f"case1.{k}"] for k in ("x", "timesteps", "crossattn_emb", "fps", "padding_mask")}
    with torch.no_grad():
        expected = model(**inputs)

    adapter = adapters.from_file(tmp_path / "peft")
    assert adapter.spec.scale == 1.0 and adapter.spec.rank == 4 and "folded" in adapter.scale_origin
    net, _ = load_official_dit(cli_env.checkpoints / TINY_DIT)
    add_lora(net, adapter.spec)
    load_lora_state(net, adapter.state)
    with torch.no_grad():
        torch.testing.assert_close(net(**inputs), expected, atol=1e-5, rtol=1e-5)

    result = cli("infer", "--model", "tiny", "--lora", str(tmp_path / "peft"), "--stages", "lora", "-p", "x", *FAST)
    assert_ok(result)
    assert "folded into the up matrices" in result.stderr


def test_a_file_whose_scale_cannot_be_known_needs_it_stated(cli_env, tmp_path):
    peft_folder(cli_env.checkpoints, tmp_path / "peft", r=4, lora_alpha=8)
    bare = tmp_path / "bare.safetensors"  # the weights without PEFT's config: alpha is gone
    shutil.copyfile(tmp_path / "peft" / "adapter_model.safetensors", bare)
    base = str(cli_env.checkpoints / TINY_DIT)

    assert_user_error(cli("infer", "--model", "tiny", "--lora", str(bare), "-p", "x", *FAST), "does not record its LoRA scale", "--lora-scale")
    assert_user_error(cli("merge", "--base", base, "-a", str(bare), "--out", str(tmp_path / "m.pt")), "does not record its LoRA scale", "FILE:S")
    assert not (cli_env.outputs / "infer").exists() and not (tmp_path / "m.pt").exists()

    assert_ok(cli("infer", "--model", "tiny", "--lora", str(bare), "--lora-scale", "2", "--stages", "lora", "-p", "x", *FAST))
    [meta] = json.loads((cli_env.outputs / "infer" / "bare" / "lora" / prompt_folder("x") / "seed_0.json").read_text())["adapters"]
    assert (meta["lora_scale"], meta["lora_scale_origin"]) == (2.0, "--lora-scale (the file records none)")

    # merge reads the same scales: the PEFT file at alpha / r = 2 equals the bare file stated at 2
    assert_ok(cli("merge", "--base", base, "-a", str(tmp_path / "peft" / "adapter_model.safetensors"), "--out", str(tmp_path / "peft.pt")))
    assert_ok(cli("merge", "--base", base, "-a", f"{bare}:2", "--out", str(tmp_path / "bare.pt")))
    merged_peft, merged_bare = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("peft", "bare"))
    base_state = torch.load(base, weights_only=True)
    changed = [k for k in base_state if not torch.equal(base_state[k], merged_peft[k])]
    assert changed and all(torch.equal(merged_peft[k], merged_bare[k]) for k in merged_peft)


# -- 4. export and merge never write over an input --------------------------------------------------

def test_export_and_merge_refuse_to_write_over_any_input(cli_env, tmp_path):
    state, spec = trained_state(cli_env.checkpoints)
    run_dir = make_run(cli_env, state, spec)
    ema = run_dir / "adapters" / f"step_{STEP:06d}.ema.safetensors"
    raw = run_dir / "adapters" / f"step_{STEP:06d}.safetensors"
    official = tmp_path / "official.pt"
    assert_ok(cli("export", "--run", RUN, "--format", "official", "--out", str(official)))
    before = {p: p.read_bytes() for p in (ema, raw, official)}

    for fmt, out, phrase in (("diffusers", ema, "is the adapter itself"), ("comfyui", raw, f"is a file of {run_dir}")):
        assert_user_error(cli("export", "--run", RUN, "--format", fmt, "--out", str(out)), phrase)
    base = str(cli_env.checkpoints / TINY_DIT)
    assert_user_error(cli("merge", "--base", base, "-a", str(official), "--out", str(official)), "is the adapter", "itself")
    assert all(p.read_bytes() == data for p, data in before.items())


# -- 5. published files follow the umask ------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_adapters_and_exports_are_readable_as_the_umask_allows(cli_env, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        state, spec = trained_state(cli_env.checkpoints)
        run_dir = make_run(cli_env, state, spec)
        for fmt in ("diffusers", "comfyui"):
            assert_ok(cli("export", "--run", RUN, "--format", fmt, "--out", str(tmp_path / f"{fmt}.safetensors")))
        files = [*(run_dir / "adapters").glob("*.safetensors"), *tmp_path.glob("*.safetensors")]
    finally:
        os.umask(previous)
    assert len(files) == 4
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(mode)}
