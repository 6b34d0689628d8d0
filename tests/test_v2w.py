"""Video2World beside Text2World: the variant is read off the checkpoint, the tiny V2W model, and the
errors a user meets (parity with the official code is in test_parity_v2w.py)."""

import json

import pytest
import torch

from cosmos_lora.model.checkpoint import load_official_dit, official_state_dict
from cosmos_lora.model.dit import DIT_SIZES, build_dit, size_from_state_dict
from cosmos_lora.model.edm import LogVarHead


def test_the_7b_video2world_layout_is_the_7b_with_a_72_wide_patch_embedding(fixtures_dir):
    layout = json.loads((fixtures_dir / "dit7b_keys.json").read_text())["keys"]
    state = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    assert size_from_state_dict(state) == DIT_SIZES["7b"]
    state["net.x_embedder.proj.1.weight"] = torch.empty(4096, 72, device="meta")
    assert size_from_state_dict(state) == DIT_SIZES["7b-v2w"]
    net = build_dit("7b-v2w", device="meta")
    assert net.video2world and net.patch_embed.proj.weight.shape == (4096, 72)
    state["net.x_embedder.proj.1.weight"] = torch.empty(4096, 76, device="meta")
    with pytest.raises(ValueError, match="neither Text2World"):
        size_from_state_dict(state)


def test_tiny_v2w_round_trips_and_a_t2w_net_refuses_a_condition_mask(tmp_path):
    torch.manual_seed(0)
    net = build_dit("tiny-v2w")
    torch.save(official_state_dict(net, LogVarHead()), tmp_path / "model.pt")
    loaded, _ = load_official_dit(tmp_path / "model.pt")
    assert loaded.video2world and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    x = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.1]), crossattn_emb=torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="Text2World DiT"):
        build_dit("tiny")(**x, condition_mask=torch.ones(1, 1, 2, 8, 8))
