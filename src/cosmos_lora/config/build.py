"""An experiment from the CLI: preset (or a run's saved config) + options + `key=value` overrides,
with the dataset, the roots and the run folder filled in, resolved into one tree.

What is built here is only checked for being a config; whether its files exist and its values make
sense for training is `train.checks`' job, before anything is launched.
"""

from pathlib import Path

from cosmos_lora.config.experiment import apply_overrides, load_preset, resolved
from cosmos_lora.config.lazy import LazyDict, check_targets
from cosmos_lora.config.run_name import run_name
from cosmos_lora.config.settings import check_settings, is_count, is_fraction, is_positive
from cosmos_lora.data.latents import LATENTS_DIR, latent_cache_dir
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.data.split import excluded_from_training, held_out_clips
from cosmos_lora.distributed import Launch
from cosmos_lora.errors import Problems, UserError
from cosmos_lora.paths import Roots, check_dataset_name


def build_experiment(
    source: str, roots: Roots, dataset: str | None, options: dict, overrides: list[str], name: str | None,
    launch: Launch, alpha: float | None = None, problems: Problems | None = None,
) -> LazyDict:
    """Preset (or saved config) + options + overrides, with the dataset, paths and run folder filled in.

    `launch`: the processes that will train (`--epochs` counts steps from them). `alpha` is peft's
    spelling of the LoRA multiplier: scale = alpha / rank. A run's saved config.yaml keeps naming
    that run, even when overrides change values its name was derived from.

    Every problem with the options, overrides and settings is found before any is reported: with
    `problems` they are added there (and the tree is returned as far as it could be built: without
    `job.run_dir` when a problem stood in the way), else they are raised as one UserError.
    """
    found = Problems() if problems is None else problems
    before = len(found.errors)
    config = load_preset(source)
    saved_run = Path(config.job.run_dir).name if config.job.get("run_dir") else None
    apply_overrides(config, {k: v for k, v in options.items() if v is not None}, found)
    apply_overrides(config, overrides, found)
    if alpha is not None:
        if is_positive(alpha) and is_count(config.model.lora.rank):
            config.model.lora.scale = alpha / config.model.lora.rank
        elif not is_positive(alpha):
            found.add(f"--alpha {alpha}: it must be a finite number > 0.", "use e.g. --alpha 16 (scale = alpha / rank).")
    if name is not None:
        config.job.name = name
    with found.check():
        dataset = check_dataset_name(dataset or config.job.dataset or _missing_dataset())
        config.job.dataset = dataset
        config.dataloader_train.dataset.root = str(roots.dataset(dataset))
        root = Path(config.dataloader_train.dataset.root)
        config.dataloader_train.dataset.latents_dir = _latent_cache(config, roots, root)
    if config.trainer.get("evaluation") is not None and config.dataloader_train.dataset.root is not None:
        # (runs saved before evaluation existed have no trainer.evaluation)
        with found.check():
            _choose_evaluation_clips(config, roots)
    config.model.checkpoints_dir = str(roots.checkpoints)
    config.job.runs_dir = str(roots.runs)
    if config.trainer.epochs is not None and config.dataloader_train.dataset.root is not None:
        with found.check():
            config.trainer.max_iter = _steps_for_epochs(config, launch.world_size)
    config = resolved(config)
    with found.check():  # whatever the preset or an override named: refused before the run folder is written
        check_targets(config)
    found.errors.extend(check_settings(config))
    if len(found.errors) == before:  # a name derived from valid settings, inside the runs folder
        config.job.run_dir = str(Path(config.job.runs_dir) / (config.job.name or saved_run or _derived_name(config)))
    if problems is None:
        found.raise_any()
    return config


def _latent_cache(config: LazyDict, roots: Roots, root: Path) -> str | None:
    """The latent cache of the dataset at `root` for exactly this tokenizer, size and frame count, if one was made."""
    tokenizer = roots.checkpoints / config.model.tokenizer
    if not config.model.latent_cache or not (root / LATENTS_DIR).is_dir() or not tokenizer.is_dir():
        return None  # no cache made; a missing tokenizer is reported by train.checks
    height, width = config.model.resolution
    cache = latent_cache_dir(
        root, tokenizer,
        config.model.num_frames, height, width, config.model.pixel_chunk_duration,
    )
    return str(cache) if cache.is_dir() else None


def _choose_evaluation_clips(config: LazyDict, roots: Roots) -> None:
    """Fills in `trainer.evaluation.clips` (and `root`, `latents_dir` for `--eval-dataset`): the clips of the
    evaluation loss. Chosen anew at every launch from the clip names, so a resume on a changed dataset is
    refused (the held-out clips differ) rather than silently training on clips it evaluated before."""
    evaluation = config.trainer.evaluation
    evaluation.root, evaluation.latents_dir, evaluation.clips = None, None, []
    if not is_count(config.trainer.eval_every):  # off (0), or a bad value check_settings names
        if evaluation.dataset is not None and config.trainer.eval_every == 0:
            raise UserError("--eval-dataset has no effect with --eval-every 0.", "give --eval-every N, or leave --eval-dataset out.")
        return
    if evaluation.dataset is not None:
        name = check_dataset_name(evaluation.dataset)
        if name == config.job.dataset:
            raise UserError(f"--eval-dataset {name} is the training dataset: its clips would be trained on.",
                            "give another dataset, or leave --eval-dataset out to hold out --eval-fraction of this one.")
        root = roots.dataset(name)
        evaluation.dataset, evaluation.root = name, str(root)
        evaluation.latents_dir = _latent_cache(config, roots, root)
        evaluation.clips = DatasetLayout(root).clips()  # a missing or empty dataset: train.checks reports it
        return
    if is_fraction(evaluation.fraction) and is_count(evaluation.min_clips):  # else check_settings names them
        clips = DatasetLayout(Path(config.dataloader_train.dataset.root)).clips()
        evaluation.clips = held_out_clips(clips, evaluation.fraction, evaluation.min_clips)


def _missing_dataset():
    raise UserError("No dataset given.", "pass --dataset COLLECTION/DOMAIN (a folder inside the datasets root).")


def _derived_name(config: LazyDict) -> str:
    return run_name(
        config.job.dataset, config.model.lora.rank, config.trainer.max_iter, config.dataloader_train.batch_size,
        config.trainer.grad_accum, config.model.lora.scale, config.optimizer.lr, config.job.seed,
    )


def _steps_for_epochs(config: LazyDict, world_size: int) -> int:
    """`--epochs` in optimizer steps; the value itself stays as given when the settings cannot count it."""
    epochs, batch, accum = config.trainer.epochs, config.dataloader_train.batch_size, config.trainer.grad_accum
    if not (is_positive(epochs) and is_count(batch) and is_count(accum)):
        return config.trainer.max_iter  # check_settings names the bad value
    clips = len(DatasetLayout(Path(config.dataloader_train.dataset.root)).clips())
    clips -= len(excluded_from_training(config.trainer.get("evaluation")))
    per_step = world_size * batch * accum
    steps_per_epoch = clips // per_step
    if steps_per_epoch == 0:
        raise UserError(
            f"{clips} clips do not fill one step of {world_size} processes x batch {batch} x accumulation {accum}.",
            "lower --grad-accum or --batch-size, or add clips.",
        )
    steps = round(epochs * steps_per_epoch)
    if steps < 1:
        raise UserError(f"--epochs {epochs} is {epochs * steps_per_epoch:.2f} steps of {per_step} clips: no step at all.",
                        f"give at least --epochs {1 / steps_per_epoch:.3g}, or --max-iter N.")
    return steps
