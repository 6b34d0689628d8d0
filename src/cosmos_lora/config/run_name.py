"""Run names that encode the hyper-parameters, as the users' old scripts did, but exact."""

from cosmos_lora.errors import UserError


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


def check_run_name(name: object) -> None:
    """A run name is one folder inside the runs folder: not a path, not hidden, not `..`."""
    if not isinstance(name, str):
        raise UserError(f"Run name {name!r} (--name, job.name) is not text.", "quote it: -- \"job.name='123'\", or use --name.")
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(
            f"Run name {name!r} (--name, job.name) is not a folder name: it is empty, starts with '.' "
            "or holds a path separator.",
            "give a plain name such as --name sports_r16; --outputs-dir chooses where runs go.",
        )
