"""Training reads the latent cache that `embed --latents` writes, and learns exactly the same from it."""

import torch
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.distributed import Distributed
from cosmos_lora.model.tiny import TINY_TOKENIZER
from cosmos_lora.config.build import build_experiment
from cosmos_lora.distributed import Launch
from cosmos_lora.train.checks import check_inputs
from cosmos_lora.train.launch import prepare_run_dir
from cosmos_lora.train.trainer import Trainer


def _train_two_steps(config) -> dict[str, torch.Tensor]:
    prepare_run_dir(config, resume=False)
    trainer = Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))
    trainer._start_data()
    for _ in range(2):
        trainer.train_step()
        trainer.step += 1
    trainer.close()
    return {k: v.detach().clone() for k, v in trainer.params.items()}


def test_training_on_cached_latents_equals_training_on_videos(cli_env):
    overrides = []
    plain = build_experiment("tiny_lora", cli_env, "demo/shapes", {}, overrides, "plain", Launch(1))
    assert plain.dataloader_train.dataset.latents_dir is None
    result = CliRunner().invoke(app, [
        "embed", "--dataset", "demo/shapes", "--latents", "--tokenizer", str(cli_env.checkpoints / TINY_TOKENIZER),
        "--frames", "17", "--resolution", "64", "64", "--pixel-chunk", "17", "--nproc", "1",
    ])
    assert result.exit_code == 0, result.output
    cached = build_experiment("tiny_lora", cli_env, "demo/shapes", {}, overrides, "cached", Launch(1))
    assert cached.dataloader_train.dataset.latents_dir is not None
    check_inputs(cached)
    from_videos, from_latents = _train_two_steps(plain), _train_two_steps(cached)
    sample = Trainer(cached, Distributed(0, 0, 1, torch.device("cpu"))).dataset[0]
    assert "latent" in sample and "video" not in sample
    for name, tensor in from_videos.items():
        torch.testing.assert_close(from_latents[name], tensor, atol=1e-6, rtol=1e-5)
    off = build_experiment("tiny_lora", cli_env, "demo/shapes", {"model.latent_cache": False}, overrides, "off", Launch(1))
    assert off.dataloader_train.dataset.latents_dir is None
