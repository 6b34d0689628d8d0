"""`cosmos-lora export` and `merge` on the tiny model: every format back into our model, diffusers' own loader,
the official fixture's LoRA output, merged weights, streaming memory, and one-line user errors.

Runs are made by the trainer's own `Checkpointer`; adapters have random non-zero up-matrices so they
change the output as much as training does.
"""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cosmos_lora.config import load_preset, resolved, save_config
from cosmos_lora.distributed import Distributed
from cosmos_lora.errors import UserError
from cosmos_lora.model import adapter_files
from cosmos_lora.model.checkpoint import base_fingerprint, diffusers_to_official, load_official_dit
from cosmos_lora.model.lora import (
    LoraSpec, OFFICIAL_TARGETS, add_lora, adapter_summary, from_official, load_lora_state, lora_state_dict,
    save_adapter, spec_for, to_official,
)
from cosmos_lora.model.lora_formats import to_official_inference
from cosmos_lora.model.tiny import TINY_DIT
from cosmos_lora.train.checkpointer import Checkpointer

from cli_helpers import assert_ok, assert_user_error, cli

STEP = 10
LORA_DIR = "Cosmos-Predict1-7B-Text2World_post-trained-lora"
MERGED_DIR = "Cosmos-Predict1-7B-Text2World_post-trained"
CPU = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


# -- helpers ----------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_file(fixtures_dir / "dit_tiny_lora_io.safetensors")


def inputs(io, case: str = "case1") -> dict:
    return {k: io[f"{case}.{k}"] for k in ("x", "timesteps", "crossattn_emb", "fps", "padding_mask")}


def forward(net, io, case: str = "case1") -> torch.Tensor:
    with torch.no_grad():
        return net(**inputs(io, case))


def adapted(base, spec: LoraSpec, state=None, seed: int = 0):
    """(base net carrying the adapter, its tensors); random trained-looking tensors unless given."""
    net, _ = load_official_dit(base)
    add_lora(net, spec, seed=seed)
    if state is None:
        generator = torch.Generator().manual_seed(seed + 1)
        state = {k: torch.randn(v.shape, generator=generator) * (0.3 if ".lora_B." in k else 1.0)
                 for k, v in lora_state_dict(net).items()}
    load_lora_state(net, state)
    return net, state


def imported(base, path):
    """Our model with the adapter file read back through the importer `infer --lora` uses."""
    adapter = adapter_files.from_file(path)
    return adapted(base, adapter.spec, adapter.state)[0], adapter


def make_run(runs_dir, name: str, base, spec: LoraSpec, state: dict):
    """A run as posttrain leaves it: config.yaml, raw + EMA adapters at STEP (EMA = 0.5 x raw), latest.json."""
    run_dir = runs_dir / name
    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir = name, "demo/shapes", str(run_dir)
    save_config(resolved(config), run_dir / "config.yaml")
    checkpointer = Checkpointer(run_dir, CPU, spec, keep_states=1, metadata={"base_fingerprint": base_fingerprint(base), "base": TINY_DIT})
    checkpointer.save(STEP, {k: 2 * v for k, v in state.items()}, state, train_state={"step": STEP}, rng_state={})
    return run_dir


@pytest.fixture
def official_world(cli_env, fixtures_dir, monkeypatch):
    """Checkpoints whose tiny DiT is the fixtures' official base, and a run holding the fixtures' official LoRA."""
    checkpoints = cli_env.outputs.parent / "official_checkpoints"
    (checkpoints / TINY_DIT).parent.mkdir(parents=True)
    shutil.copyfile(fixtures_dir / "dit_tiny_native.pt", checkpoints / TINY_DIT)
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(checkpoints))
    state, spec = from_official(torch.load(fixtures_dir / "dit_tiny_lora_native.pt", weights_only=True), scale=1.5)
    make_run(cli_env.outputs / "runs", "official-lora", checkpoints / TINY_DIT, spec, state)
    return checkpoints / TINY_DIT


# -- 1. every format back into our model ------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_comfyui_and_diffusers_exports_import_back_to_the_same_outputs(cli_env, io, tmp_path, scale):
    base = cli_env.checkpoints / TINY_DIT
    spec = spec_for(2, rank=4, scale=scale, extra=("k", "out", "mlp"))  # every target, MLP included
    net, state = adapted(base, spec)
    make_run(cli_env.outputs / "runs", "extra", base, spec, state)
    expected = forward(net, io)

    assert_ok(cli("export", "--run", "extra", "--format", "comfyui", "--out", str(tmp_path / "c.safetensors")))
    comfy = load_file(tmp_path / "c.safetensors")
    assert comfy["diffusion_model.blocks.block1.blocks.2.block.layer2.lora_up.weight"].shape == (64, 4)  # official names
    assert float(comfy["diffusion_model.blocks.block0.blocks.1.block.attn.to_out.0.alpha"]) == scale * 4
    comfy_net, comfy_adapter = imported(base, tmp_path / "c.safetensors")
    assert comfy_adapter.spec == spec and torch.equal(forward(comfy_net, io), expected)  # alpha carries the scale: exact

    result = cli("export", "--run", "extra", "--format", "diffusers", "--out", str(tmp_path / "d.safetensors"))
    assert_ok(result)
    assert result.stdout.strip() == str(tmp_path / "d.safetensors")
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
        assert "transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight" in f.keys()
    assert config["transformer.r"] == config["transformer.lora_alpha"] == 4  # the scale is in the up matrices
    diffusers_net, diffusers_adapter = imported(base, tmp_path / "d.safetensors")
    assert diffusers_adapter.spec == LoraSpec(rank=4, scale=1.0, blocks=spec.blocks, targets=spec.targets)
    if scale == 1.0:
        assert torch.equal(forward(diffusers_net, io), expected)
    else:
        torch.testing.assert_close(forward(diffusers_net, io), expected, atol=1e-5, rtol=1e-5)  # fp32 rounding of scale * up


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_diffusers_export_loads_with_diffusers_own_load_lora_adapter(cli_env, io, tmp_path, scale):
    base = cli_env.checkpoints / TINY_DIT
    spec = spec_for(2, rank=4, scale=scale, extra=("k", "out", "mlp"))
    net, state = adapted(base, spec, seed=3)
    make_run(cli_env.outputs / "runs", "for-diffusers", base, spec, state)
    assert_ok(cli("export", "--run", "for-diffusers", "--format", "diffusers", "--out", str(tmp_path / "d.safetensors")))

    fresh, _ = load_official_dit(base)  # CosmosDiT is a CosmosTransformer3DModel
    before = forward(fresh, io)
    fresh.load_lora_adapter(str(tmp_path / "d.safetensors"), prefix="transformer", adapter_name="exported")  # the plain call
    assert fresh.peft_config["exported"].r == 4
    after = forward(fresh, io)
    torch.testing.assert_close(after, forward(net, io), atol=1e-5, rtol=1e-5)
    assert (after - before).abs().max() > 0.1  # the LoRA is really applied


def test_official_export_imports_back_exactly_and_prints_the_official_command(cli_env, io, tmp_path):
    base = cli_env.checkpoints / TINY_DIT
    spec = spec_for(2, rank=8, scale=1.0, extra=("k", "out"))  # the official inference's rank and scale
    net, state = adapted(base, spec)
    make_run(cli_env.outputs / "runs", "qkvo", base, spec, state)
    out = tmp_path / "checkpoints" / LORA_DIR / "model.pt"
    result = cli("export", "--run", "qkvo", "--format", "official", "--out", str(out))
    assert_ok(result)
    assert "ignores this adapter's attn1.to_k, attn2.to_k, attn1.to_out.0, attn2.to_out.0" in result.stderr  # stock official config: q/v only
    command = result.stderr.splitlines()[-1].strip()
    assert command.startswith("PYTHONPATH=$(pwd) python cosmos_predict1/diffusion/inference/text2world.py ")
    for part in (f"--checkpoint_dir {tmp_path / 'checkpoints'}", f"--diffusion_transformer_dir {LORA_DIR}",
                 "--disable_guardrail", "--disable_prompt_upsampler"):
        assert part in command

    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"model", "ema"}
    released = torch.load(base, weights_only=True)
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in released.items())  # the base, byte for byte
    assert "net-blocks-block1-blocks-1-block-attn-to_out_lora-net-1-weight" in checkpoint["ema"]
    assert torch.equal(checkpoint["model"]["net.blocks.block0.blocks.0.block.attn.to_k_lora.net.0.weight"],
                       state["transformer_blocks.0.attn1.to_k.lora_A.weight"])
    exported_net, adapter = imported(base, out)
    assert adapter.spec == spec and torch.equal(forward(exported_net, io), forward(net, io))


def test_official_export_reproduces_the_fixture_official_lora_output(official_world, io, tmp_path):
    out = tmp_path / "model.pt"
    result = cli("export", "--run", "official-lora", "--format", "official", "--out", str(out))
    assert_ok(result)
    assert f"mv {out} checkpoints/{LORA_DIR}/model.pt" in result.stderr  # not in an official folder yet
    net, adapter = imported(official_world, out)
    assert (adapter.spec.rank, adapter.spec.scale) == (8, 1.0)  # rank 4 zero-padded, scale 1.5 folded into `up`
    for case in ("case1", "case2"):
        torch.testing.assert_close(forward(net, io, case), io[f"{case}.out_lora"], atol=2e-5, rtol=1e-5)


# -- 2. merge ---------------------------------------------------------------------------------------

def test_export_merge_equals_base_plus_lora(official_world, io, tmp_path):
    out = tmp_path / "checkpoints" / MERGED_DIR / "model.pt"
    result = cli("export", "--run", "official-lora", "--format", "official", "--merge", "--out", str(out))
    assert_ok(result)
    assert f"--diffusion_transformer_dir {MERGED_DIR}" in result.stderr
    merged = torch.load(out, weights_only=True)
    assert not any("_lora" in k for k in merged)  # a plain checkpoint: no LoRA support needed
    net, _ = load_official_dit(out)
    for case in ("case1", "case2"):
        torch.testing.assert_close(forward(net, io, case), io[f"{case}.out_lora"], atol=2e-5, rtol=1e-5)


def test_merge_of_weighted_adapters_equals_the_weights_computed_here(cli_env, fixtures_dir, io, tmp_path):
    base = fixtures_dir / "dit_tiny_native.pt"
    ours_spec = spec_for(2, rank=2, scale=2.0, extra=("mlp",))
    _, ours = adapted(base, ours_spec, seed=5)
    save_adapter(tmp_path / "ours.safetensors", ours, ours_spec)
    official_file = fixtures_dir / "dit_tiny_lora_native.pt"  # official files carry no scale: 1 is assumed
    result = cli("merge", "--base", str(base), "-a", f"{tmp_path / 'ours.safetensors'}:0.5", "-a", f"{official_file}:-0.75",
                 "--out", str(tmp_path / "merged.pt"))
    assert_ok(result)
    assert "1 is assumed" in result.stderr and "12 weight matrices changed" in result.stderr  # 8 q/v (both) + 4 MLP

    released = torch.load(base, weights_only=True)
    expected = dict(released)  # W + weight * scale * up @ down, computed here
    official, official_spec = from_official(torch.load(official_file, weights_only=True), scale=1.0)
    for state, spec, factor in ((ours, ours_spec, 0.5 * 2.0), (official, official_spec, -0.75)):
        for module in spec.module_names():
            key = diffusers_to_official(f"{module}.weight")
            expected[key] = expected[key] + factor * state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    assert list(merged) == list(released)
    assert sum(not torch.equal(merged[k], v) for k, v in released.items()) == 12  # every other tensor untouched
    for key, tensor in expected.items():
        torch.testing.assert_close(merged[key], tensor, atol=1e-6, rtol=1e-6)
    torch.save(expected, tmp_path / "reference.pt")
    torch.testing.assert_close(forward(load_official_dit(tmp_path / "merged.pt")[0], io),
                               forward(load_official_dit(tmp_path / "reference.pt")[0], io), atol=1e-5, rtol=1e-5)


# -- 3. memory: streaming vs a naive load -----------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import re, sys, torch
    from pathlib import Path
    from cosmos_lora.model.lora import spec_for
    from cosmos_lora.model.merge import WeightedLora, lora_deltas, merge_checkpoint

    def status(key):
        return int(re.search(key + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    mode, base, out = sys.argv[1:]
    spec = spec_for(6, rank=8, scale=1.0)
    g = torch.Generator().manual_seed(0)
    lora = WeightedLora({f"{m}.lora_{ab}.weight": torch.randn((8, 1024) if ab == "A" else (1024, 8), generator=g)
                         for m in spec.module_names() for ab in "AB"}, spec)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    except OSError:
        pass
    before = status("VmRSS")
    if mode == "stream":
        merge_checkpoint(Path(base), [lora], Path(out))
    else:  # what a straightforward merge does: the whole checkpoint in memory
        state = torch.load(base, weights_only=True)
        for key, deltas in lora_deltas([lora]).items():
            weight = state[key].float()
            for up, down, factor in deltas:
                weight.addmm_(up, down, alpha=factor)
            state[key] = weight.to(state[key].dtype)
        torch.save(state, out)
    print(status("VmHWM") - before)
""")


def test_merge_streams_holding_far_less_than_a_naive_load(tmp_path):
    """A 250 MB bf16 base (width 1024, 6 blocks): the peak RSS growth of each approach, in fresh processes."""
    from cosmos_lora.model.checkpoint import official_state_dict
    from cosmos_lora.model.dit import build_dit
    from cosmos_lora.model.sizes import DiTSize
    from cosmos_lora.model.edm import LogVarHead

    meta = official_state_dict(build_dit(DiTSize(num_attention_heads=8, attention_head_dim=128, num_layers=6), device="meta"), LogVarHead())
    generator = torch.Generator().manual_seed(0)
    base = {k: (torch.randn(v.shape, generator=generator) * 0.02).bfloat16() if v.is_meta else v for k, v in meta.items()}
    torch.save(base, tmp_path / "base.pt")
    size = (tmp_path / "base.pt").stat().st_size
    growth, processes = {}, {}
    for mode in ("stream", "naive"):  # side by side: each reports its own process's peak
        processes[mode] = subprocess.Popen(
            [sys.executable, "-c", MEMORY_SCRIPT, mode, str(tmp_path / "base.pt"), str(tmp_path / f"{mode}.pt")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for mode, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-2000:]
        growth[mode] = int(stdout.split()[-1])
    assert growth["naive"] > 0.9 * size  # the naive merge holds the checkpoint
    assert growth["stream"] < 0.2 * size, growth  # ours: one 1024x1024 matrix at a time, plus bookkeeping
    streamed, naive = (torch.load(tmp_path / f"{m}.pt", weights_only=True, mmap=True) for m in ("stream", "naive"))
    assert list(streamed) == list(naive) and all(torch.equal(streamed[k], naive[k]) for k in naive)


# -- 4. model/lora.py: official names, summaries, hints ---------------------------------------------

def test_official_names_for_k_and_out_and_a_clear_refusal_for_mlp():
    spec = spec_for(2, rank=2, scale=1.0, extra=("k", "out"))
    state = {f"{m}.lora_{ab}.weight": torch.randn(2, 2) for m in spec.module_names() for ab in "AB"}
    official = to_official(state)
    assert "net.blocks.block1.blocks.1.block.attn.to_out_lora.net.1.weight" in official
    back, back_spec = from_official(official, scale=1.0)
    assert back_spec == spec and all(torch.equal(back[k], v) for k, v in state.items())
    with pytest.raises(UserError, match=r"cannot hold this adapter's ff.net.0.proj, ff.net.2 LoRA") as error:
        to_official_inference(state | {"transformer_blocks.0.ff.net.2.lora_A.weight": torch.zeros(2, 2)},
                              LoraSpec(rank=2, blocks=(0,), targets=OFFICIAL_TARGETS + ("ff.net.0.proj", "ff.net.2")))
    assert "--merge" in error.value.fix


def test_official_inference_form_pads_the_rank_folds_the_scale_and_names_block_27():
    spec = LoraSpec(rank=2, scale=1.5, blocks=tuple(range(28)))
    generator = torch.Generator().manual_seed(0)
    state = {f"{m}.lora_{ab}.weight": torch.randn((2, 6) if ab == "A" else (6, 2), generator=generator)
             for m in spec.module_names() for ab in "AB"}
    official, ignored = to_official_inference(state, spec)
    assert ignored == ["block 27"]  # official LoRA inference builds blocks 0-26
    down = official["net.blocks.block27.blocks.1.block.attn.to_v_lora.net.0.weight"]
    up = official["net.blocks.block27.blocks.1.block.attn.to_v_lora.net.1.weight"]
    assert down.shape == (8, 6) and up.shape == (6, 8) and not down[2:].any()
    a, b = state["transformer_blocks.27.attn2.to_v.lora_A.weight"], state["transformer_blocks.27.attn2.to_v.lora_B.weight"]
    torch.testing.assert_close(up @ down, 1.5 * b @ a)


def test_summary_lists_non_contiguous_blocks_and_official_error_has_a_fix(fixtures_dir):
    summary = adapter_summary(LoraSpec(rank=4, scale=2.0, blocks=(0, 1, 2, 3, 7, 9, 10)))
    assert "blocks 0-3, 7, 9-10," in summary
    with pytest.raises(UserError) as error:
        from_official(torch.load(fixtures_dir / "dit_tiny_native.pt", weights_only=True), scale=1.0, source="model.pt")
    assert "holds no official LoRA tensors" in error.value.problem and "LoRA post-trained checkpoint" in error.value.fix


# -- 5. user errors ---------------------------------------------------------------------------------

def test_help_shows_examples():
    for command in ("export", "merge", "runs"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Examples" in result.stdout and f"cosmos-lora {command}" in result.stdout


@pytest.fixture
def error_world(cli_env, fixtures_dir, tmp_path):
    base = cli_env.checkpoints / TINY_DIT
    for name, spec in (("qv", spec_for(2, 4, 1.0)), ("mlp", spec_for(2, 4, 1.0, extra=("mlp",))), ("r16", spec_for(2, 16, 1.0))):
        make_run(cli_env.outputs / "runs", name, base, spec, adapted(base, spec)[1])
    other = tmp_path / "other_base.pt"
    shutil.copyfile(fixtures_dir / "dit_tiny_native.pt", other)
    make_run(cli_env.outputs / "runs", "other-base", other, spec_for(2, 4, 1.0), adapted(base, spec_for(2, 4, 1.0))[1])
    wide = tmp_path / "wide.safetensors"
    save_adapter(wide, {k: torch.zeros(v.shape[0], 2 * v.shape[1]) if ".lora_A." in k else torch.zeros(2 * v.shape[0], v.shape[1])
                        for k, v in adapted(base, spec_for(2, 4, 1.0))[1].items()}, spec_for(2, 4, 1.0))
    return {"base": str(base), "lora_pt": str(fixtures_dir / "dit_tiny_lora_native.pt"), "wide": str(wide), "tmp": tmp_path}


@pytest.mark.parametrize("args, phrases", [
    (["export", "--run", "qv", "--format", "onnx", "--out", "{tmp}/x.onnx"], ["Unknown --format 'onnx'"]),
    (["export", "--run", "qv", "--format", "comfyui", "--merge", "--out", "{tmp}/x.safetensors"], ["--merge writes an official"]),
    (["export", "--run", "qv", "--format", "diffusers", "--out", "{tmp}/x.pt"], ["does not end in .safetensors"]),
    (["export", "--run", "nope", "--format", "comfyui", "--out", "{tmp}/x.safetensors"], ["No run 'nope'"]),
    (["export", "--run", "qv", "--step", "99", "--format", "comfyui", "--out", "{tmp}/x.safetensors"], ["no adapter for step 99"]),
    (["export", "--run", "mlp", "--format", "official", "--out", "{tmp}/x.pt"], ["cannot hold", "ff.net.0.proj, ff.net.2"]),
    (["export", "--run", "r16", "--format", "official", "--out", "{tmp}/x.pt"], ["rank 16", "rank-8 layers"]),
    (["export", "--run", "other-base", "--format", "official", "--merge", "--out", "{tmp}/x.pt"], ["trained on another base"]),
    (["merge", "--base", "{base}", "-a", "{lora_pt}:half", "--out", "{tmp}/x.pt"], ["'half' is not a number"]),
    (["merge", "--base", "{tmp}/missing.pt", "-a", "{lora_pt}", "--out", "{tmp}/x.pt"], ["No DiT checkpoint"]),
    (["merge", "--base", "{lora_pt}", "-a", "{lora_pt}", "--out", "{tmp}/x.pt"], ["holds LoRA tensors"]),
    (["merge", "--base", "{base}", "-a", "{wide}", "--out", "{tmp}/x.pt"], ["does not fit the base model"]),
    (["merge", "--base", "{base}", "-a", "{lora_pt}", "--out", "{base}"], ["is the base checkpoint itself"]),
    (["merge", "--base", "{base}", "-a", "{lora_pt}", "--out", "{tmp}/x.safetensors"], ["does not end in .pt"]),
])
def test_user_errors_exit_1_with_one_line_and_write_nothing(error_world, args, phrases):
    before = sorted(error_world["tmp"].iterdir())
    result = cli(*[a.format(**error_world) for a in args])
    assert_user_error(result, *phrases)
    assert sorted(error_world["tmp"].iterdir()) == before  # no output, no temporary file left
    assert re.search(r"Fix: \S", result.stderr)
