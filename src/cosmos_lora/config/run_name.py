"""Run names that encode the hyper-parameters, as the users' old scripts did, but exact."""


def format_lr(lr: float) -> str:
    """Every significant digit, scientific: 1e-04, 1.5e-04, 1.25e-04 (never rounded to one digit)."""
    mantissa, exponent = f"{lr:.15e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def run_name(dataset: str, rank: int, max_iter: int, batch_size: int, grad_accum: int, scale: float, lr: float, seed: int) -> str:
    """`{dataset}_r{rank}_iter{iter}_bs{bs}_accum{accum}_scale{scale}_lr{lr}_seed{seed}`, `/` -> `-`."""
    return (
        f"{dataset.replace('/', '-')}_r{rank}_iter{max_iter}_bs{batch_size}_accum{grad_accum}"
        f"_scale{scale:g}_lr{format_lr(lr)}_seed{seed}"
    )
