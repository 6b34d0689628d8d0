"""`FILE[:WEIGHT]`, as `merge --adapter` and `infer --lora` take a LoRA and the weight it is applied with."""

import math
from pathlib import Path

from cosmos_lora.errors import UserError


def parse_weighted(item: str, option: str) -> tuple[Path, float | None]:
    """'a.safetensors:0.5' -> (a.safetensors, 0.5); without a weight, (a.safetensors, None).

    Split at the last ':' only when a number follows it, so 'C:\\loras\\a.safetensors' stays one path;
    'a.safetensors:half' with an a.safetensors there is a weight that is not a number."""
    path, sep, weight = item.rpartition(":")
    if not sep or Path(item).exists():
        return Path(item), None
    fix = f"write {option} FILE:WEIGHT, e.g. style.safetensors:0.7."
    try:
        value = float(weight)
    except ValueError:
        if Path(path).is_file():
            raise UserError(f"{option} {item!r}: {weight!r} is not a number.", fix) from None
        return Path(item), None  # a path with ':' in it; a missing file is reported where it is read
    if not math.isfinite(value):
        raise UserError(f"{option} {item!r}: the weight {weight} is not a finite number.", fix)
    return Path(path), value
