"""`cosmos-lora export`: a run's adapter as a ComfyUI, diffusers or official cosmos-predict1 file."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result
from cosmos_lora.errors import UserError

SUFFIXES = {"comfyui": ".safetensors", "diffusers": ".safetensors", "official": ".pt"}


def export(
    ctx: typer.Context,
    run: str = typer.Option(..., help="Run name (in <outputs>/runs) or folder."),
    step: int = typer.Option(None, help="The run's adapter at this step (default: latest)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="The EMA weights when the run saved them."),
    fmt: str = typer.Option(..., "--format", help="comfyui, diffusers or official."),
    merge: bool = typer.Option(False, "--merge", help="official only: the base with the LoRA merged in (needs no LoRA support)."),
    out: Path = typer.Option(..., help="File to write (.safetensors; .pt for official)."),
) -> None:
    """Write a run's adapter for ComfyUI, diffusers, or the official cosmos-predict1 inference.

    official writes a whole checkpoint (~14.5 GB for 7B): the run's base with the LoRA, as the
    official LoRA post-training saves it, or with --merge the LoRA merged into the weights. It prints
    the official text2world.py (video2world.py for a Video2World run) command that uses it.
    """
    from cosmos_lora.config import load_preset
    from cosmos_lora.files import check_not_an_input
    from cosmos_lora.infer import adapters
    from cosmos_lora.model import lora_formats
    from cosmos_lora.run_folder import RunFolder

    _check_options(fmt, merge, out)
    run_folder = RunFolder.resolve(run, ctx.obj.runs)
    adapter = adapters.from_run(run_folder, step, ema)
    base = ctx.obj.checkpoints / load_preset(run_folder.config_file).model.dit
    check_not_an_input(out, {"adapter": adapter.source, "base checkpoint": base}, inside=run_folder.path)
    note(f"Adapter: {adapter.summary()}")
    provenance = {"cosmos_lora_run": run_folder.name, "cosmos_lora_adapter": adapter.source.name}
    if fmt == "comfyui":
        tensors = lora_formats.to_comfyui(adapter.state, adapter.spec)
        lora_formats.write_safetensors(out, tensors, {"format": "pt"} | provenance)
    elif fmt == "diffusers":
        tensors, metadata = lora_formats.to_diffusers(adapter.state, adapter.spec, fold_scale=True)
        lora_formats.write_safetensors(out, tensors, metadata | provenance)
    else:
        _export_official(adapter, ctx.obj.checkpoints, run_folder, merge, out)
    result(str(out))


def _export_official(adapter, checkpoints: Path, run, merge: bool, out: Path) -> None:
    """The run's base + the LoRA as a post-trained LoRA checkpoint, or merged; then the official command."""
    from cosmos_lora.config import load_preset
    from cosmos_lora.model import lora_formats
    from cosmos_lora.model.adapter_files import check_fits
    from cosmos_lora.model.merge import BaseCheckpoint, WeightedLora, merge_checkpoint, write_official_lora

    base_path = checkpoints / load_preset(run.config_file).model.dit
    base = BaseCheckpoint.open(base_path)
    _check_same_base(adapter, base_path)
    check_fits(adapter, base.weight_shapes(), base_path)
    size = base.official_model()
    if size == "14b" and not merge:  # text2world.py's --diffusion_transformer_dir offers a LoRA folder for 7B only
        raise UserError("The official code has LoRA inference for the 7B model only.", "add --merge: a merged 14B loads as a post-trained 14B.")
    if merge:
        merge_checkpoint(base, [WeightedLora(adapter.state, adapter.spec)], out)
    else:
        tensors, ignored = lora_formats.to_official_inference(adapter.state, adapter.spec)
        if ignored:
            note(f"Note: official LoRA inference applies blocks 0-26, to_q and to_v only: it ignores this adapter's "
                 f"{'; '.join(ignored)}. --merge keeps everything.")
        write_official_lora(base, tensors, out)
    note("Run it with the official cosmos-predict1 inference (from its repository root):")
    for line in lora_formats.official_inference_command(out, "merged" if merge else "lora", size):
        note(f"  {line}")


def _check_options(fmt: str, merge: bool, out: Path) -> None:
    if fmt not in SUFFIXES:
        raise UserError(f"Unknown --format {fmt!r}.", f"use one of {', '.join(SUFFIXES)}.")
    if merge and fmt != "official":
        raise UserError("--merge writes an official checkpoint.", "use it with --format official, or drop it.")
    if out.suffix != SUFFIXES[fmt]:
        raise UserError(f"--out {out} does not end in {SUFFIXES[fmt]}, the {fmt} file type.", f"name it {out.stem}{SUFFIXES[fmt]}.")


def _check_same_base(adapter, base_path: Path) -> None:
    """An adapter of ours records the base it was trained on; exporting it with another base is refused."""
    from cosmos_lora.model.lora import read_adapter
    from cosmos_lora.model.checkpoint import base_fingerprint

    recorded = read_adapter(adapter.source)[2].get("base_fingerprint")
    if recorded and recorded != base_fingerprint(base_path):
        raise UserError(
            f"{adapter.source} was trained on another base than {base_path} (fingerprint {recorded}).",
            "point --checkpoints-dir at the checkpoints the run was trained with.",
        )


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora export --run <run> --format comfyui --out loras/sports.safetensors",
        "cosmos-lora export --run <run> --step 500 --no-ema --format diffusers --out sports_diffusers.safetensors",
        "cosmos-lora export --run <run> --format official --out checkpoints/Cosmos-Predict1-7B-Text2World_post-trained-lora/model.pt",
        "cosmos-lora export --run <run> --format official --merge --out checkpoints/Cosmos-Predict1-7B-Text2World_post-trained/model.pt",
        "cosmos-lora export --run <v2w-run> --format official --out checkpoints/Cosmos-Predict1-7B-Video2World_post-trained-lora/model.pt",
    ))(guarded(export))
