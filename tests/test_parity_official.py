"""Our model stack against tensors produced by the official cosmos-predict1 code (float32, CPU).

Fixtures: `tests/fixtures/cosmos_predict1/` (override with COSMOS_LORA_FIXTURES); their README
documents every tensor. Tolerances are the README's: atol 2e-5 for the network and the loss,
5e-5 for sampled latents.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.edm import training_loss
from cosmos_lora.model.lora import add_lora, from_official, lora_parameters, load_lora_state, official_to_ours
from cosmos_lora.model.sampler import INIT_NOISE_SIGMA, karras_sigmas, sample_latents
from cosmos_lora.model.tokenizer import VideoTokenizer

ATOL = 2e-5
ATOL_SAMPLE = 5e-5


def assert_close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def base(fixtures_dir):
    net, logvar = load_official_dit(fixtures_dir / "dit_tiny_native.pt")
    return net.eval(), logvar


@pytest.fixture(scope="module")
def lora_net(fixtures_dir):
    net, logvar = load_official_dit(fixtures_dir / "dit_tiny_lora_native.pt")
    official = torch.load(fixtures_dir / "dit_tiny_lora_native.pt", weights_only=True)
    state, spec = from_official(official, scale=1.5)
    add_lora(net, spec)
    load_lora_state(net, state)
    return net.eval(), logvar


def network_inputs(io, case):
    return dict(
        x=io[f"{case}.x"],
        timesteps=io[f"{case}.timesteps"],
        crossattn_emb=io[f"{case}.crossattn_emb"],
        fps=io[f"{case}.fps"],
        padding_mask=io[f"{case}.padding_mask"],
    )


@pytest.mark.parametrize("case", ["case1", "case2", "case3"])
def test_dit_forward_matches_official(base, fixtures_dir, case):
    io = load_file(fixtures_dir / "dit_tiny_io.safetensors")
    with torch.no_grad():
        out = base[0](**network_inputs(io, case))
    assert_close(out, io[f"{case}.out"])


def test_dit_block_outputs_match_official_intermediates(base, fixtures_dir):
    io = load_file(fixtures_dir / "dit_tiny_io.safetensors")
    ref = load_file(fixtures_dir / "dit_tiny_intermediates_case1.safetensors")
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in base[0].transformer_blocks]
    with torch.no_grad():
        base[0](**network_inputs(io, "case1"))
    for hook in hooks:
        hook.remove()
    for index, ours in enumerate(outputs):
        official = ref[f"block{index}_out_T_H_W_B_D"]  # [T, H, W, B, D]
        assert_close(ours, official.permute(3, 0, 1, 2, 4).flatten(1, 3))


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_lora_forward_matches_official(lora_net, fixtures_dir, case):
    io = load_file(fixtures_dir / "dit_tiny_lora_io.safetensors")
    net = lora_net[0]
    with torch.no_grad():
        assert_close(net(**network_inputs(io, case)), io[f"{case}.out_lora"])
        net.disable_adapters()
        try:
            assert_close(net(**network_inputs(io, case)), io[f"{case}.out_base"])
        finally:
            net.enable_adapters()


def test_sigma_schedule_matches_official(fixtures_dir):
    ref = json.loads((fixtures_dir / "sampler_sigmas_35.json").read_text())
    assert_close(karras_sigmas(35), torch.tensor(ref["sigmas"]), atol=0)
    assert INIT_NOISE_SIGMA == pytest.approx(ref["init_noise_sigma"], abs=1e-12)


@pytest.mark.parametrize("run", ["steps5_negprompt", "steps35_negprompt", "steps5_noneg"])
def test_sampling_matches_official(base, fixtures_dir, run):
    ref = load_file(fixtures_dir / "sample_tiny.safetensors")
    steps = ref[f"{run}.timesteps_c_noise"].shape[0]
    cond = dict(crossattn_emb=ref["inputs.t5_text_embeddings"], fps=ref["inputs.fps"], padding_mask=ref["inputs.padding_mask"])
    negative = ref["inputs.neg_t5_text_embeddings"] if "negprompt" in run else torch.zeros_like(cond["crossattn_emb"])
    x0_preds = []
    latents = sample_latents(
        base[0],
        noise=ref[f"{run}.x_init"] / INIT_NOISE_SIGMA,
        cond=cond,
        uncond={**cond, "crossattn_emb": negative},
        steps=steps,
        guidance=float(ref["inputs.guidance"]),
        on_step=lambda i, x0, x: x0_preds.append(x0),
    )
    assert_close(karras_sigmas(steps), ref[f"{run}.sigmas"], atol=0)
    assert_close(torch.stack(x0_preds), ref[f"{run}.x0_pred"], atol=ATOL_SAMPLE)
    assert_close(latents, ref[f"{run}.final_latent"], atol=ATOL_SAMPLE)


@pytest.mark.parametrize("variant", ["base", "lora"])
def test_training_loss_matches_official(base, lora_net, fixtures_dir, variant):
    ref = load_file(fixtures_dir / "loss_tiny.safetensors")
    net, logvar = base if variant == "base" else lora_net
    result = training_loss(
        net, logvar, ref["x0"], ref["sigma"], ref["epsilon"],
        crossattn_emb=ref["inputs.t5_text_embeddings"], fps=ref["inputs.fps"], padding_mask=ref["inputs.padding_mask"],
    )
    assert_close(result.x_t, ref[f"{variant}.xt"])
    assert_close(result.x0_pred, ref[f"{variant}.x0_pred"])
    assert_close(result.logvar, ref[f"{variant}.logvar"])
    assert_close(result.edm_loss, ref[f"{variant}.edm_loss"])
    assert_close(result.kendall_loss, ref[f"{variant}.kendall_loss"])
    assert_close(result.loss.reshape(1), ref[f"{variant}.loss_reduce_mean"])
    if variant == "lora":
        params = lora_parameters(net)
        grads = torch.autograd.grad(result.loss, list(params.values()))
        ours = dict(zip(params, grads))
        prefix = "lora.grad_loss_reduce_mean."
        expected = {k.removeprefix(prefix): v for k, v in ref.items() if k.startswith(prefix)}
        assert len(expected) == len(ours) == 16
        for official_key, grad in expected.items():
            name = official_to_ours(official_key).replace(".weight", ".default.weight")
            assert_close(ours[name], grad)


BF16_ULPS = 2


def assert_close_bf16(actual, expected):
    """bf16 outputs agree to a couple of bf16 steps at the tensor's largest magnitude.

    bf16 keeps 8 significant bits (eps = 2**-7), and CPUs differ in how they round and accumulate
    (vector width, fused multiply-add), so one intermediate rounded the other way moves the result by
    one bf16 step of that intermediate's size: 4.9e-4 on values near 0.25 was seen. That step scales
    with the tensor's magnitude, not with each element (an element near zero inherits the error of
    its larger neighbours), so the tolerance is BF16_ULPS * eps * max|expected|. A real bug (a wrong
    layer, a lost normalisation) moves values by a sizeable fraction of that magnitude.
    """
    expected = expected.float()
    atol = BF16_ULPS * torch.finfo(torch.bfloat16).eps * expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tokenizer_matches_official(fixtures_dir, precision):
    ref = load_file(fixtures_dir / "tokenizer_tiny" / "reference_io.safetensors")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokenizer = VideoTokenizer(fixtures_dir / "tokenizer_tiny", dtype=dtype)
    video_latent = tokenizer.encode(ref["video_in"])
    image_latent = tokenizer.encode(ref["image_in"])
    assert video_latent.shape == (1, 16, 16, 2, 2)
    close = assert_close if precision == "fp32" else assert_close_bf16
    close(video_latent, ref[f"{precision}.video_latent_normalized"])
    close(tokenizer.decode(ref[f"{precision}.video_latent_normalized"]), ref[f"{precision}.video_decoded"])
    close(image_latent, ref[f"{precision}.image_latent_normalized"])
    close(tokenizer.decode(ref[f"{precision}.image_latent_normalized"]), ref[f"{precision}.image_decoded"])
    if precision == "fp32":
        assert_close(tokenizer.encoder(ref["video_in"])[0], ref["fp32.video_latent_raw_encoder_out0"])
