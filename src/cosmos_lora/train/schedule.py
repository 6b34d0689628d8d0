"""Learning-rate multiplier as a pure function of the optimizer step (nanoGPT style)."""

import math


def lr_multiplier(step: int, warmup_iters: int = 0, decay: str = "constant", max_iter: int = 1, min_ratio: float = 0.0) -> float:
    """Linear warm-up over `warmup_iters`, then constant (the official default) or cosine to `min_ratio`."""
    if step < warmup_iters:
        return (step + 1) / warmup_iters
    if decay == "constant":
        return 1.0
    if decay == "cosine":
        progress = min(1.0, (step - warmup_iters) / max(1, max_iter - warmup_iters))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"scheduler decay must be 'constant' or 'cosine', not {decay!r}")
