"""`cosmos-lora download`: the official weights, only the files needed, in the official layout."""

import typer

from cosmos_lora.cli.output import examples, guarded, note, result


def download(
    ctx: typer.Context,
    model: str = typer.Option("7B-Text2World", help="7B-Text2World, 14B-Text2World or 7B-Video2World."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List files, sizes and what is present; fetch nothing."),
) -> None:
    """Fetch the DiT, the video tokenizer and the T5-11B encoder into the checkpoints folder.

    Needs a Hugging Face token with the models' licences accepted: HF_TOKEN or `hf auth login`.
    Re-running skips complete files and resumes partial ones.
    """
    from cosmos_lora.hub.download import download as fetch
    from cosmos_lora.hub.download import format_plan

    report = fetch(model, ctx.obj.checkpoints, dry_run=dry_run)
    if dry_run:
        result(format_plan(report.plan))
        return
    note(f"Fetched {len(report.fetched)} file(s); {len(report.skipped)} already present.")
    result(str(ctx.obj.checkpoints))


def register(app: typer.Typer) -> None:
    app.command(epilog=examples("cosmos-lora download --dry-run", "HF_TOKEN=hf_... cosmos-lora download --model 7B-Text2World"))(
        guarded(download)
    )
