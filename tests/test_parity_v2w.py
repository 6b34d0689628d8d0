"""Our Video2World stack against tensors produced by the official cosmos-predict1 code (float32, CPU).

Fixtures: `tests/fixtures/cosmos_predict1_v2w/` (override with COSMOS_LORA_FIXTURES_V2W); their README
documents every tensor and suggests the tolerances used here: atol 2e-5 for the network and the loss,
5e-5 for sampled latents (1e-4 for the 35-step run), LoRA gradients to 1e-4 of their largest value.
"""

import pytest
import torch
from safetensors.torch import load_file

from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.edm import TrainingCondition, training_loss
from cosmos_lora.model.lora import add_lora, from_official, load_lora_state, lora_parameters, official_to_ours
from cosmos_lora.model.sampler import INIT_NOISE_SIGMA, FrameCondition, augment_noise, sample_latents
from test_parity_official import ATOL, ATOL_SAMPLE, assert_close  # the same tolerances as the Text2World fixtures


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


@pytest.mark.parametrize("run", ["steps5_cond1", "steps5_cond2", "steps5_cond2_aug0.1", "steps35_cond1"])
def test_conditioned_sampling_matches_official(base, v2w_fixtures_dir, run):
    ref = load_file(v2w_fixtures_dir / "v2w_sample_tiny.safetensors")
    steps = ref[f"{run}.timesteps_c_noise"].shape[0]
    seed, shape = int(ref[f"{run}.augment_noise_seed"]), ref["inputs.condition_latent"].shape
    noise = augment_noise(seed, shape)
    assert torch.equal(noise, ref[f"{run}.augment_noise"])  # numpy's RandomState draw, bit for bit
    condition = FrameCondition(
        latent=ref["inputs.condition_latent"], frames=int(ref[f"{run}.num_condition_t"]),
        augment_sigma=float(ref[f"{run}.augment_sigma"]), augment_noise=noise,
    )
    assert torch.equal(condition.mask(), ref[f"{run}.condition_video_input_mask"])
    cond = dict(crossattn_emb=ref["inputs.t5_text_embeddings"], fps=ref["inputs.fps"], padding_mask=ref["inputs.padding_mask"])
    released = [not condition.active(s) for s in ref[f"{run}.sigmas"][:-1].tolist()]
    assert released == [not bool(ind.any()) for ind in ref[f"{run}.step_indicator"]]
    x0_preds, states = [], []
    latents = sample_latents(
        base[0], noise=ref[f"{run}.x_init"] / INIT_NOISE_SIGMA, cond=cond,
        uncond={**cond, "crossattn_emb": ref["inputs.neg_t5_text_embeddings"]}, steps=steps,
        guidance=float(ref["inputs.guidance"]), on_step=lambda i, x0, x: (x0_preds.append(x0), states.append(x)),
        condition=condition,
    )
    atol = 1e-4 if steps == 35 else ATOL_SAMPLE
    assert_close(torch.stack(x0_preds), ref[f"{run}.x0_pred"], atol=atol)
    assert_close(torch.stack(states), ref[f"{run}.latents_after_step"], atol=atol)
    assert_close(latents, ref[f"{run}.final_latent"], atol=atol)


@pytest.mark.parametrize("variant", ["base", "lora"])
@pytest.mark.parametrize("case", ["n0", "n1", "n2"])
def test_v2w_training_loss_matches_official(base, lora_net, v2w_fixtures_dir, variant, case):
    ref = load_file(v2w_fixtures_dir / "v2w_loss_tiny.safetensors")
    net, logvar = base if variant == "base" else lora_net
    key = f"{variant}.{case}"
    sigma = ref["inputs.base_sigma"] * ref["inputs.video_noise_multiplier"]
    assert_close(sigma, ref[f"{key}.sigma"])
    frames = TrainingCondition(int(ref[f"{key}.num_condition_t"]), ref[f"{key}.augment_sigma"], ref["inputs.augment_noise"])
    inputs = {}
    hook = net.register_forward_pre_hook(lambda module, args, kwargs: inputs.update(kwargs), with_kwargs=True)
    try:
        result = training_loss(
            net, logvar, ref["inputs.x0"], sigma, ref["inputs.epsilon"], frames,
            crossattn_emb=ref["inputs.t5_text_embeddings"], fps=ref["inputs.fps"], padding_mask=ref["inputs.padding_mask"],
        )
    finally:
        hook.remove()
    assert torch.equal(inputs["condition_mask"], ref[f"{key}.condition_video_input_mask"])
    assert_close(inputs["x"], ref[f"{key}.net_in_x"])
    assert_close(result.x_t, ref[f"{key}.xt"])
    assert_close(result.x0_pred, ref[f"{key}.x0_pred"])
    assert_close(result.logvar, ref[f"{key}.logvar"])
    assert_close(result.edm_loss, ref[f"{key}.edm_loss"])
    assert_close(result.kendall_loss, ref[f"{key}.kendall_loss"])
    assert_close(result.loss.reshape(1), ref[f"{key}.loss_reduce_mean"])
    if frames.frames:  # zero MSE on the condition frames, which still count in the mean
        assert not result.edm_loss[:, :, : frames.frames].any() and result.kendall_loss.shape[1] == 16 * 4 * 8 * 8
    if variant == "lora":
        params = lora_parameters(net)
        grads = dict(zip(params, torch.autograd.grad(result.loss, list(params.values()))))
        prefix = f"{key}.grad_loss_reduce_mean."
        expected = {k.removeprefix(prefix): v for k, v in ref.items() if k.startswith(prefix)}
        assert len(expected) == len(grads) == 16
        for official_key, grad in expected.items():
            ours = grads[official_to_ours(official_key).replace(".weight", ".default.weight")]
            torch.testing.assert_close(ours, grad, atol=1e-4 * grad.abs().max().item(), rtol=0)
