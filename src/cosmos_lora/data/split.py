"""Held-out clips for the evaluation loss: chosen by clip name alone, so every rank, rerun and resume agrees.

Each clip name gets a stable pseudo-random key (SHA-256 of the name); the clips with the smallest
keys are held out. The choice does not depend on the order clips were listed or made in, and a clip
keeps its key when others are added. The count is `fraction` of the clips, at least `min_clips`;
a dataset so small that this would hold out more than `max(fraction, MAX_SHARE)` of it trains on
every clip instead (`too_small`).
"""

import hashlib

MAX_SHARE = 0.1  # at most this share of a dataset is held out to reach `min_clips`


def clip_key(name: str) -> int:
    """A stable 64-bit number for a clip name (the same on every machine and Python version)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def held_out_count(total: int, fraction: float, min_clips: int) -> int:
    """How many of `total` clips are held out; 0 when `fraction` is 0 or the dataset is too small."""
    if fraction <= 0 or too_small(total, fraction, min_clips):
        return 0
    return max(min_clips, round(fraction * total))


def too_small(total: int, fraction: float, min_clips: int) -> bool:
    """Whether holding out `min_clips` would take more than `max(fraction, MAX_SHARE)` of the clips."""
    return min_clips > max(fraction, MAX_SHARE) * total


def smallest_splittable(fraction: float, min_clips: int) -> int:
    """The fewest clips a split with these settings needs (for the message saying a dataset is too small)."""
    return next(n for n in range(1, 10**6) if not too_small(n, fraction, min_clips))


def held_out_clips(names: list[str], fraction: float, min_clips: int) -> list[str]:
    """The held-out clips of `names`, sorted by name; [] when no split is made."""
    count = held_out_count(len(names), fraction, min_clips)
    return sorted(sorted(names, key=lambda name: (clip_key(name), name))[:count])


def excluded_from_training(evaluation) -> list[str]:
    """The clips training must not see, from a config's `trainer.evaluation` (None in runs saved before it):
    the held-out ones; none when another dataset is evaluated."""
    if evaluation is None or evaluation.get("dataset") is not None:
        return []
    return list(evaluation.get("clips") or [])
