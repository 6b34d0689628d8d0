"""`cosmos-lora prepare`: raw videos -> training clips with captions, in the official dataset layout."""

import os
from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result


def prepare(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Folder of videos with captions: .txt sidecars or captions.csv/.jsonl, "
                                            "Vript's layout, or Panda-70M style CSV rows (or that CSV itself)."),
    name: str = typer.Option(..., "--name", help="Dataset name COLLECTION/DOMAIN, e.g. vript/sports; for Vript "
                                                 "the COLLECTION: clips go to <name>/<category>."),
    source_format: str = typer.Option("auto", help="folder, vript, panda, or auto (detected from the layout)."),
    frames: int = typer.Option(121, help="Frames per clip."),
    max_clips: int = typer.Option(None, help="At most this many clips per video (default: all)."),
    resolution: tuple[int, int] = typer.Option((720, 1280), help="Clip height and width (multiples of 16)."),
    workers: int = typer.Option(os.cpu_count() or 1, help="Parallel processes."),
    pad: bool = typer.Option(False, "--pad", help="Loop-pad whole videos shorter than one clip instead of skipping them."),
) -> None:
    """Cut non-overlapping clips from each video (scale to cover, centre-crop), one caption per clip.

    Vript: a clip takes the caption of the scene it overlaps longest in time, and each category becomes
    its own dataset. Panda-70M: clips come only from inside each captioned time range. Resumable: clips
    already written and verified are skipped. Broken inputs are listed in failed.csv and do not stop the job.
    """
    from cosmos_lora.data.prepare import prepare_clips
    from cosmos_lora.data.sources import detect_source_format
    from cosmos_lora.errors import UserError

    root = ctx.obj.dataset(name)
    vript = source_format == "vript" or (source_format == "auto" and detect_source_format(source) == "vript")
    _check_name_parts(name, vript)
    summary = prepare_clips(source, root, frames, max_clips, resolution[0], resolution[1], workers, pad,
                            source_format=source_format)
    note(
        f"{summary.source_format} source: {summary.clips_written} clip(s) written, {summary.clips_skipped_existing} "
        f"already there, {summary.videos_too_short} video(s) too short, {summary.videos_failed} failed "
        f"(see {root / 'failed.csv'})."
    )
    if summary.videos_upscaled:
        note(f"{summary.videos_upscaled} of {summary.videos_cut} source(s) were smaller than {resolution[0]}x"
             f"{resolution[1]} (height x width) and were upscaled (up to {summary.max_upscale:.1f}x).")
    if summary.clips_written + summary.clips_skipped_existing == 0:
        raise UserError(f"No clip was produced from {source}.", "check failed.csv and the frame count (--frames, --pad).")
    for dataset in summary.datasets:
        result(str(dataset))


def _check_name_parts(name: str, vript: bool) -> None:
    """Datasets are COLLECTION/DOMAIN, as posttrain and embed name them; Vript's categories are its domains."""
    from cosmos_lora.errors import UserError
    from cosmos_lora.paths import check_dataset_name

    parts = check_dataset_name(name).split("/")
    if vript and len(parts) != 1:
        raise UserError(f"--name {name!r}: for a Vript source --name is the COLLECTION alone; each video category "
                        "becomes its DOMAIN.", f"pass --name {parts[0]} (clips go to {parts[0]}/<category>).")
    if not vript and len(parts) != 2:
        example = f"my-videos/{parts[0]}" if len(parts) == 1 else f"{parts[0]}/{'-'.join(parts[1:])}"
        raise UserError(f"--name {name!r} is not COLLECTION/DOMAIN.", f"pass two parts, e.g. --name {example}.")


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        "cosmos-lora prepare raw/sports --name vript/sports",
        "cosmos-lora prepare raw/Vript --name vript --max-clips 4   # -> vript/<category> per video category",
        "cosmos-lora prepare raw/panda70m --name panda70m/vehicle --resolution 704 1280",
    ))(guarded(prepare))
