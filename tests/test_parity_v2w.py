"""Our Video2World stack against tensors produced by the official cosmos-predict1 code (float32, CPU).

Fixtures: `tests/fixtures/cosmos_predict1_v2w/` (override with COSMOS_LORA_FIXTURES_V2W); their README
documents every tensor and suggests the tolerances used here: atol 2e-5 for the network and the loss,
5e-5 for sampled latents (1e-4 for the 35-step run), LoRA gradients to 1e-4 of their largest value.
"""

import pytest
import torch
from safetensors.torch import load_file

from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.lora import add_lora, from_official, load_lora_state

ATOL = 2e-5


def assert_close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def base(v2w_fixtures_dir):
    net, logvar = load_official_dit(v2w_fixtures_dir / "v2w_tiny_native.pt")
    return net.eval(), logvar


@pytest.fixture(scope="module")
def lora_net(v2w_fixtures_dir):
    path = v2w_fixtures_dir / "v2w_tiny_lora_native.pt"
    net, logvar = load_official_dit(path)
    state, spec = from_official(torch.load(path, weights_only=True), scale=1.5)
    add_lora(net, spec)
    load_lora_state(net, state)
    return net.eval(), logvar


def network_inputs(io, case):
    return dict(
        x=io[f"{case}.x"], timesteps=io[f"{case}.timesteps"], crossattn_emb=io[f"{case}.crossattn_emb"],
        fps=io[f"{case}.fps"], padding_mask=io[f"{case}.padding_mask"],
        condition_mask=io[f"{case}.condition_video_input_mask"],
    )


def test_the_checkpoint_is_read_as_video2world(base):
    net = base[0]
    assert net.video2world and net.patch_embed.proj.weight.shape == (64, 72)


@pytest.mark.parametrize("case", ["case1", "case2", "case3", "case4"])  # 1, 2, 2 (max size), 0 condition frames
def test_v2w_forward_matches_official(base, v2w_fixtures_dir, case):
    io = load_file(v2w_fixtures_dir / "v2w_tiny_io.safetensors")
    with torch.no_grad():
        out = base[0](**network_inputs(io, case))
    assert_close(out, io[f"{case}.out"])


def test_the_condition_mask_channel_matters(base, v2w_fixtures_dir):
    """Dropping the mask (zeros = no condition) changes the output: the channel is really wired in."""
    io = load_file(v2w_fixtures_dir / "v2w_tiny_io.safetensors")
    inputs = network_inputs(io, "case2")
    with torch.no_grad():
        unmasked = base[0](**{**inputs, "condition_mask": None})
    assert (unmasked - io["case2.out"]).abs().max() > 0.1


@pytest.mark.parametrize("case", ["case1", "case2", "case3", "case4"])
def test_v2w_lora_forward_matches_official(lora_net, v2w_fixtures_dir, case):
    ref = load_file(v2w_fixtures_dir / "v2w_tiny_lora_io.safetensors")
    inputs = network_inputs(load_file(v2w_fixtures_dir / "v2w_tiny_io.safetensors"), case)
    net = lora_net[0]
    with torch.no_grad():
        assert_close(net(**inputs), ref[f"{case}.out_lora"])
        net.disable_adapters()
        try:
            assert_close(net(**inputs), ref[f"{case}.out_base"])
        finally:
            net.enable_adapters()
