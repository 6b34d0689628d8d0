"""Key map coverage for the real 7B layout, checkpoint round trips, LoRA spec and format round trips."""

import json

import pytest
import torch

from cosmos_lora.errors import UserError
from cosmos_lora.model.checkpoint import load_official_dit, official_state_dict, official_to_diffusers
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.lora import (
    LoraSpec, add_lora, from_official, load_lora_state, lora_state_dict, read_adapter, save_adapter, spec_for,
    to_official,
)
from cosmos_lora.model.sizes import DIT_SIZES, size_from_state_dict


def test_every_official_7b_key_maps_onto_the_meta_7b(fixtures_dir):
    layout = json.loads((fixtures_dir / "dit7b_keys.json").read_text())
    net = build_dit("7b", device="meta")
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    mapped = {}
    for key, shape in layout["keys"].items():
        target = official_to_diffusers(key)
        assert target == layout["diffusers_key_map"][key], key
        if target is not None:
            mapped[target] = tuple(shape)
    assert mapped == ours  # identical shapes, nothing left over on either side
    assert sum(v.numel() for v in net.parameters()) == layout["num_net_parameters"]
    meta_state = {k: torch.empty(v, device="meta") for k, v in layout["keys"].items()}
    assert size_from_state_dict(meta_state) == DIT_SIZES["7b"]


def test_14b_sizes_are_read_from_the_state_dict():
    net = build_dit("14b", device="meta")
    state = official_state_dict(net, LogVarHead())
    assert size_from_state_dict(state) == DIT_SIZES["14b"]


def test_official_save_then_load_is_exact(tmp_path):
    torch.manual_seed(0)
    net, logvar = build_dit("tiny"), LogVarHead()
    torch.save(official_state_dict(net, logvar), tmp_path / "model.pt")
    loaded, loaded_logvar = load_official_dit(tmp_path / "model.pt")
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(logvar.linear.weight, loaded_logvar.linear.weight)


def test_loading_a_checkpoint_with_missing_keys_names_them(tmp_path):
    state = official_state_dict(build_dit("tiny"), LogVarHead())
    del state["net.final_layer.linear.weight"]
    state["net.something_else"] = torch.zeros(1)
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"1 missing \(proj_out.weight\), 1 unexpected \(net.something_else\)"):
        load_official_dit(tmp_path / "model.pt")


def test_post_trained_nested_checkpoint_loads(tmp_path, fixtures_dir):
    flat = torch.load(fixtures_dir / "dit_tiny_lora_native.pt", weights_only=True)
    ema = {k.replace(".", "-"): v * 2 for k, v in flat.items() if "_lora." in k}
    torch.save({"model": flat, "ema": ema}, tmp_path / "iter_000000100_model.pt")
    net, _ = load_official_dit(tmp_path / "iter_000000100_model.pt")
    state, spec = from_official(torch.load(tmp_path / "iter_000000100_model.pt", weights_only=True), scale=1.5)
    assert spec == LoraSpec(rank=4, scale=1.5, blocks=(0, 1))
    key = "net.blocks.block1.blocks.1.block.attn.to_v_lora.net.0.weight"
    assert torch.equal(state["transformer_blocks.1.attn2.to_v.lora_A.weight"], flat[key] * 2)  # EMA wins


def _lora_net(spec, seed=0):
    torch.manual_seed(seed)
    net = build_dit("tiny")
    add_lora(net, spec, seed=seed)
    for p in net.parameters():
        if p.requires_grad:
            p.data.normal_()  # a trained-looking adapter (peft starts `up` at zero)
    return net


def test_lora_trains_only_lora_tensors_with_the_configured_shape():
    spec = spec_for(num_blocks=2, rank=3, scale=2.0, first_blocks=1, extra=("k",))
    net = _lora_net(spec)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"transformer_blocks.0.{t}.lora_{ab}.default.weight" for t in spec.targets for ab in "AB"}
    state = lora_state_dict(net)
    assert state["transformer_blocks.0.attn2.to_v.lora_A.weight"].shape == (3, 32)  # text dim 32 -> rank 3


def test_lora_scale_multiplies_the_delta():
    x = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.1]), crossattn_emb=torch.randn(1, 5, 32))
    outs = {}
    for scale in (1.0, 2.0):
        net = _lora_net(LoraSpec(rank=2, scale=scale, blocks=(0, 1)))
        with torch.no_grad():
            outs[scale] = net(**x)
            net.disable_adapters()
            outs["base"] = net(**x)
    assert not torch.allclose(outs[1.0], outs["base"])
    assert not torch.allclose(outs[1.0], outs[2.0])


def test_adapter_file_round_trips_exactly_in_our_and_the_official_format(tmp_path):
    spec = LoraSpec(rank=4, scale=1.5, blocks=(0, 1))
    net = _lora_net(spec)
    state = lora_state_dict(net)
    save_adapter(tmp_path / "a.safetensors", state, spec, {"step": 7})
    read_state, read_spec, metadata = read_adapter(tmp_path / "a.safetensors")
    assert read_spec == spec and metadata["step"] == "7"
    assert all(torch.equal(state[k], read_state[k]) for k in state)
    official_state, official_spec = from_official(to_official(read_state), scale=1.5)
    assert official_spec == spec
    assert all(torch.equal(state[k], official_state[k]) for k in state)
    fresh = _lora_net(spec, seed=1)
    load_lora_state(fresh, official_state)
    assert all(torch.equal(state[k], v) for k, v in lora_state_dict(fresh).items())


def test_adapter_with_a_rank_other_than_its_spec_is_refused(tmp_path):
    spec = LoraSpec(rank=4, scale=1.0, blocks=(0, 1))
    state = lora_state_dict(_lora_net(spec))
    save_adapter(tmp_path / "a.safetensors", state, LoraSpec(rank=8, scale=1.0, blocks=(0, 1)))
    with pytest.raises(UserError, match="rank 4, the spec says 8"):
        read_adapter(tmp_path / "a.safetensors")


def test_t5_embeddings_hold_only_the_real_tokens_and_round_trip_the_official_pickle(tiny_world, tmp_path):
    import numpy as np

    from cosmos_lora.data.embeddings import pad_embedding, read_t5_embedding, write_t5_embedding
    from cosmos_lora.model.text_encoder import T5TextEncoder
    from cosmos_lora.model.tiny import TINY_T5

    encoder = T5TextEncoder(tiny_world.checkpoints / TINY_T5, dtype=torch.float32)
    prompts = ["a red square", "a yellow circle moves from top to bottom on a black background"]
    embeddings = encoder.encode(prompts)
    lengths = [len(encoder.tokenizer(p).input_ids) for p in prompts]
    assert [e.shape for e in embeddings] == [(n, 32) for n in lengths]
    alone = encoder.encode(prompts[:1])[0]
    np.testing.assert_allclose(alone, embeddings[0], atol=1e-5)  # padding in the batch does not leak in
    write_t5_embedding(tmp_path / "a.pickle", embeddings[1])
    stored = read_t5_embedding(tmp_path / "a.pickle")
    assert stored.dtype == np.float16 and stored.shape == embeddings[1].shape
    padded, mask = pad_embedding(stored)
    assert padded.shape == (512, 32) and int(mask.sum()) == lengths[1] and not padded[lengths[1]:].any()


@pytest.mark.parametrize("setting", [
    dict(recompute_fraction=1.0, keep_self_attention=True),
    dict(recompute_fraction=1.0, keep_self_attention=False),
    dict(recompute_fraction=0.5, keep_self_attention=True),
])
def test_block_settings_change_speed_and_memory_not_results(setting):
    from cosmos_lora.model.dit import configure_blocks, reset_blocks

    spec = LoraSpec(rank=2, scale=1.0, blocks=(0, 1))
    net = _lora_net(spec)
    inputs = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.3]), crossattn_emb=torch.randn(1, 5, 32))

    def loss_and_grads():
        for p in net.parameters():
            p.grad = None
        loss = net(**inputs).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters() if p.requires_grad]

    names = [n for n, _ in net.named_parameters()]
    plain = loss_and_grads()
    assert configure_blocks(net, **setting) == round(2 * setting["recompute_fraction"])
    configured = loss_and_grads()
    assert [n for n, _ in net.named_parameters()] == names  # LoRA and checkpoint keys unchanged
    assert torch.equal(plain[0], configured[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], configured[1]))
    reset_blocks(net)
    assert "forward" not in net.transformer_blocks[0].__dict__


def test_switching_adapters_off_gives_the_base_exactly_and_compiles_nothing_again():
    """`infer --stages both` switches the LoRA off and on between videos: by value (AdapterSwitch), so compiled
    blocks keep their one graph (peft's disable_adapters is a flag torch.compile guards on: a second
    compilation, about 10 s at 7B), with the base network's output exactly when off and peft's when on."""
    from torch._dynamo.utils import counters

    from cosmos_lora.model.lora import AdapterSwitch

    net = _lora_net(LoraSpec(rank=2, scale=2.0, blocks=(0, 1))).to(torch.bfloat16)
    inputs = dict(x=torch.randn(2, 16, 2, 8, 8, dtype=torch.bfloat16), timesteps=torch.tensor([0.1, 0.2]),
                  crossattn_emb=torch.randn(2, 5, 32, dtype=torch.bfloat16))
    with torch.no_grad():
        with_lora = net(**inputs)
        net.disable_adapters()
        base = net(**inputs)
        net.enable_adapters()
    assert not torch.equal(with_lora, base)
    switch = AdapterSwitch(net)
    for block in net.transformer_blocks:  # as configure_blocks compiles them on GPUs (aot_eager: CPU, no compiler)
        block.forward = torch.compile(block.forward, backend="aot_eager", dynamic=False)
    outputs, graphs = [], counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for on in (False, True, False, True):
            switch(on)
            outputs.append(net(**inputs))
    assert counters["stats"]["unique_graphs"] - graphs == 1  # one graph for every block and both states
    assert torch.equal(outputs[0], base) and torch.equal(outputs[2], base)
    assert torch.equal(outputs[1], with_lora) and torch.equal(outputs[3], with_lora)
