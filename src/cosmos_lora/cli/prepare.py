"""`cosmos-lora prepare`: raw videos -> training clips with captions, in the official dataset layout."""

import os
from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result


def prepare(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Folder of videos with captions (.txt sidecars, captions.csv or captions.jsonl)."),
    name: str = typer.Option(..., "--name", help="Dataset name COLLECTION/DOMAIN, e.g. vript/sports."),
    frames: int = typer.Option(121, help="Frames per clip."),
    max_clips: int = typer.Option(None, help="At most this many clips per video (default: all)."),
    resolution: tuple[int, int] = typer.Option((720, 1280), help="Clip height and width (multiples of 16)."),
    workers: int = typer.Option(os.cpu_count() or 1, help="Parallel processes."),
    pad: bool = typer.Option(False, "--pad", help="Loop-pad videos shorter than one clip instead of skipping them."),
) -> None:
    """Cut non-overlapping clips from each video (scale to cover, centre-crop), one caption per clip.

    Resumable: clips already written and verified are skipped. Broken inputs are listed in
    failed.csv and do not stop the job.
    """
    from cosmos_lora.data.prepare import prepare_clips
    from cosmos_lora.errors import UserError

    root = ctx.obj.dataset(name)
    summary = prepare_clips(source, root, frames, max_clips, resolution[0], resolution[1], workers, pad)
    note(
        f"{summary.clips_written} clip(s) written, {summary.clips_skipped_existing} already there, "
        f"{summary.videos_too_short} video(s) too short, {summary.videos_failed} failed (see failed.csv)."
    )
    if summary.clips_written + summary.clips_skipped_existing == 0:
        raise UserError(f"No clip was produced from {source}.", "check failed.csv and the frame count (--frames, --pad).")
    result(str(root))


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora prepare raw/sports --name vript/sports",
        "cosmos-lora prepare raw/cars --name panda70m/vehicle --max-clips 2 --resolution 704 1280",
    ))(guarded(prepare))
