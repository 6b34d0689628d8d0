"""From CLI options to a running job: build and save the experiment, check inputs, start torchrun.

Everything that can be wrong with the user's input is found here, before any process starts.
"""

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from cosmos_lora.config import LazyDict, apply_overrides, load_preset, resolved, save_config
from cosmos_lora.data.dataset import dit_text_width, require_valid_dataset
from cosmos_lora.data.latents import LATENTS_DIR, latent_cache_dir
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.distributed import ExternalLaunch, launched_by_torchrun, run_torchrun, torchrun_command, visible_gpus
from cosmos_lora.errors import UserError
from cosmos_lora.model.tokenizer import TOKENIZER_FILES
from cosmos_lora.paths import Roots, atomic_path, check_dataset_name
from cosmos_lora.train.checkpointer import read_latest
from cosmos_lora.train.run_name import run_name
from cosmos_lora.train.status import read_status
from cosmos_lora.train.worker import EXIT_INTERRUPTED

WORKER = "cosmos_lora.train.worker"

# What a resume may change: how long to train, how often to log and save, loader speed, memory
# and where the roots are. Anything else would change the steps already taken, so it is refused.
RESUME_MAY_CHANGE = (
    "trainer.max_iter", "trainer.epochs", "scheduler.max_iter", "trainer.log_every", "trainer.validate_every",
    "checkpoint.save_every", "checkpoint.keep_states", "dataloader_train.num_workers", "dataloader_train.pin_memory",
    "model.activation_checkpointing", "model.checkpoints_dir", "job.runs_dir", "job.run_dir",
    "dataloader_train.dataset.root", "dataloader_train.dataset.latents_dir", "model.latent_cache",
    "model.recompute_attention", "model.attention_backend", "model.compile",
    # validation samples draw nothing from the training's RNG streams (tests/test_validation.py)
    "trainer.validation.prompts", "trainer.validation.seeds", "trainer.validation.steps",
    "trainer.validation.guidance", "trainer.validation.ema",
)
# Seconds torchrun waits after forwarding a SIGTERM before it SIGKILLs the workers. Its default,
# 30 s, is shorter than one 7B step at 121x704x1280 with accumulation: they could not finish and save.
SHUTDOWN_TIMEOUT_S = "600"
# Under an external launcher (srun, torchrun) only task 0 checks the inputs and writes the run folder;
# the other tasks wait this long for it. Checking a large dataset takes a few minutes.
LAUNCH_WAIT_S = 900.0
LAUNCH_NOTE_SUFFIX = ".launch.json"  # `<runs>/.<run>.launch.json`: what task 0 made of the latest launch


@dataclass(frozen=True)
class Launch:
    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def default_nproc() -> int:
    return visible_gpus() or 1


def build_experiment(
    source: str, roots: Roots, dataset: str | None, options: dict, overrides: list[str], name: str | None,
    launch: Launch, alpha: float | None = None,
) -> LazyDict:
    """Preset (or saved config) + options + overrides, with the dataset, paths and run folder filled in.

    `alpha` is peft's spelling of the LoRA multiplier: scale = alpha / rank. A run's saved
    config.yaml keeps naming that run, even when overrides change values its name was derived from.
    """
    config = load_preset(source)
    saved_run = Path(config.job.run_dir).name if config.job.get("run_dir") else None
    apply_overrides(config, {k: v for k, v in options.items() if v is not None})
    apply_overrides(config, overrides)
    if alpha is not None:
        config.model.lora.scale = alpha / config.model.lora.rank
    dataset = check_dataset_name(dataset or config.job.dataset or _missing_dataset())
    config.job.dataset = dataset
    if name is not None:
        config.job.name = name
    config.model.checkpoints_dir = str(roots.checkpoints)
    config.job.runs_dir = str(roots.outputs / "runs")
    config.dataloader_train.dataset.root = str(roots.dataset(dataset))
    config.dataloader_train.dataset.latents_dir = _latent_cache(config, roots)
    if config.trainer.epochs:
        config.trainer.max_iter = _steps_for_epochs(config, launch.world_size)
    config = resolved(config)
    config.job.run_dir = str(Path(config.job.runs_dir) / (config.job.name or saved_run or _derived_name(config)))
    return config


def _latent_cache(config: LazyDict, roots: Roots) -> str | None:
    """The dataset's latent cache for exactly this tokenizer, size and frame count, if one was made."""
    root, tokenizer = Path(config.dataloader_train.dataset.root), roots.checkpoints / config.model.tokenizer
    if not config.model.latent_cache or not (root / LATENTS_DIR).is_dir() or not tokenizer.is_dir():
        return None  # no cache made; a missing tokenizer is reported by check_inputs
    height, width = config.model.resolution
    cache = latent_cache_dir(
        root, tokenizer,
        config.model.num_frames, height, width, config.model.pixel_chunk_duration,
    )
    return str(cache) if cache.is_dir() else None


def _missing_dataset():
    raise UserError("No dataset given.", "pass --dataset COLLECTION/DOMAIN (a folder inside the datasets root).")


def _derived_name(config: LazyDict) -> str:
    return run_name(
        config.job.dataset, config.model.lora.rank, config.trainer.max_iter, config.dataloader_train.batch_size,
        config.trainer.grad_accum, config.model.lora.scale, config.optimizer.lr, config.job.seed,
    )


def _steps_for_epochs(config: LazyDict, world_size: int) -> int:
    clips = len(DatasetLayout(Path(config.dataloader_train.dataset.root)).clips())
    per_step = world_size * config.dataloader_train.batch_size * config.trainer.grad_accum
    steps_per_epoch = clips // per_step
    if steps_per_epoch == 0:
        raise UserError(
            f"{clips} clips do not fill one step of {world_size} processes x batch "
            f"{config.dataloader_train.batch_size} x accumulation {config.trainer.grad_accum}.",
            "lower --grad-accum or --batch-size, or add clips.",
        )
    return round(config.trainer.epochs * steps_per_epoch)


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


def prepare(config: LazyDict, resume: bool, launched: ExternalLaunch | None) -> Path:
    """Checks the inputs and writes the run folder. Under srun or torchrun only task 0 does; it then
    leaves a note for this launch beside the run folder, and the other tasks wait for that note."""
    if launched is not None and not launched.is_main:
        return wait_for_run_dir(config, launched)
    try:
        check_inputs(config)
        run_dir = prepare_run_dir(config, resume)
    except UserError as error:
        if launched is not None:  # the other tasks stop at once with task 0's reason
            _write_launch_note(config, launched, {"failed": str(error)})
        raise
    if launched is not None:
        _write_launch_note(config, launched, {})
    return run_dir


def wait_for_run_dir(config: LazyDict, launched: ExternalLaunch, timeout_s: float = LAUNCH_WAIT_S) -> Path:
    """Waits (tasks other than 0) until task 0 has prepared the run folder for this launch."""
    run_dir = Path(config.job.run_dir)
    deadline = time.monotonic() + timeout_s
    while (note := _read_launch_note(run_dir, launched)) is None:
        if time.monotonic() > deadline:
            raise UserError(
                f"Task {launched.rank}: task 0 did not prepare {run_dir} for this launch within {timeout_s:.0f} s.",
                "read task 0's output for what stopped it, fix that and start every task again.",
            )
        time.sleep(0.2)
    if "failed" in note:
        raise UserError(f"Task {launched.rank}: task 0 stopped before training: {note['failed']}")
    changed = _changed_keys(load_preset(run_dir / "config.yaml"), config)
    if changed:
        raise UserError(
            f"Task {launched.rank} was started with other values than task 0 for {', '.join(changed)}.",
            "start every task with the same command and environment.",
        )
    return run_dir


def _launch_note_path(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}{LAUNCH_NOTE_SUFFIX}")  # beside the run: there may be no run folder


def _write_launch_note(config: LazyDict, launched: ExternalLaunch, content: dict) -> None:
    path = _launch_note_path(Path(config.job.run_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(json.dumps({"launch_id": launched.launch_id, "world_size": launched.world_size, **content}))
    tmp.replace(path)


def _read_launch_note(run_dir: Path, launched: ExternalLaunch) -> dict | None:
    """Task 0's note for this launch; None while there is none (a note of an earlier launch does not count)."""
    try:
        note = json.loads(_launch_note_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return note if note.get("launch_id") == launched.launch_id else None


def prepare_run_dir(config: LazyDict, resume: bool) -> Path:
    """Creates the run folder with its config.yaml; refuses to reuse one unless resuming.

    A resume saves the new config when it differs from the old one only in RESUME_MAY_CHANGE
    (e.g. a longer `trainer.max_iter`), so the workers train with what the user asked for.
    """
    run_dir = Path(config.job.run_dir)
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.is_file():
            raise UserError(f"Nothing to resume in {run_dir}.", "start it without --resume.")
        changed = _changed_keys(load_preset(saved), config)
        refused = [key for key in changed if key not in RESUME_MAY_CHANGE]
        if refused:
            raise UserError(
                f"Resuming {run_dir} with other values for {', '.join(refused)} would not continue the same training.",
                "resume with the saved values (--config <run>/config.yaml --resume), or start a new run with --name NEW.",
            )
        if changed:
            save_config(config, saved)
        return run_dir
    if run_dir.exists():
        raise UserError(
            f"Run folder {run_dir} exists already.", "pass --resume to continue it, or --name NEW to start another run."
        )
    save_config(config, saved)
    return run_dir


def _changed_keys(old: LazyDict, new: LazyDict) -> list[str]:
    before, after = _flatten(OmegaConf.to_container(old)), _flatten(OmegaConf.to_container(new))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _flatten(tree: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(_flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def check_resumable(run_dir: Path, launch: Launch) -> None:
    """A resume needs as many processes as saved the state (the data order and RNG streams depend on it)."""
    latest = read_latest(run_dir)
    saved = (latest or {}).get("world_size")
    if saved is not None and saved != launch.world_size:
        raise UserError(
            f"{run_dir} was saved by {saved} processes; this launch has {launch.world_size} "
            f"({launch.nnodes} node(s) x {launch.nproc}).",
            f"resume with {saved} processes in all (e.g. --nproc {saved // launch.nnodes}).",
        )


@contextmanager
def _environment(**values: str):
    """Sets defaults for the torchrun child (the user's own values win), restored afterwards."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def launch_training(run_dir: Path, launch: Launch) -> tuple[int, dict | None]:
    """Runs the workers (through torchrun, or in this process when already under a launcher)."""
    config_path = str(run_dir / "config.yaml")
    if launched_by_torchrun():  # the launcher fixed the world size; the workers check it on resume
        from cosmos_lora.train.worker import main

        code = main(config_path)
    else:
        check_resumable(run_dir, launch)
        command = torchrun_command(WORKER, [config_path], launch.nproc, launch.nnodes, launch.node_rank, launch.rdzv_endpoint)
        with _environment(TORCH_ELASTIC_SHUTDOWN_TIMEOUT=SHUTDOWN_TIMEOUT_S):
            code = run_torchrun(command)
    return code, read_status(run_dir)


def outcome_message(run_dir: Path, code: int, status: dict | None, resume_hint: str) -> tuple[bool, str]:
    state = (status or {}).get("state")
    step = (status or {}).get("step", 0)
    if code == 0 and state == "finished":
        return True, f"Finished {step} steps. Adapters: {run_dir / 'adapters'}"
    if state == "interrupted" or code == EXIT_INTERRUPTED:
        return False, f"Interrupted after step {step}; the state is saved. Resume with: {resume_hint}"
    if state == "failed" and status.get("message"):
        return False, f"Training failed: {status['message']} Run folder: {run_dir}"
    return False, f"Training failed (exit code {code}) at step {step}; see the messages above. Run folder: {run_dir}"


def resume_hint(run_dir: Path, launch: Launch, external: bool) -> str:
    """The command that continues this run, in the same launch shape."""
    command = f"cosmos-lora posttrain --config {run_dir / 'config.yaml'} --resume"
    if external:  # srun or torchrun started the tasks: they must again
        return f"{command} (in {launch.world_size} tasks, started as before)"
    command += f" --nproc {launch.nproc}"
    if launch.nnodes > 1:
        command += f" --nnodes {launch.nnodes} --node-rank {launch.node_rank} --rdzv-endpoint {launch.rdzv_endpoint}"
    return command


def describe_command(run_dir: Path, launch: Launch) -> str:
    return " ".join(
        torchrun_command(WORKER, [str(run_dir / "config.yaml")], launch.nproc, launch.nnodes, launch.node_rank, launch.rdzv_endpoint)
    )
