"""Everything that can be wrong with a training's inputs, found before any process starts:
checkpoints present, a trainable size, the dataset valid, the validation samples possible."""

from pathlib import Path

from cosmos_lora.config import LazyDict
from cosmos_lora.data.dataset import dit_text_width, require_valid_dataset
from cosmos_lora.errors import UserError
from cosmos_lora.model.tokenizer import TOKENIZER_FILES


def check_inputs(config: LazyDict) -> None:
    """Checkpoints present and the dataset valid: all problems before any process starts."""
    checkpoints = Path(config.model.checkpoints_dir)
    dit = checkpoints / config.model.dit
    if not dit.is_file():
        raise UserError(f"No DiT checkpoint at {dit}.", "run `cosmos-lora download`, or set --checkpoints-dir.")
    tokenizer = checkpoints / config.model.tokenizer
    missing = [f for f in TOKENIZER_FILES if not (tokenizer / f).is_file()]
    if missing:
        raise UserError(f"The tokenizer folder {tokenizer} lacks {', '.join(missing)}.", "run `cosmos-lora download`.")
    height, width = config.model.resolution
    if height % 16 or width % 16 or (config.model.num_frames - 1) % 8:
        raise UserError(
            f"Training size {config.model.num_frames}x{height}x{width} is not 1+8k frames of multiples of 16.",
            "use e.g. 121 frames at 704x1280.",
        )
    if config.trainer.validate_every:
        check_validation(config)
    latents = config.dataloader_train.dataset.latents_dir
    require_valid_dataset(
        Path(config.dataloader_train.dataset.root), config.model.num_frames, height, width, config.job.dataset,
        latents_dir=Path(latents) if latents else None, text_width=dit_text_width(dit),
    )


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
    if config.trainer.validate_every < 0:
        raise UserError(f"--validate-every {config.trainer.validate_every} is negative.", "use 0 (off) or a number of steps.")
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
