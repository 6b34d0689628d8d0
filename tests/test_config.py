"""Experiment configs: presets, CLI options and overrides, the saved tree, run names, dataset names."""

import pytest
import torch
from omegaconf import OmegaConf

from cosmos_lora.config import L, apply_overrides, instantiate, load_preset
from cosmos_lora.config.build import build_experiment
from cosmos_lora.config.run_name import format_lr, run_name
from cosmos_lora.distributed import Launch
from cosmos_lora.errors import UserError
from cosmos_lora.paths import Roots, check_dataset_name
from cosmos_lora.train.launch import prepare_run_dir


def test_lazy_call_builds_later_and_stays_editable():
    node = L(torch.optim.AdamW)(lr=1e-4, betas=[0.9, 0.99])
    node.lr = 5e-5
    optimizer = instantiate(node, params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 5e-5 and tuple(optimizer.defaults["betas"]) == (0.9, 0.99)


def test_7b_preset_carries_the_official_defaults():
    config = load_preset("text2world_7b_lora")
    assert set(config) == {"job", "model", "trainer", "optimizer", "scheduler", "dataloader_train", "checkpoint"}
    assert config.optimizer._target_ == "torch.optim.adamw.AdamW"
    assert (config.optimizer.lr, config.optimizer.weight_decay, list(config.optimizer.betas), config.optimizer.eps) == (
        1e-4, 0.1, [0.9, 0.99], 1e-10)
    assert config.trainer.grad_clip == 1.0 and config.model.text_dropout == 0.2 and config.trainer.ema.enabled
    assert (config.model.lora.rank, config.model.lora.scale, config.model.lora.first_blocks) == (8, 1.0, None)
    assert (config.model.num_frames, list(config.model.resolution)) == (121, [704, 1280])


def test_tiny_preset_only_changes_sizes_and_speed():
    seven, tiny = load_preset("text2world_7b_lora"), load_preset("tiny_lora")
    assert tiny.model.dit.startswith("cosmos-lora-tiny/")
    assert tiny.optimizer.weight_decay == seven.optimizer.weight_decay and tiny.model.lora.scale == seven.model.lora.scale


def test_overrides_set_existing_keys_and_refuse_typos():
    config = load_preset("tiny_lora")
    apply_overrides(config, ["optimizer.lr=5e-5", "model.lora.extra_targets=[k, out]", "trainer.ema.enabled=false"])
    assert config.optimizer.lr == 5e-5 and list(config.model.lora.extra_targets) == ["k", "out"]
    assert config.trainer.ema.enabled is False
    with pytest.raises(UserError, match="Unknown config key 'optimiser.lr'"):
        apply_overrides(config, ["optimiser.lr=1"])
    with pytest.raises(UserError, match="not key=value"):
        apply_overrides(config, ["optimizer.lr"])


def _build(roots, **options):
    overrides = options.pop("overrides", [])
    return build_experiment(options.pop("source", "tiny_lora"), roots, "demo/shapes", options, overrides,
                            options.pop("name", None), Launch(1))


def test_experiment_resolves_paths_interpolations_and_the_run_folder(tmp_path):
    roots = Roots(tmp_path / "ck", tmp_path / "ds", tmp_path / "out")
    config = _build(roots, **{"model.lora.rank": 16, "optimizer.lr": 1.5e-4}, overrides=["model.num_frames=9"])
    assert config.dataloader_train.dataset.root == str(tmp_path / "ds" / "demo" / "shapes")
    assert config.dataloader_train.dataset.num_frames == 9  # `${model.num_frames}` resolved after the override
    assert config.job.run_dir == str(tmp_path / "out" / "runs" / "demo-shapes_r16_iter40_bs1_accum1_scale1_lr1.5e-04_seed0")


def test_saved_config_reruns_to_the_same_tree(tmp_path):
    roots = Roots(tmp_path / "ck", tmp_path / "ds", tmp_path / "out")
    config = _build(roots, **{"model.lora.scale": 2.0})
    run_dir = prepare_run_dir(config, resume=False)
    again = _build(roots, source=str(run_dir / "config.yaml"))
    assert OmegaConf.to_container(again) == OmegaConf.to_container(config)
    with pytest.raises(UserError, match="exists already"):
        prepare_run_dir(again, resume=False)
    assert prepare_run_dir(again, resume=True) == run_dir
    renamed = _build(roots, source=str(run_dir / "config.yaml"), name="second")
    assert renamed.job.run_dir.endswith("runs/second") and renamed.model.lora.scale == 2.0


def test_epochs_compute_optimizer_steps_from_the_dataset(roots):
    config = build_experiment("tiny_lora", roots, "demo/shapes", {"trainer.epochs": 3, "trainer.grad_accum": 2}, [], None, Launch(2))
    assert config.trainer.max_iter == 3 * (8 // (2 * 1 * 2))  # 8 clips / (2 processes x batch 1 x accum 2) = 2 steps/epoch


def test_lr_is_written_exactly_in_run_names():
    assert format_lr(1e-4) == "1e-04" and format_lr(1.5e-4) == "1.5e-04" and format_lr(1.25e-4) == "1.25e-04"
    names = {run_name("vript/sports", 8, 100, 1, 4, 1.5, lr, 0) for lr in (1.1e-4, 1.2e-4)}
    assert len(names) == 2
    assert run_name("vript/sports", 16, 1000, 2, 4, 2.0, 2e-4, 7) == "vript-sports_r16_iter1000_bs2_accum4_scale2_lr2e-04_seed7"


@pytest.mark.parametrize("bad", ["../sports", "/abs/path", "vript/../../x", "", "..", "\\\\server\\share"])
def test_dataset_names_cannot_escape_the_root(bad):
    with pytest.raises(UserError, match="inside the datasets folder"):
        check_dataset_name(bad)


def test_dataset_names_are_normalised():
    assert check_dataset_name("vript/sports") == "vript/sports"
    assert check_dataset_name("vript//sports/") == check_dataset_name("./vript/sports") == "vript/sports"
    assert Roots.from_env("c", "d", "o").dataset("panda70m/vehicle").as_posix() == "d/panda70m/vehicle"
