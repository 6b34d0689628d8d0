"""`cosmos-lora embed`: T5 caption embeddings for a dataset (official pickle format), and the latent cache."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result

TOKENIZER = "Cosmos-Tokenize1-CV8x8x8-720p"
LATENT_OPTIONS = ("--tokenizer", "--frames", "--resolution", "--pixel-chunk", "--latent-batch-size")


def embed(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name COLLECTION/DOMAIN."),
    text_encoder: Path = typer.Option(None, help="T5 checkpoint folder (default: <checkpoints>/google-t5/t5-11b)."),
    batch_size: int = typer.Option(16, help="Captions per T5 batch (halved on GPU out-of-memory)."),
    latents: bool = typer.Option(False, "--latents", help="Also cache every clip's tokenizer latent for training."),
    tokenizer: Path = typer.Option(None, help=f"Tokenizer folder (default: <checkpoints>/{TOKENIZER})."),
    frames: int = typer.Option(None, help="Frames per latent, as training uses them (default: 121)."),
    resolution: tuple[int, int] = typer.Option(None, help="Training height and width (default: 704 1280)."),
    pixel_chunk: int = typer.Option(None, help="Frames the tokenizer encodes at once (default: 121)."),
    latent_batch_size: int = typer.Option(None, help="Clips per tokenizer batch (default: 4, halved on out-of-memory)."),
    nproc: int = typer.Option(None, help="Processes, one per GPU (default: visible GPUs, 1 on CPU)."),
) -> None:
    """Embed every caption in metas/ into t5_xxl/<clip>.pickle (with a record of the caption beside it,
    <clip>.json); with --latents also encode every clip into latents/<key>/<clip>.safetensors. Results
    still made from the current caption, encoder and clip are kept, so a rerun resumes; the rest are redone."""
    from cosmos_lora.data.embed import EmbedJob, LatentSettings, launch_embed
    from cosmos_lora.distributed import visible_gpus
    from cosmos_lora.errors import UserError

    given = [flag for flag, value in zip(LATENT_OPTIONS, (tokenizer, frames, resolution, pixel_chunk,
                                                          latent_batch_size)) if value is not None]
    if given and not latents:
        raise UserError(f"{', '.join(given)} only apply to the latent cache.", "add --latents, or drop them.")
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc {nproc} is less than 1.", "use --nproc 1 or more.")
    root = ctx.obj.dataset(dataset)
    settings = None
    if latents:
        height, width = resolution or (704, 1280)
        settings = LatentSettings(str(tokenizer or ctx.obj.checkpoints / TOKENIZER), frames or 121, height, width,
                                  pixel_chunk or 121, latent_batch_size or 4)
    job = EmbedJob(str(root), str(text_encoder or ctx.obj.checkpoints / "google-t5" / "t5-11b"), batch_size, settings)
    summary = launch_embed(job, nproc or visible_gpus() or 1)
    redone = [f"{n} {why}" for n, why in ((summary.redone_changed, "whose caption or text encoder changed"),
                                          (summary.redone_unrecorded, "made elsewhere, with no record")) if n]
    note(f"{summary.embedded} caption(s) embedded" + (f" ({', '.join(redone)})" if redone else "")
         + f", {summary.skipped_existing} already done.")
    for path in summary.missing_captions:
        note(f"no caption: {path}")
    for problem in summary.bad_captions:
        note(f"not embedded: {problem}")
    result(str(root / "t5_xxl"))
    if latents:
        note(f"{summary.latents_encoded} latent(s) encoded, {summary.latents_skipped_existing} already cached, "
             f"{len(summary.latent_failures)} failed" + (" (see failed.csv there)." if summary.latent_failures else "."))
        for failure in summary.latent_failures[:20]:
            note(f"latent failed: {failure['reason']}")
        result(summary.latents_dir)


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora embed --dataset vript/sports",
        "cosmos-lora embed --dataset vript/sports --latents --frames 121 --resolution 704 1280",
        "cosmos-lora embed --dataset demo/shapes --text-encoder checkpoints/cosmos-lora-tiny/t5-tiny --nproc 2",
    ))(guarded(embed))
