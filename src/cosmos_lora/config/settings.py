"""What each setting of an experiment may hold, checked on the built tree before anything starts.

Every problem is returned, not raised, so `posttrain` (and `--dry-run`) can name them all at once.
Whether the files the config names exist, and whether the dataset is ready, is `train.checks`' job.
"""

import math

from cosmos_lora.config.lazy import LazyDict
from cosmos_lora.config.run_name import check_run_name
from cosmos_lora.errors import Problems, UserError

# posttrain's options -> the config keys they set; `-- key=value` overrides reach every other key
OPTION_KEYS = {
    "rank": "model.lora.rank",
    "scale": "model.lora.scale",
    "first_blocks": "model.lora.first_blocks",
    "lr": "optimizer.lr",
    "max_iter": "trainer.max_iter",
    "epochs": "trainer.epochs",
    "batch_size": "dataloader_train.batch_size",
    "grad_accum": "trainer.grad_accum",
    "seed": "job.seed",
    "save_every": "checkpoint.save_every",
    "validate_every": "trainer.validate_every",
    "eval_every": "trainer.eval_every",
    "eval_fraction": "trainer.evaluation.fraction",
    "eval_dataset": "trainer.evaluation.dataset",
}
LR_MULTIPLIER = "cosmos_lora.train.schedule.lr_multiplier"
DECAYS = ("constant", "cosine")


def label(key: str) -> str:
    """`--rank (model.lora.rank)` for a key an option sets, else the key."""
    option = next((o for o, k in OPTION_KEYS.items() if k == key), None)
    return f"--{option.replace('_', '-')} ({key})" if option else key


def is_count(value: object, minimum: int = 1) -> bool:
    """A whole number >= minimum (True/False are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_positive(value: object) -> bool:
    """A finite number > 0."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def is_fraction(value: object) -> bool:
    """A number in [0, 0.5]: more than half of a dataset held out of training is a mistake."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 0.5


# key -> (requirement, check, fix)
_COUNT, _STEPS = "a whole number >= 1", "a whole number of steps >= 1"
RULES = {
    "model.lora.rank": (_COUNT, is_count, "use e.g. --rank 8."),
    # a scale <= 0 trains nothing (0) or the same LoRA with a flipped sign: refused as a mistake
    "model.lora.scale": ("a finite number > 0", is_positive, "use e.g. --scale 1 (or --alpha A: scale = A / rank)."),
    "model.lora.first_blocks": (
        "a whole number >= 1, or unset for every block", lambda v: v is None or is_count(v),
        "leave --first-blocks out for every block, or give e.g. --first-blocks 14."),
    "optimizer.lr": ("a finite number > 0", is_positive, "use e.g. --lr 1e-4."),
    "trainer.max_iter": (_STEPS, is_count, "give --max-iter N (optimizer steps) or --epochs E."),
    "trainer.epochs": ("a finite number > 0, or unset", lambda v: v is None or is_positive(v),
                       "give --epochs E > 0, or --max-iter N instead."),
    "dataloader_train.batch_size": (_COUNT, is_count, "use e.g. --batch-size 1 (and --grad-accum for larger steps)."),
    "trainer.grad_accum": (_COUNT, is_count, "use e.g. --grad-accum 4 (1: no accumulation)."),
    "trainer.grad_clip": ("a finite number > 0", is_positive, "use e.g. -- trainer.grad_clip=1.0 (the official value)."),
    "trainer.log_every": (_STEPS, is_count, "use e.g. -- trainer.log_every=10."),
    "trainer.validate_every": ("a whole number >= 0 (0: off)", lambda v: is_count(v, 0), "use e.g. --validate-every 200, or 0."),
    # runs saved before evaluation existed have none of its keys (None): no evaluation
    "trainer.eval_every": ("a whole number >= 0 (0: off)", lambda v: v is None or is_count(v, 0),
                           "use e.g. --eval-every 100, or 0."),
    "trainer.evaluation.fraction": ("a number from 0 to 0.5 (0: no held-out clips)", lambda v: v is None or is_fraction(v),
                                    "use e.g. --eval-fraction 0.05, or --eval-fraction 0."),
    "trainer.evaluation.min_clips": (_COUNT, lambda v: v is None or is_count(v),
                                     "use e.g. -- trainer.evaluation.min_clips=2."),
    "trainer.evaluation.sigmas": (_COUNT, lambda v: v is None or is_count(v), "use e.g. -- trainer.evaluation.sigmas=8."),
    "checkpoint.save_every": (_STEPS, is_count, "use e.g. --save-every 100."),
    "checkpoint.keep_states": (_COUNT, is_count, "use e.g. -- checkpoint.keep_states=2."),
    "model.keep_attention_blocks": (
        "a whole number >= 0, or unset for every recomputed block", lambda v: v is None or is_count(v, 0),
        "use e.g. -- model.keep_attention_blocks=18 (the 14B preset's), or leave it unset."),
}


def check_settings(config: LazyDict) -> list[UserError]:
    """Every setting that is out of range, of the wrong kind or inconsistent with another."""
    problems = Problems()
    for key, (requirement, valid, fix) in RULES.items():
        value = _value(config, key)
        if not valid(value):
            problems.add(f"{label(key)} is {value!r}: it must be {requirement}.", fix)
    with problems.check():
        _check_targets(list(_value(config, "model.lora.extra_targets") or []))
    if config.job.get("name") is not None:
        with problems.check():
            check_run_name(config.job.name)
    if problems:  # the schedule is checked against a valid training length
        return problems.errors
    with problems.check():
        check_schedule(config)
    return problems.errors


def check_schedule(config: LazyDict) -> None:
    """The preset's lr schedule (`train.schedule.lr_multiplier`) fits the training it drives."""
    scheduler = config.scheduler
    if scheduler.get("_target_") != LR_MULTIPLIER:
        return  # another schedule: its own code checks its arguments
    steps = config.trainer.max_iter
    decay, warmup = scheduler.get("decay", "constant"), scheduler.get("warmup_iters", 0)
    length, floor = scheduler.get("max_iter", 1), scheduler.get("min_ratio", 0.0)
    if decay not in DECAYS:
        raise UserError(f"scheduler.decay is {decay!r}: it must be one of {', '.join(DECAYS)}.",
                        "use -- scheduler.decay=cosine, or constant (the official recipe).")
    if not is_count(warmup, 0):
        raise UserError(f"scheduler.warmup_iters is {warmup!r}: it must be a whole number of steps >= 0.",
                        "use e.g. -- scheduler.warmup_iters=100, or 0 for none.")
    if warmup > steps:
        raise UserError(
            f"scheduler.warmup_iters {warmup} is longer than the training (--max-iter {steps}): the lr would "
            "never reach optimizer.lr.", f"use a warm-up of at most {steps} steps, e.g. -- scheduler.warmup_iters={steps // 10}.")
    if decay != "cosine":
        return
    if not is_count(length):
        raise UserError(f"scheduler.max_iter is {length!r}: it must be {_STEPS}.", f"use -- scheduler.max_iter={steps}.")
    if not (isinstance(floor, int | float) and 0 <= floor <= 1):
        raise UserError(f"scheduler.min_ratio is {floor!r}: it must be a fraction of the lr in [0, 1].",
                        "use e.g. -- scheduler.min_ratio=0.1.")
    if length < steps:
        raise UserError(
            f"The cosine schedule ends at step {length} (scheduler.max_iter) but training runs {steps} steps "
            f"(--max-iter): steps {length + 1}-{steps} would train at {floor:g} x the lr.",
            f"for a new run, give the schedule the training's length: -- scheduler.max_iter={steps}. A run being "
            f"resumed keeps its schedule (its steps so far followed it): resume with --max-iter {length}, or start a "
            "new run with --name NEW.",
        )


def _check_targets(targets: list) -> None:
    from cosmos_lora.model.lora import EXTRA_TARGETS

    unknown = [t for t in targets if t not in EXTRA_TARGETS]
    if unknown:
        raise UserError(
            f"--target {', '.join(map(str, unknown))} (model.lora.extra_targets): not a LoRA target of the DiT.",
            f"use {', '.join(EXTRA_TARGETS)} (q and v of both attentions are always trained).",
        )


def _value(config: LazyDict, key: str) -> object:
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key, throw_on_resolution_failure=False)
