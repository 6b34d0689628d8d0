"""`cosmos-lora merge`: a base DiT checkpoint with one or more LoRAs merged in, written tensor by tensor."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result
from cosmos_lora.errors import UserError


def merge(
    base: Path = typer.Option(..., help="Official DiT model.pt to merge into (e.g. checkpoints/Cosmos-Predict1-7B-Text2World/model.pt)."),
    adapter: list[str] = typer.Option(
        ..., "--adapter", "-a",
        help="FILE[:WEIGHT] (repeatable): ours, diffusers/PEFT, ComfyUI or official LoRA; WEIGHT multiplies its scale "
        "(default 1) and is the scale of a file that records none.",
    ),
    out: Path = typer.Option(..., help="The merged checkpoint (.pt), in the official flat format."),
) -> None:
    """Merge LoRAs into the base: W' = W + sum(weight * scale * up @ down), the official semantics.

    Host memory stays at about one weight matrix: the base is never loaded, unchanged tensors are
    copied file to file. The result loads wherever the base does (official inference as a
    post-trained model, `cosmos-lora infer --dit`), with no LoRA support needed.
    """
    from cosmos_lora.cli.lora_option import parse_weighted
    from cosmos_lora.files import check_not_an_input
    from cosmos_lora.model import adapter_files, lora_formats
    from cosmos_lora.model.merge import BaseCheckpoint, WeightedLora, merge_checkpoint

    if out.suffix != ".pt":
        raise UserError(f"--out {out} does not end in .pt.", f"name it {out.stem}.pt (official inference reads model.pt).")
    items = [parse_weighted(item, "--adapter") for item in adapter]
    check_not_an_input(out, {"base checkpoint": base} | {f"adapter {path}": path for path, _ in items})
    checkpoint = BaseCheckpoint.open(base)
    loras = []
    for path, weight in items:
        # a file that records no scale is taken at 1 x WEIGHT only when a weight is given
        lora = adapter_files.from_file(path, None if weight is None else 1.0)
        weight = 1.0 if weight is None else weight
        adapter_files.check_fits(lora, checkpoint.weight_shapes(), base)
        note(f"LoRA x {weight:g}: {lora.summary()}; scale from {lora.scale_origin}")
        if lora.format == "official":
            note("  official files do not store their scale: 1 is assumed; the weight multiplies it.")
        loras.append(WeightedLora(lora.state, lora.spec, weight))
    changed = merge_checkpoint(checkpoint, loras, out)
    note(f"{changed} weight matrices changed, every other tensor copied as it is.")
    note("Run it with the official cosmos-predict1 inference (from its repository root):")
    for line in lora_formats.official_inference_command(out, "merged", checkpoint.official_model()):
        note(f"  {line}")
    result(str(out))


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora merge --base checkpoints/Cosmos-Predict1-7B-Text2World/model.pt "
        "--adapter outputs/runs/<run>/adapters/step_001000.ema.safetensors --out merged/model.pt",
        "cosmos-lora merge --base checkpoints/Cosmos-Predict1-7B-Text2World/model.pt "
        "-a sports.safetensors:0.7 -a night.safetensors:0.5 "
        "--out checkpoints/Cosmos-Predict1-7B-Text2World_post-trained/model.pt",
    ))(guarded(merge))
