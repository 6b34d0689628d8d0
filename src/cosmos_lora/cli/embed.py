"""`cosmos-lora embed`: T5 caption embeddings for a dataset (official pickle format)."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result


def embed(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name COLLECTION/DOMAIN."),
    text_encoder: Path = typer.Option(None, help="T5 checkpoint folder (default: <checkpoints>/google-t5/t5-11b)."),
    batch_size: int = typer.Option(16, help="Captions per T5 batch."),
) -> None:
    """Embed every caption in metas/ into t5_xxl/<clip>.pickle; existing embeddings are kept."""
    import torch

    from cosmos_lora.data.embed import embed_dataset

    root = ctx.obj.dataset(dataset)
    folder = text_encoder or ctx.obj.checkpoints / "google-t5" / "t5-11b"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    summary = embed_dataset(root, folder, device, dtype, batch_size)
    note(f"{summary.embedded} caption(s) embedded, {summary.skipped_existing} already done.")
    for path in summary.missing_captions:
        note(f"no caption: {path}")
    result(str(root / "t5_xxl"))


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora embed --dataset vript/sports",
        "cosmos-lora embed --dataset demo/shapes --text-encoder checkpoints/cosmos-lora-tiny/t5-tiny",
    ))(guarded(embed))
