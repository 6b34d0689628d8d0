"""Raw captioned videos -> fixed-length training clips in the dataset layout (`cosmos-lora prepare`).

Three steps, kept apart so new sources (Vript, Panda-70M, ...) only add a parser:
  1. a source parser lists `SourceVideo`s with their captions (`find_folder_sources`);
  2. a planner turns each source into `ClipJob`s, one per output clip (`plan_windows` cuts
     non-overlapping windows from the start; a time-stamped source would make its own jobs);
  3. a worker cuts all jobs of one source in a single decoding pass (`cut_source`).

A long job must survive bad inputs and interruptions: a broken source is listed in `failed.csv`
and the rest carry on; a clip already on disk with the right frame count and size is kept, so
rerunning the same command resumes; every clip is written to a temporary file, renamed, then
probed to verify it.
"""

import csv
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cosmos_lora.data.layout import FAILED_COLUMNS, DatasetLayout, update_index, write_csv
from cosmos_lora.data.video import VideoWriter, iter_video_frames, probe_video, resize_cover_crop
from cosmos_lora.errors import UserError
from cosmos_lora.paths import atomic_path

SOURCE_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
CAPTION_TABLES = ("captions.csv", "captions.jsonl")


@dataclass(frozen=True)
class SourceVideo:
    path: Path
    name: str  # unique within the source folder; clips are named `<name>_<k:03d>`
    caption: str
    caption_source: str  # "sidecar", "captions.csv" or "captions.jsonl"


@dataclass(frozen=True)
class ClipJob:
    """One output clip: `clip_frames` frames of `source` from `start_frame`, and its caption."""

    source: Path
    start_frame: int
    caption: str
    caption_source: str
    clip: str
    fps: float
    loop_pad: bool = False  # the source is shorter than a clip: repeat it from the start


@dataclass
class CutResult:
    source: Path
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass
class PrepareSummary:
    clips_written: int
    clips_skipped_existing: int
    videos_too_short: int
    videos_failed: int
    out_root: Path


def prepare_clips(src: Path, out_root: Path, clip_frames: int = 121, max_clips_per_video: int | None = None,
                  height: int = 720, width: int = 1280, workers: int = os.cpu_count(),
                  pad: bool = False, show_progress: bool = True) -> PrepareSummary:
    """Cuts every captioned video under `src` into clips of `clip_frames` frames at height x width.

    Windows do not overlap and start at frame 0; at most `max_clips_per_video` per source. Each clip
    keeps its source's fps and is cover-resized and centre-cropped. Writes `videos/`, `metas/`,
    `index.csv` and `failed.csv` under `out_root`. Sources shorter than one clip are skipped and
    counted (with `pad`, loop-padded to one clip instead). The progress bar goes to stderr; turn it
    off with `show_progress=False` (for `--json` or quiet output).
    """
    src, out_root = Path(src), Path(out_root)
    _check_arguments(src, clip_frames, max_clips_per_video, height, width, workers)
    sources, failures = find_folder_sources(src, exclude=out_root)
    if not sources and not failures:
        raise UserError(f"No videos ({', '.join(SOURCE_SUFFIXES)}) found under {src}.",
                        "pass the folder that holds the raw videos (it is searched recursively).")
    with _progress(show_progress) as progress, _executor(workers, len(sources)) as pool:
        planner = _Call(plan_windows, clip_frames=clip_frames, max_clips=max_clips_per_video, pad=pad)
        plans = list(_map(pool, planner, sources, progress.add_task("probing sources", total=len(sources)),
                          progress))
        all_jobs = [jobs for _, (jobs, _) in plans if jobs]
        cutter = _Call(cut_source, out_root=out_root, clip_frames=clip_frames, height=height, width=width)
        cut_task = progress.add_task("cutting clips", total=sum(len(jobs) for jobs in all_jobs))
        cuts = list(_map(pool, cutter, all_jobs, cut_task, progress, advance=len))

    too_short = [{"source": _relative(src, s.path), "reason": reason} for s, (jobs, reason) in plans
                 if not jobs and reason.startswith("too short")]
    failures += [{"source": _relative(src, s.path), "reason": reason} for s, (jobs, reason) in plans
                 if not jobs and not reason.startswith("too short")]
    failures += [{"source": _relative(src, r.source), "reason": r.failure} for _, r in cuts if r.failure]
    done = {clip for _, r in cuts for clip in r.written + r.existing}
    layout = DatasetLayout(out_root)
    update_index(layout, [_index_row(src, job, clip_frames, height, width)
                          for jobs in all_jobs for job in jobs if job.clip in done])
    write_csv(layout.failed_csv, FAILED_COLUMNS, sorted(failures + too_short, key=lambda row: row["source"]))
    return PrepareSummary(clips_written=sum(len(r.written) for _, r in cuts),
                          clips_skipped_existing=sum(len(r.existing) for _, r in cuts),
                          videos_too_short=len(too_short), videos_failed=len({row["source"] for row in failures}),
                          out_root=out_root)


# ---------------------------------------------------------------- 1. source parsing: a folder of videos


def find_folder_sources(src: Path, exclude: Path | None = None) -> tuple[list[SourceVideo], list[dict]]:
    """Videos under `src` (recursive) with their captions, and `failed.csv` rows for those without one.

    A caption comes from a `.txt` sidecar with the video's stem, else from `captions.csv`
    (`path,caption`) or `captions.jsonl` (`{"path": ..., "caption": ...}`) at the top of `src`, with
    paths relative to `src`.
    """
    paths = _find_videos(src, exclude)
    table = _read_caption_tables(src)
    names = _unique_names(src, paths)
    sources, failures = [], []
    for path in paths:
        relative = _relative(src, path)
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        caption_source = "sidecar"
        if not caption and relative in table:
            caption, caption_source = table[relative]
        if caption:
            sources.append(SourceVideo(path, names[path], caption, caption_source))
        else:
            failures.append({"source": relative, "reason": f"no caption: add {sidecar.name} beside it or a row "
                                                          f"in {CAPTION_TABLES[0]} / {CAPTION_TABLES[1]}"})
    found = {_relative(src, path) for path in paths}
    for listed, (_, table_name) in table.items():
        if listed not in found:
            failures.append({"source": listed, "reason": f"listed in {table_name} but no such video under {src}"})
    return sources, failures


def _find_videos(src: Path, exclude: Path | None) -> list[Path]:
    exclude = exclude.resolve() if exclude is not None else None
    paths = []
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() not in SOURCE_SUFFIXES or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(src).parts):
            continue  # hidden files, including our own half-written temporary files
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue  # the output folder may sit inside the source folder
        paths.append(path)
    return paths


def _read_caption_tables(src: Path) -> dict[str, tuple[str, str]]:
    """{path relative to src: (caption, table file name)} from captions.csv and captions.jsonl."""
    table = {}
    for name in CAPTION_TABLES:
        file = src / name
        if file.is_file():
            rows = _read_csv_captions(file) if name.endswith(".csv") else _read_jsonl_captions(file)
            table.update({_normalise(src, path): (caption.strip(), name) for path, caption in rows if caption.strip()})
    return table


def _read_csv_captions(file: Path) -> list[tuple[str, str]]:
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"path", "caption"} <= set(reader.fieldnames or []):
            raise UserError(f"{file} has columns {reader.fieldnames}; it needs a header row with 'path' and 'caption'.",
                            "make the first line `path,caption` and quote captions that contain commas.")
        return [(row["path"] or "", row["caption"] or "") for row in reader]


def _read_jsonl_captions(file: Path) -> list[tuple[str, str]]:
    rows = []
    for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append((str(record["path"]), str(record["caption"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{file} line {line_number} is not a JSON object with 'path' and 'caption'.",
                            'write one object per line: {"path": "sub/video.mp4", "caption": "..."}.') from None
    return rows


def _normalise(src: Path, listed: str) -> str:
    """A caption table path as the posix path relative to `src` (absolute paths inside src allowed)."""
    path = Path(listed.strip())
    if path.is_absolute():
        try:
            return path.resolve().relative_to(src.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return PurePosixPath(listed.strip().replace("\\", "/")).as_posix().removeprefix("./")


def _unique_names(src: Path, paths: list[Path]) -> dict[Path, str]:
    """The stem, or for stems found twice (`a/x.mp4`, `b/x.mov`) the relative path, so clips never collide."""
    stems = [path.stem for path in paths]
    return {path: path.stem if stems.count(path.stem) == 1 else _relative(src, path).replace("/", "_").replace(".", "_")
            for path in paths}


def _relative(src: Path, path: Path) -> str:
    return path.relative_to(src).as_posix()


# ---------------------------------------------------------------- 2. planning: windows from the start


def plan_windows(source: SourceVideo, clip_frames: int, max_clips: int | None,
                 pad: bool) -> tuple[list[ClipJob], str | None]:
    """Jobs for non-overlapping `clip_frames` windows from frame 0 (at most `max_clips`).

    Returns (jobs, None), or ([], reason) when the source is broken or too short. Frames are counted
    by decoding, but only as far as the last window needs.
    """
    limit = max_clips * clip_frames if max_clips else None
    try:
        info = probe_video(source.path, max_frames=limit)
    except UserError as err:
        return [], _one_line(err.problem)
    num_windows = info.frames // clip_frames
    if max_clips:
        num_windows = min(num_windows, max_clips)
    if num_windows == 0 and not pad:
        return [], f"too short: {info.frames} frames < {clip_frames} per clip (use pad to loop it)"
    starts = [k * clip_frames for k in range(num_windows)] or [0]  # [0] alone: one loop-padded clip
    return [ClipJob(source.path, start, source.caption, source.caption_source, f"{source.name}_{k:03d}",
                    info.fps, loop_pad=num_windows == 0) for k, start in enumerate(starts)], None


# ---------------------------------------------------------------- 3. cutting: one decoding pass per source


def cut_source(jobs: list[ClipJob], out_root: Path, clip_frames: int, height: int, width: int) -> CutResult:
    """Writes every clip of one source (all jobs share `source`), skipping clips already complete.

    Never raises for a bad source: the reason comes back in `CutResult.failure`, with the clips
    finished before the problem kept.
    """
    layout = DatasetLayout(Path(out_root))
    result = CutResult(source=jobs[0].source)
    todo = []
    for job in jobs:
        if _clip_is_complete(layout.video(job.clip), clip_frames, height, width):
            _write_text(layout.caption(job.clip), job.caption + "\n")
            result.existing.append(job.clip)
        else:
            todo.append(job)
    if todo:
        try:
            result.written = _cut_in_one_pass(todo, layout, clip_frames, height, width)
        except (UserError, RuntimeError, OSError) as err:
            problem = err.problem if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            result.failure = _one_line(problem)
            result.written = [job.clip for job in todo if _clip_is_complete(layout.video(job.clip), clip_frames,
                                                                            height, width)]
    return result


def _cut_in_one_pass(jobs: list[ClipJob], layout: DatasetLayout, clip_frames: int, height: int,
                     width: int) -> list[str]:
    """Decodes the source once, streaming each frame into the writers whose window covers it."""
    last_frame = max(job.start_frame for job in jobs) + clip_frames
    open_writers: dict[ClipJob, VideoWriter] = {}
    looped: list = []  # frames of a loop-padded source, which is shorter than one clip
    written = []
    try:
        for index, frame in enumerate(iter_video_frames(jobs[0].source, max_frames=last_frame)):
            for job in jobs:
                if job.start_frame == index:
                    _write_text(layout.caption(job.clip), job.caption + "\n")
                    open_writers[job] = VideoWriter(layout.video(job.clip), height, width, job.fps)
            frame = resize_cover_crop(frame[None], height, width)
            for job, writer in list(open_writers.items()):
                writer.write(frame)
                looped += [frame] if job.loop_pad else []
                if index == job.start_frame + clip_frames - 1:
                    written.append(_finish(open_writers.pop(job), clip_frames, height, width))
        for job, writer in list(open_writers.items()):
            if not job.loop_pad:
                raise UserError(f"{job.source} ended at frame {writer.frames_written + job.start_frame}, inside clip "
                                f"{job.clip} (frames {job.start_frame}..{job.start_frame + clip_frames - 1}).")
            while writer.frames_written < clip_frames:
                writer.write(looped[writer.frames_written % len(looped)])
            written.append(_finish(open_writers.pop(job), clip_frames, height, width))
    finally:
        for writer in open_writers.values():
            writer.abort()
    return written


def _finish(writer: VideoWriter, clip_frames: int, height: int, width: int) -> str:
    """Closes a clip and probes it: a clip that does not read back as written is deleted."""
    writer.close()
    info = probe_video(writer.path)
    if (info.frames, info.height, info.width) != (clip_frames, height, width):
        writer.path.unlink(missing_ok=True)
        raise UserError(f"{writer.path} read back as {info.frames} frames of {info.height}x{info.width}, expected "
                        f"{clip_frames} of {height}x{width}; deleted it.")
    return writer.path.stem


def _clip_is_complete(path: Path, clip_frames: int, height: int, width: int) -> bool:
    if not path.is_file():
        return False
    try:
        info = probe_video(path)
    except UserError:
        return False
    return (info.frames, info.height, info.width) == (clip_frames, height, width)


def _write_text(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- plumbing


def _check_arguments(src: Path, clip_frames: int, max_clips: int | None, height: int, width: int,
                     workers: int) -> None:
    if not src.is_dir():
        raise UserError(f"Source folder {src} does not exist.", "pass the folder that holds the raw videos.")
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise UserError(f"Clip size {height}x{width} (HxW) is not a multiple of 16 in both dimensions; the video "
                        "tokenizer (8x) and the DiT patches (2x) need that.",
                        "use a size such as 720x1280, 704x1280 or 480x848.")
    if clip_frames < 1:
        raise UserError(f"clip_frames must be at least 1, got {clip_frames}.", "Cosmos trains on 121-frame clips.")
    if max_clips is not None and max_clips < 1:
        raise UserError(f"max_clips_per_video must be at least 1, got {max_clips}.", "leave it unset for no limit.")
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}.", "use 1 to run in this process.")


def _index_row(src: Path, job: ClipJob, clip_frames: int, height: int, width: int) -> dict:
    return {"clip": job.clip, "source": _relative(src, job.source), "start_frame": job.start_frame,
            "start_time": round(job.start_frame / job.fps, 6), "fps": round(job.fps, 6), "frames": clip_frames,
            "height": height, "width": width, "caption_source": job.caption_source}


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Call:
    """A picklable `fn(item, **kwargs)` for the process pool (lambdas and closures do not pickle)."""

    def __init__(self, fn: Callable, **kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, item):
        return self.fn(item, **self.kwargs)


def _map(pool: Executor | None, fn: Callable, items: list, task, progress, advance: Callable = lambda item: 1
         ) -> Iterator[tuple]:
    """Yields (item, fn(item)) as each finishes, advancing `task`; runs in this process when `pool` is None."""
    if pool is None:
        results = ((item, fn(item)) for item in items)
    else:
        futures = {pool.submit(fn, item): item for item in items}
        results = ((futures[future], future.result()) for future in as_completed(futures))
    for item, result in results:
        progress.advance(task, advance(item))
        yield item, result


def _executor(workers: int, num_sources: int):
    """A process pool, or None for workers=1 (easier to debug and profile)."""
    if workers == 1 or num_sources <= 1:
        return nullcontext(None)
    # spawn, not fork: the parent has threads (the progress bar), and fork with threads can deadlock.
    return ProcessPoolExecutor(min(workers, num_sources), mp_context=multiprocessing.get_context("spawn"))


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
