"""Everything that can be wrong with a training's inputs, found before any process starts and
before the run folder is written: the launch shape, checkpoints present, a trainable size, the
dataset valid, the validation samples possible, the run folder new (or resumable with these values).

The settings themselves (ranges, kinds, the schedule) are `config.settings`' checks, run while the
experiment is built. Every problem is collected and reported at once, one per line.
"""

from pathlib import Path

from cosmos_lora.config import LazyDict, load_preset
from cosmos_lora.config.experiment import changed_keys
from cosmos_lora.config.settings import is_count, is_positive, label
from cosmos_lora.data.dataset import dit_size, require_valid_dataset
from cosmos_lora.distributed import Launch
from cosmos_lora.errors import Problems, UserError
from cosmos_lora.model.tokenizer import check_tokenizer_folder, latent_frames
from cosmos_lora.run_folder import RunFolder

# What a resume may change: how long to train, how often to log and save, loader speed, memory
# and where the roots are. Anything else would change the steps already taken, so it is refused.
RESUME_MAY_CHANGE = (
    "trainer.max_iter", "trainer.epochs", "scheduler.max_iter", "trainer.log_every", "trainer.validate_every",
    "checkpoint.save_every", "checkpoint.keep_states", "dataloader_train.num_workers", "dataloader_train.pin_memory",
    "model.activation_checkpointing", "model.checkpoints_dir", "job.runs_dir", "job.run_dir",
    "dataloader_train.dataset.root", "dataloader_train.dataset.latents_dir", "model.latent_cache",
    "model.recompute_attention", "model.keep_attention_blocks", "model.attention_backend", "model.compile",
    # validation samples draw nothing from the training's RNG streams (tests/test_validation.py)
    "trainer.validation.prompts", "trainer.validation.seeds", "trainer.validation.steps",
    "trainer.validation.guidance", "trainer.validation.ema",
    # nor does the evaluation loss (tests/test_evaluation.py); which clips are held out is another matter
    "trainer.eval_every", "trainer.evaluation.ema", "trainer.evaluation.root", "trainer.evaluation.latents_dir",
)


def check_launch(nproc: int | None, nnodes: int, node_rank: int, problems: Problems) -> None:
    """`--nproc`, `--nnodes`, `--node-rank` describe a launch that can happen."""
    if nproc is not None and nproc < 1:
        problems.add(f"--nproc {nproc}: it must be a whole number of processes >= 1.",
                     "use e.g. --nproc 8 (one per GPU), or leave it out for every visible GPU.")
    if nnodes < 1:
        problems.add(f"--nnodes {nnodes}: it must be a whole number of nodes >= 1.", "use --nnodes 1 on one machine.")
    elif not 0 <= node_rank < nnodes:
        problems.add(f"--node-rank {node_rank} is not a node of --nnodes {nnodes}.",
                     f"give each node its index, 0 to {nnodes - 1}.")


def check_inputs(config: LazyDict, resume: bool = False, launch: Launch | None = None,
                 problems: Problems | None = None) -> None:
    """Every problem with the training's files and folders, raised as one UserError together with
    those already in `problems` (e.g. the settings' problems found while building the experiment).

    The run folder is checked when the experiment named one (`job.run_dir`), against `launch`'s
    process count on resume."""
    found = Problems() if problems is None else problems
    size = None
    with found.check():
        size = check_checkpoints(config)
    try:
        height, width = check_training_size(config)
    except UserError as error:
        found.errors.append(error)
        height = width = None
    first_blocks = config.model.lora.get("first_blocks")
    if size is not None and is_count(first_blocks) and first_blocks > size.num_layers:
        found.add(f"{label('model.lora.first_blocks')} is {first_blocks}, but the DiT has {size.num_layers} blocks.",
                  f"give at most --first-blocks {size.num_layers}, or leave it out for every block.")
    if size is not None:
        with found.check():
            check_video2world(config, size)
    if is_count(config.trainer.validate_every):
        with found.check():
            check_validation(config)
    if config.dataloader_train.dataset.get("root") and height is not None:  # no root: its name was refused
        latents = config.dataloader_train.dataset.latents_dir
        with found.check():
            require_valid_dataset(
                Path(config.dataloader_train.dataset.root), config.model.num_frames, height, width, config.job.dataset,
                latents_dir=Path(latents) if latents else None, text_width=size.text_embed_dim if size else None,
            )
    evaluation = config.trainer.get("evaluation")
    if evaluation is not None and evaluation.get("root") and height is not None:
        latents = evaluation.latents_dir
        with found.check():
            require_valid_dataset(
                Path(evaluation.root), config.model.num_frames, height, width, evaluation.dataset,
                latents_dir=Path(latents) if latents else None, text_width=size.text_embed_dim if size else None,
            )
    if config.job.get("run_dir"):
        with found.check():
            check_run_folder(config, resume, launch)
    found.raise_any()


def check_checkpoints(config: LazyDict):
    """The DiT and tokenizer are there; returns the DiT's size (`model.sizes.DiTSize`)."""
    checkpoints = Path(config.model.checkpoints_dir)
    dit = checkpoints / config.model.dit
    if not dit.is_file():
        raise UserError(f"No DiT checkpoint at {dit}.", "run `cosmos-lora download`, or set --checkpoints-dir.")
    tokenizer = checkpoints / config.model.tokenizer
    check_tokenizer_folder(tokenizer)
    return dit_size(dit)


def check_video2world(config: LazyDict, size) -> None:
    """The recipe agrees with the checkpoint: a Video2World DiT (read off its weights) trains with the
    `model.video2world` keys, a Text2World one without them, and the condition frames fit the clip."""
    recipe, dit = config.model.get("video2world"), Path(config.model.checkpoints_dir) / config.model.dit
    if size.video2world and recipe is None:
        raise UserError(f"{dit} is a Video2World checkpoint, but the config has no Video2World recipe (model.video2world).",
                        "use --model 7b-v2w (preset video2world_7b_lora), or a Text2World checkpoint.")
    if not size.video2world and recipe is not None:
        raise UserError(f"The config trains Video2World (model.video2world), but {dit} is a Text2World checkpoint.",
                        "point model.dit at Cosmos-Predict1-7B-Video2World/model.pt (`download --model 7B-Video2World`), "
                        "or use --model 7b.")
    if recipe is None:
        return
    frames, latent = list(recipe.condition_frames), latent_frames(config.model.num_frames)
    if not frames or not all(is_count(n, 0) and n < latent for n in frames):
        raise UserError(f"model.video2world.condition_frames {frames} must be latent frame counts from 0 to {latent - 1} "
                        f"(clips of {config.model.num_frames} frames have {latent}).",
                        "use the official -- 'model.video2world.condition_frames=[0,1,2]'.")
    if not is_positive(recipe.augment_sigma_p_std) or not is_positive(config.model.get("sigma_multiplier", 1.0)):
        raise UserError("model.video2world.augment_sigma_p_std and model.sigma_multiplier must be finite numbers > 0.",
                        "use the official values 2 and 4.")


def check_training_size(config: LazyDict) -> tuple[int, int]:
    """The frames and (height, width) are a size the tokenizer and DiT take; returns (height, width)."""
    frames, resolution = config.model.num_frames, list(config.model.resolution)
    if not (is_count(frames) and len(resolution) == 2 and all(is_count(side) for side in resolution)):
        raise UserError(f"model.num_frames {frames!r} and model.resolution {resolution!r} are not a training size.",
                        "use e.g. -- model.num_frames=121 'model.resolution=[704,1280]'.")
    height, width = resolution
    if height % 16 or width % 16 or (frames - 1) % 8:
        raise UserError(
            f"Training size {frames}x{height}x{width} is not 1+8k frames of multiples of 16.",
            "use e.g. 121 frames at 704x1280.",
        )
    return height, width


def check_run_folder(config: LazyDict, resume: bool, launch: Launch | None = None) -> None:
    """A new run needs a new folder; a resume needs a saved run that these values continue exactly."""
    run = RunFolder(Path(config.job.run_dir))
    if not resume:
        if run.path.exists():
            raise UserError(
                f"Run folder {run.path} exists already.", "pass --resume to continue it, or --name NEW to start another run."
            )
        return
    if not run.config_file.is_file():
        raise UserError(f"Nothing to resume in {run.path}.", "start it without --resume.")
    saved = load_preset(run.config_file)
    changed = changed_keys(saved, config)
    refused = [key for key in changed if key not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(
            f"Resuming {run.path} with other values for {', '.join(refused)} would not continue the same training.",
            "resume with the saved values (--config <run>/config.yaml --resume), or start a new run with --name NEW.",
        )
    if "scheduler.max_iter" in changed and saved.scheduler.get("decay", "constant") != "constant":
        old, new = saved.scheduler.max_iter, config.scheduler.max_iter
        raise UserError(
            f"Resuming {run.path} with its {saved.scheduler.decay} schedule over {new} steps instead of {old} would "
            "change the lr of the steps it already took (the curve's shape depends on its length).",
            f"resume with --max-iter {old}, or start a new run with --name NEW --max-iter {new}.",
        )
    if launch is not None:
        run.check_resumable(launch.world_size, launch.nnodes)


def read_validation_prompts(path: Path) -> list[str]:
    """`--validation-prompts FILE`: a .txt file, one prompt per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".txt":
        problem = f"No file at {path}." if not path.is_file() else f"{path} is not a .txt file."
        raise UserError(problem, "give --validation-prompts a .txt file with one prompt per line.")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}).", "save it as UTF-8.") from None
    if not prompts:
        raise UserError(f"{path} holds no prompt.", "write one prompt per line.")
    return prompts


def check_validation(config: LazyDict) -> None:
    """Validation samples need prompts, seeds, a step count and the T5 text encoder."""
    validation = config.trainer.get("validation")
    if validation is None:
        raise UserError(
            "trainer.validate_every is set but the config has no trainer.validation section.",
            "copy trainer.validation from configs/text2world_7b_lora.py into the config, or set trainer.validate_every=0.",
        )
    if not validation.prompts or any(not str(p).strip() for p in validation.prompts):
        raise UserError("trainer.validation.prompts is empty or holds an empty prompt.", "pass --validation-prompts FILE.")
    if not validation.seeds or any(int(seed) < 0 for seed in validation.seeds):
        raise UserError(f"trainer.validation.seeds {list(validation.seeds)} is not a list of seeds >= 0.",
                        "set e.g. -- 'trainer.validation.seeds=[0,1]'.")
    if validation.steps < 1:
        raise UserError(f"trainer.validation.steps {validation.steps} is not a number of denoising steps.",
                        "set e.g. -- trainer.validation.steps=20.")
    text_encoder = Path(config.model.checkpoints_dir) / config.model.text_encoder
    if not (text_encoder / "config.json").is_file():
        raise UserError(
            f"Validation samples need the T5 text encoder, and {text_encoder} has no config.json.",
            "run `cosmos-lora download`, or train without --validate-every.",
        )
