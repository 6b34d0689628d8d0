"""Cosmos-Predict1-14B-Text2World at test scale: what differs from the 7B, checked against the official code's
definitions (there are no 14B fixtures).

The 14B differs from the 7B in size (width 5120 = 40 heads x 128, 36 blocks) and in its RoPE: the official
14B configs set `rope_{h,w,t}_extrapolation_ratio=2.0` where the 7B has (h, w, t) = (1, 1, 2). `tiny14b` has
those differences at test scale: 5 heads (tiny: 2), 3 blocks (tiny: 2), RoPE scale 2 on every axis.
"""

import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.config import load_preset
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.dit import build_dit, configure_blocks
from cosmos_lora.model.lora import add_lora, lora_parameters, read_adapter, spec_for
from cosmos_lora.model.sizes import DIT_SIZES, size_from_state_dict
from cosmos_lora.model.tiny import write_tiny_dit

TINY14B_DIT = "cosmos-lora-tiny/Cosmos-Predict1-Tiny14B-Text2World/model.pt"
MERGED_14B_DIR = "Cosmos-Predict1-14B-Text2World_post-trained"


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def official_rope(head_dim: int, ratios_hwt: tuple[float, float, float], thw: tuple[int, int, int], fps: float):
    """cos/sin of the official `VideoRopePosition3DEmb` (cosmos-predict1 986b31a), written out here: head dim split
    h/w/t = d//6*2, d//6*2, rest; NTK factor ratio**(d/(d-2)) per axis; temporal positions scaled by 24/fps;
    angles concatenated [t, h, w] twice over the (t, h, w) token order."""
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    t, h, w = thw

    def angles(positions, dim, ratio):
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        return torch.outer(positions, 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    at = angles(torch.arange(t).float() / fps * 24, dim_t, ratios_hwt[2])[:, None, None].expand(t, h, w, -1)
    ah = angles(torch.arange(h).float(), dim_h, ratios_hwt[0])[None, :, None].expand(t, h, w, -1)
    aw = angles(torch.arange(w).float(), dim_h, ratios_hwt[1])[None, None, :].expand(t, h, w, -1)
    freqs = torch.cat([at, ah, aw] * 2, dim=-1).reshape(t * h * w, -1)
    return freqs.cos(), freqs.sin()


# -- the architecture --------------------------------------------------------------------------------

def test_14b_size_is_the_official_one():
    size = DIT_SIZES["14b"]  # REFERENCE.md: width 5120, 40 heads, 36 blocks; head 128 as the 7B
    assert (size.width, size.num_attention_heads, size.attention_head_dim, size.num_layers) == (5120, 40, 128, 36)
    assert size.rope_scale == (2.0, 2.0, 2.0) and DIT_SIZES["7b"].rope_scale == (2.0, 1.0, 1.0)  # diffusers order (t, h, w)
    net = build_dit("14b", device="meta")
    assert sum(p.numel() for p in net.parameters()) == 14_267_149_312  # + the r8 LoRA's 10.6M: the 14.28B


@pytest.mark.parametrize("size, ratios_hwt", [("14b", (2.0, 2.0, 2.0)), ("tiny14b", (2.0, 2.0, 2.0)), ("7b", (1.0, 1.0, 2.0))])
def test_rope_is_the_official_scaled_rope(size, ratios_hwt):
    rope = build_dit(size, device="meta").rope  # no tensors: it computes on the input's device
    latent = torch.zeros(1, 16, 3, 8, 12)  # 3 x 4 x 6 tokens
    cos, sin = rope(latent, fps=30.0)
    expected_cos, expected_sin = official_rope(DIT_SIZES[size].attention_head_dim, ratios_hwt, (3, 4, 6), fps=30.0)
    torch.testing.assert_close(cos, expected_cos, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin, expected_sin, atol=1e-6, rtol=1e-6)
    if size == "14b":  # the scaling is really applied: the 7B's ratios give other angles
        assert not torch.allclose(cos, official_rope(128, (1.0, 1.0, 2.0), (3, 4, 6), fps=30.0)[0])


def test_size_and_rope_are_read_from_a_tiny14b_official_checkpoint(tmp_path):
    write_tiny_dit(tmp_path / "model.pt", size="tiny14b")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert size_from_state_dict(state) == DIT_SIZES["tiny14b"]
    net, _ = load_official_dit(tmp_path / "model.pt")
    assert len(net.transformer_blocks) == 3 and net.transformer_blocks[0].attn1.heads == 5
    assert net.rope.h_ntk_factor == net.rope.w_ntk_factor == 2.0 ** (10 / 8)  # head 32: h/w dims 10, t dim 12
    assert net.rope.t_ntk_factor == 2.0 ** (12 / 10)
    inputs = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.3]), crossattn_emb=torch.randn(1, 5, 32), fps=24.0)
    with torch.no_grad():
        out = net(**inputs)
        net.rope.h_ntk_factor = net.rope.w_ntk_factor = 1.0  # the 7B's spatial RoPE
        assert not torch.allclose(out, net(**inputs))  # the forward uses the scaled RoPE


def test_14b_lora_spec_covers_all_36_blocks_with_the_official_count():
    net = build_dit("14b", device="meta")
    spec = spec_for(len(net.transformer_blocks), rank=8, scale=1.0)
    assert spec.blocks == tuple(range(36))
    add_lora(net, spec)
    params = lora_parameters(net)
    blocks = {int(name.split(".")[1]) for name in params}
    assert blocks == set(range(36))
    modules = {name.split(".lora_")[0].split(".", 2)[2] for name in params}
    assert modules == {"attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v"}
    # per block: three 5120->5120 projections and the cross-attention value 1024->5120, rank 8 each
    assert sum(p.numel() for p in params.values()) == 36 * (3 * 8 * (5120 + 5120) + 8 * (1024 + 5120)) == 10_616_832


# -- memory plan: self-attention kept in the first N recomputed blocks only ---------------------------

class _SelfAttentionCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)  # attention forwards (recomputation runs them again in backward), q and k of equal length
        if "scaled_dot_product" in name and "backward" not in name and args[0].shape[-2] == args[1].shape[-2]:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("keep, recomputed_attention", [(None, 0), (1, 2), (0, 3)])
def test_keep_attention_blocks_recomputes_self_attention_in_the_other_blocks(keep, recomputed_attention):
    torch.manual_seed(0)
    net = build_dit("tiny14b")
    add_lora(net, spec_for(3, rank=2, scale=1.0), seed=0)
    inputs = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.3]), crossattn_emb=torch.randn(1, 5, 32))

    def loss_and_grads(count=None):
        for p in net.parameters():
            p.grad = None
        loss = net(**inputs).square().mean()
        if count is None:
            loss.backward()
        else:
            with count:
                loss.backward()
        return loss.detach(), [p.grad.clone() for p in lora_parameters(net).values()]

    plain = loss_and_grads()
    assert configure_blocks(net, recompute_fraction=1.0, keep_self_attention=True, keep_attention_blocks=keep) == 3
    count = _SelfAttentionCount()
    configured = loss_and_grads(count)
    assert count.count == recomputed_attention  # blocks past N run their self-attention again in backward
    assert torch.equal(plain[0], configured[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], configured[1]))


# -- the preset and the CLI --------------------------------------------------------------------------

def test_14b_preset_is_the_7b_recipe_with_the_14b_checkpoint_and_memory_plan():
    from omegaconf import OmegaConf

    seven, fourteen = (OmegaConf.to_container(load_preset(n)) for n in ("text2world_7b_lora", "text2world_14b_lora"))
    assert fourteen["model"]["dit"] == "Cosmos-Predict1-14B-Text2World/model.pt"  # the folder download fetches
    assert 0 <= fourteen["model"]["keep_attention_blocks"] < 36 and fourteen["model"]["activation_checkpointing"] == 1.0
    assert fourteen["model"]["lora"] == seven["model"]["lora"]  # rank 8, all blocks, FA+CA q/v
    for section in ("optimizer", "scheduler", "dataloader_train", "checkpoint", "job"):
        assert fourteen[section] == seven[section], section
    assert fourteen["trainer"]["ema"] == seven["trainer"]["ema"]
    assert fourteen["model"]["text_dropout"] == seven["model"]["text_dropout"] == 0.2


def test_posttrain_14b_dry_run_resolves_the_14b_config(cli_env):
    from cosmos_lora.hub.download import MODELS

    result = cli("posttrain", "--model", "14b", "--dataset", "demo/shapes", "--dry-run")
    # the resolved config is printed; the launch checks then list what this tiny world lacks for a 14B run
    assert result.exit_code == 1 and "No DiT checkpoint at" in result.stderr and "Traceback" not in result.output
    folder = next(r.folder for r in MODELS["14B-Text2World"] if r.repo.endswith("Predict1-14B-Text2World"))
    assert f"dit: {folder}/model.pt" in result.output
    assert "keep_attention_blocks:" in result.output and "first_blocks: null" in result.output
    assert "lr: 0.0001" in result.output
    assert not (cli_env.outputs / "runs").exists()


def test_infer_model_14b_uses_the_14b_checkpoint(cli_env):
    result = cli("infer", "--model", "14b", "--stages", "original", "--prompt", "a red circle")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Cosmos-Predict1-14B-Text2World/model.pt" in result.stderr


# -- a tiny14b run end to end: train, infer, export ---------------------------------------------------

@pytest.fixture
def tiny14b_run(cli_env, monkeypatch):
    """A 2-step run on the tiny14b DiT with 1 of 3 blocks keeping self-attention (the tiny world's T5 and tokenizer)."""
    checkpoints = cli_env.outputs.parent / "checkpoints14b"
    shutil.copytree(cli_env.checkpoints, checkpoints)
    write_tiny_dit(checkpoints / TINY14B_DIT, size="tiny14b")
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(checkpoints))
    result = cli("posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--name", "t14", "--max-iter", "2",
                 "--save-every", "2", "--", f"model.dit={TINY14B_DIT}", "model.activation_checkpointing=1.0",
                 "model.keep_attention_blocks=1", "trainer.ema.enabled=false")
    assert_ok(result)
    return checkpoints


def test_tiny14b_trains_infers_at_its_size_and_exports_merged(tiny14b_run, cli_env, tmp_path):
    run_dir = cli_env.outputs / "runs" / "t14"
    adapter = next((run_dir / "adapters").glob("*.safetensors"))
    state, spec, _ = read_adapter(adapter)
    assert spec.blocks == (0, 1, 2)  # every block of the checkpoint, not the tiny preset's 2

    result = cli("infer", "--run", "t14", "--stages", "both", "--steps", "2", "--prompt", "a red circle", "--name", "t14")
    assert_ok(result)
    assert len(list((cli_env.outputs / "infer" / "t14").glob("*/*/seed_0.mp4"))) == 3  # original, lora, compare

    refused = cli("export", "--run", "t14", "--format", "official", "--out", str(tmp_path / "lora.pt"))
    assert refused.exit_code == 1 and "7B model only" in refused.stderr and "--merge" in refused.stderr
    assert not (tmp_path / "lora.pt").exists()

    out = tmp_path / "checkpoints" / MERGED_14B_DIR / "model.pt"
    result = cli("export", "--run", "t14", "--format", "official", "--merge", "--out", str(out))
    assert_ok(result)
    assert f"--diffusion_transformer_dir {MERGED_14B_DIR}" in result.stderr
    merged, _ = load_official_dit(out)
    base, _ = load_official_dit(tiny14b_run / TINY14B_DIT)
    assert size_from_state_dict(torch.load(out, weights_only=True)) == DIT_SIZES["tiny14b"]
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for block in spec.blocks:
        for module in ("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v"):
            key = f"transformer_blocks.{block}.{module}"
            down, up = state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"]
            torch.testing.assert_close(merged_state[f"{key}.weight"], base_state[f"{key}.weight"] + spec.scale * up @ down)
