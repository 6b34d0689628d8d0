"""`cosmos-lora merge`: a base DiT checkpoint with one or more LoRAs merged in, written tensor by tensor."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result
from cosmos_lora.errors import UserError


def merge(
    base: Path = typer.Option(..., help="Official DiT model.pt to merge into (e.g. checkpoints/Cosmos-Predict1-7B-Text2World/model.pt)."),
    adapter: list[str] = typer.Option(..., "--adapter", "-a", help="FILE[:WEIGHT] (repeatable): ours, diffusers, ComfyUI or official LoRA."),
    out: Path = typer.Option(..., help="The merged checkpoint (.pt), in the official flat format."),
) -> None:
    """Merge LoRAs into the base: W' = W + sum(weight * scale * up @ down), the official semantics.

    Host memory stays at about one weight matrix: the base is never loaded, unchanged tensors are
    copied file to file. The result loads wherever the base does (official inference as a
    post-trained model, `cosmos-lora infer`), with no LoRA support needed.
    """
    from cosmos_lora.infer import adapters
    from cosmos_lora.model import lora_formats
    from cosmos_lora.model.merge import BaseCheckpoint, WeightedLora, merge_checkpoint

    if out.suffix != ".pt":
        raise UserError(f"--out {out} does not end in .pt.", f"name it {out.stem}.pt (official inference reads model.pt).")
    checkpoint = BaseCheckpoint.open(base)
    loras = []
    for item in adapter:
        path, weight = parse_adapter(item)
        lora = adapters.from_file(path)
        adapters.check_fits(lora, checkpoint.weight_shapes(), base)
        note(f"LoRA x {weight:g}: {lora.summary()}")
        if lora.format == "official":
            note("  official files do not store their scale: 1 is assumed; the weight multiplies it.")
        loras.append(WeightedLora(lora.state, lora.spec, weight))
    changed = merge_checkpoint(checkpoint, loras, out)
    note(f"{changed} weight matrices changed, every other tensor copied as it is.")
    note("Run it with the official cosmos-predict1 inference (from its repository root):")
    for line in lora_formats.official_inference_command(out, "merged", checkpoint.official_model()):
        note(f"  {line}")
    result(str(out))


def parse_adapter(item: str) -> tuple[Path, float]:
    """'a.safetensors:0.5' -> (a.safetensors, 0.5); without a weight, 1."""
    path, sep, weight = item.rpartition(":")
    if not sep or Path(item).exists():
        return Path(item), 1.0
    try:
        return Path(path), float(weight)
    except ValueError:
        raise UserError(f"--adapter {item!r}: {weight!r} is not a number.", "write FILE:WEIGHT, e.g. style.safetensors:0.7.") from None


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora merge --base checkpoints/Cosmos-Predict1-7B-Text2World/model.pt "
        "--adapter outputs/runs/<run>/adapters/step_001000.ema.safetensors --out merged/model.pt",
        "cosmos-lora merge --base checkpoints/Cosmos-Predict1-7B-Text2World/model.pt "
        "-a sports.safetensors:0.7 -a night.safetensors:0.5 "
        "--out checkpoints/Cosmos-Predict1-7B-Text2World_post-trained/model.pt",
    ))(guarded(merge))
