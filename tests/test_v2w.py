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


def _trainer(cli_env, name: str, overrides: dict | None = None):
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Distributed, Launch
    from cosmos_lora.train.checks import check_inputs
    from cosmos_lora.train.launch import prepare_run_dir
    from cosmos_lora.train.trainer import Trainer

    config = build_experiment("tiny_v2w_lora", cli_env, "demo/shapes", overrides or {}, [], name, Launch(1))
    check_inputs(config)
    prepare_run_dir(config, resume=False)
    return Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))


def test_v2w_training_gives_the_drawn_condition_frames_with_the_recipes_sigmas(cli_env):
    trainer = _trainer(cli_env, "v2w", {"model.video2world.condition_frames": [2]})
    seen = []
    hook = trainer.net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        trainer._start_data()
        before = {k: v.detach().clone() for k, v in trainer.params.items()}
        loss, _, _ = trainer.train_step()
    finally:
        hook.remove()
        trainer.close()
    assert torch.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in trainer.params.items())
    mask = seen[0]["condition_mask"]
    assert mask.shape == (1, 1, 3, 8, 8) and mask[:, :, :2].all() and not mask[:, :, 2:].any()
    sigma = torch.exp(4 * seen[0]["timesteps"].double())  # c_noise = ln(sigma) / 4
    first = torch.Generator().manual_seed(0 * 1_000_003)  # the trainer's noise generator, rank 0, seed 0
    torch.rand(1, generator=first)  # text dropout draw
    expected = 4.0 * torch.exp(torch.randn(1, generator=first, dtype=torch.float64))  # sigma_multiplier 4
    torch.testing.assert_close(sigma, expected, rtol=1e-5, atol=0)


def test_the_recipe_must_agree_with_the_checkpoint(cli_env):
    from cli_helpers import assert_user_error, cli
    from cosmos_lora.model.tiny import TINY_DIT, TINY_DIT_V2W

    wrong_dit = cli("posttrain", "--model", "tiny-v2w", "-d", "demo/shapes", "--dry-run", "--", f"model.dit={TINY_DIT}")
    assert_user_error(wrong_dit, "trains Video2World", "Text2World checkpoint")
    no_recipe = cli("posttrain", "--model", "tiny", "-d", "demo/shapes", "--dry-run", "--", f"model.dit={TINY_DIT_V2W}")
    assert_user_error(no_recipe, "is a Video2World checkpoint", "--model 7b-v2w")
    too_many = cli("posttrain", "--model", "tiny-v2w", "-d", "demo/shapes", "--dry-run", "--",
                   "model.video2world.condition_frames=[0,3]")
    assert_user_error(too_many, "condition_frames [0, 3]")
