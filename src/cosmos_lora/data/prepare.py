"""Raw captioned videos -> fixed-length training clips in the dataset layout (`cosmos-lora prepare`).

Three steps, kept apart so a new source only adds a parser:
  1. a source parser (`cosmos_lora.data.sources`: a folder with captions, Vript, Panda-70M) lists
     `SourceVideo`s with their captions, whole-video or time-stamped;
  2. a planner turns each source into `ClipJob`s, one per output clip (`plan_clips`):
     non-overlapping windows from the start, captioned by the video's caption or by the scene that
     overlaps the window longest; or, for captioned time ranges, windows inside each range;
  3. a worker cuts all jobs of one source in a single decoding pass (`cut_source`).

A long job must survive bad inputs and interruptions: a broken or unreadable input is listed in
`failed.csv` and the rest carry on; a clip already on disk with the right frame count and size is
kept, so rerunning the same command resumes; every clip is written to a temporary file, renamed,
then probed to verify it. Ctrl-C or SIGTERM stops every worker within seconds, each removing its
temporary files, and ends in `Stopped`. A dataset holds one cut (`cut.json`: frames, size, limits);
a rerun with another is refused, so clips of two sizes are never listed together. Vript sources are
split into one dataset per category: `<out_root>/<category-slug>/`, each with its own `index.csv`;
`failed.csv` and `cut.json` sit in `out_root`.
"""

import contextlib
import csv
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cosmos_lora.data.layout import FAILED_COLUMNS, DatasetLayout, update_index, write_csv
from cosmos_lora.data.sources import SOURCE_SUFFIXES, SourceVideo, TimedCaption, find_sources
from cosmos_lora.data.sources import relative as _relative
from cosmos_lora.data.video import (VideoWriter, count_frames, cover_scale, iter_video_frames, probe_video,
                                    resize_cover_crop)
from cosmos_lora.errors import EXIT_STOPPED, Stopped, UserError
from cosmos_lora.files import atomic_write
from cosmos_lora.progress import progress_bar

TOO_SHORT = "too short"  # the start of every failed.csv reason counted as a short video, not a failure
WORKER_GRACE_S = 10  # after a stop, how long a worker may take to remove its temporary files before it is killed


@dataclass(frozen=True)
class Cut:
    """How a dataset's clips were cut; one per dataset, recorded in `cut.json`."""

    frames: int
    height: int
    width: int
    max_clips: int | None
    pad: bool

    def options(self) -> str:
        text = f"--frames {self.frames} --resolution {self.height} {self.width}"
        return text + (f" --max-clips {self.max_clips}" if self.max_clips else "") + (" --pad" if self.pad else "")


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
    domain: str = ""  # the clip goes to `<out_root>/<domain>/`
    source_size: tuple[int, int] = (0, 0)  # the source's height and width


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
    source_format: str = "folder"
    clips_per_domain: dict[str, int] = field(default_factory=dict)  # "" is out_root itself
    videos_cut: int = 0  # sources that gave clips
    videos_upscaled: int = 0  # of those, sources smaller than the clip size (they look softer)
    max_upscale: float = 1.0  # the largest factor one of them was scaled up by

    @property
    def datasets(self) -> list[Path]:
        """The dataset folders that hold clips (several for Vript, one per category)."""
        return [self.out_root / domain if domain else self.out_root for domain in sorted(self.clips_per_domain)]


def prepare_clips(src: Path, out_root: Path, clip_frames: int = 121, max_clips_per_video: int | None = None,
                  height: int = 720, width: int = 1280, workers: int = os.cpu_count(),
                  pad: bool = False, show_progress: bool = True, source_format: str = "auto") -> PrepareSummary:
    """Cuts every captioned video of `src` into clips of `clip_frames` frames at height x width.

    `source_format` is folder, vript, panda or auto (see `cosmos_lora.data.sources`). Windows do not
    overlap; at most `max_clips_per_video` per source. Each clip keeps its source's fps and is
    cover-resized and centre-cropped. Writes `videos/`, `metas/`, `index.csv` under `out_root` (Vript:
    under `out_root/<category>/`) and `failed.csv` in `out_root`. Sources shorter than one clip are
    skipped and counted (with `pad`, whole videos are loop-padded to one clip instead). The progress
    bar goes to stderr; turn it off with `show_progress=False` (for `--json` or quiet output).
    """
    src, out_root = Path(src), Path(out_root)
    _check_arguments(src, clip_frames, max_clips_per_video, height, width, workers)
    cut = Cut(clip_frames, height, width, max_clips_per_video, pad)
    _check_cut(DatasetLayout(out_root), cut)
    sources, failures, source_format = find_sources(src, source_format, exclude=out_root)
    folder = src.parent if src.is_file() else src
    if not sources and not failures:
        raise UserError(f"No videos ({', '.join(SOURCE_SUFFIXES)}) found under {src}.",
                        "pass the folder that holds the raw videos (it is searched recursively).")
    atomic_write(DatasetLayout(out_root).cut_json, json.dumps(asdict(cut), indent=1) + "\n")
    try:
        with _stops_raised(), progress_bar(show_progress) as progress, _executor(workers, len(sources)) as pool:
            planner = _Call(plan_clips, clip_frames=clip_frames, max_clips=max_clips_per_video, pad=pad)
            plans = list(_map(pool, planner, sources, progress.add_task("probing sources", total=len(sources)),
                              progress))
            all_jobs = [jobs for _, (jobs, _) in plans if jobs]
            cutter = _Call(cut_source, out_root=out_root, clip_frames=clip_frames, height=height, width=width)
            cut_task = progress.add_task("cutting clips", total=sum(len(jobs) for jobs in all_jobs))
            cuts = list(_map(pool, cutter, all_jobs, cut_task, progress, advance=len))
    except (KeyboardInterrupt, _WorkerStopped):
        raise Stopped("Stopped before every clip was cut; rerun the same command to continue "
                      "(finished clips are kept).") from None

    too_short = [{"source": _relative(folder, s.path), "reason": reason} for s, (jobs, reason) in plans
                 if not jobs and reason.startswith(TOO_SHORT)]
    failures += [{"source": _relative(folder, s.path), "reason": reason} for s, (jobs, reason) in plans
                 if not jobs and not reason.startswith(TOO_SHORT)]
    failures += [{"source": _relative(folder, r.source), "reason": r.failure} for _, r in cuts if r.failure]
    done = {clip for _, r in cuts for clip in r.written + r.existing}
    per_domain: dict[str, list[dict]] = {}
    for job in (job for jobs in all_jobs for job in jobs if job.clip in done):
        per_domain.setdefault(job.domain, []).append(_index_row(folder, job, clip_frames, height, width))
    for domain, rows in per_domain.items():
        update_index(DatasetLayout(out_root / domain), rows)
    write_csv(DatasetLayout(out_root).failed_csv, FAILED_COLUMNS,
              sorted(failures + too_short, key=lambda row: row["source"]))
    upscales = [scale for scale in (cover_scale(*jobs[0].source_size, height, width) for jobs in all_jobs) if scale > 1]
    return PrepareSummary(clips_written=sum(len(r.written) for _, r in cuts),
                          clips_skipped_existing=sum(len(r.existing) for _, r in cuts),
                          videos_too_short=len(too_short), videos_failed=len({row["source"] for row in failures}),
                          out_root=out_root, source_format=source_format,
                          clips_per_domain={domain: len(rows) for domain, rows in sorted(per_domain.items())},
                          videos_cut=len(all_jobs), videos_upscaled=len(upscales), max_upscale=max(upscales, default=1.0))


# ---------------------------------------------------------------- 2. planning: which windows, which caption


def plan_clips(source: SourceVideo, clip_frames: int, max_clips: int | None,
               pad: bool) -> tuple[list[ClipJob], str | None]:
    """Jobs for one source, or ([], reason) when it is broken, too short or nothing could be captioned."""
    if source.ranges:
        return plan_range_windows(source, clip_frames, max_clips)
    jobs, reason = plan_windows(source, clip_frames, max_clips, pad)
    if source.scenes and jobs:
        jobs = [caption_by_overlap(job, source.scenes, clip_frames) for job in jobs]
        jobs = [job for job in jobs if job is not None]
        reason = None if jobs else "no scene's time stamps overlap any clip window (are they in seconds?)"
    return jobs, reason


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
        return [], f"{TOO_SHORT}: {info.frames} frames < {clip_frames} per clip (use pad to loop it)"
    starts = [k * clip_frames for k in range(num_windows)] or [0]  # [0] alone: one loop-padded clip
    return [ClipJob(source.path, start, source.caption, source.caption_source, f"{source.name}_{k:03d}",
                    info.fps, loop_pad=num_windows == 0, domain=source.domain, source_size=(info.height, info.width))
            for k, start in enumerate(starts)], None


def caption_by_overlap(job: ClipJob, scenes: tuple[TimedCaption, ...], clip_frames: int) -> ClipJob | None:
    """The job captioned by the scene its time span overlaps longest (ties: the earlier scene), or None.

    A clip of frames [s, s + n) at f fps shows [s / f, (s + n) / f) seconds of the source.
    """
    start = job.start_frame / job.fps
    end = start + clip_frames / job.fps
    overlaps = [min(end, scene.end) - max(start, scene.start) for scene in scenes]
    best = max(range(len(scenes)), key=lambda i: (overlaps[i], -i))
    if overlaps[best] <= 0:
        return None
    return replace(job, caption=scenes[best].caption, caption_source=scenes[best].label)


def plan_range_windows(source: SourceVideo, clip_frames: int,
                       max_clips: int | None) -> tuple[list[ClipJob], str | None]:
    """Jobs for non-overlapping windows inside each captioned range, each with that range's caption.

    Range r covers frames ceil(start * fps) .. floor(end * fps) (exclusive), cut at the video's end;
    its windows start at its first frame. With `max_clips`, the first window of every range comes
    before the second of any, so a limit spreads clips over the captions. Clips are named
    `<name>_<r:03d>_<k:03d>` (range r, window k), so the names do not depend on the limit.
    """
    try:
        info = probe_video(source.path, max_frames=1)
        fps = info.fps
        last = max(_frame_at(scene.end, fps, math.floor) for scene in source.ranges)
        frames = count_frames(source.path, limit=max(last, 1))
    except UserError as err:
        return [], _one_line(err.problem)
    candidates = []  # (window k, range r, start frame)
    for r, scene in enumerate(source.ranges):
        first, stop = _frame_at(scene.start, fps, math.ceil), min(_frame_at(scene.end, fps, math.floor), frames)
        windows = max(stop - first, 0) // clip_frames
        candidates += [(k, r, first + k * clip_frames) for k in range(windows)]
    if not candidates:
        longest = max(min(_frame_at(s.end, fps, math.floor), frames) - _frame_at(s.start, fps, math.ceil)
                      for s in source.ranges)
        return [], f"{TOO_SHORT}: no captioned range holds {clip_frames} frames (longest: {max(longest, 0)})"
    chosen = sorted(candidates)[:max_clips] if max_clips else candidates
    return [ClipJob(source.path, start, source.ranges[r].caption, source.ranges[r].label,
                    f"{source.name}_{r:03d}_{k:03d}", fps, domain=source.domain, source_size=(info.height, info.width))
            for k, r, start in sorted(chosen, key=lambda c: c[2])], None


def _frame_at(seconds: float, fps: float, rounding: Callable[[float], int]) -> int:
    """The frame boundary at `seconds`; the rounding of 1e-6 s guards against 0.1 * 30 = 3.0000000000000004."""
    return int(rounding(round(seconds * fps, 6)))


# ---------------------------------------------------------------- 3. cutting: one decoding pass per source


def cut_source(jobs: list[ClipJob], out_root: Path, clip_frames: int, height: int, width: int) -> CutResult:
    """Writes every clip of one source (all jobs share `source` and `domain`), skipping clips already complete.

    Never raises for a bad source: the reason comes back in `CutResult.failure`, with the clips
    finished before the problem kept.
    """
    layout = DatasetLayout(Path(out_root) / jobs[0].domain)
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
    atomic_write(path, text)


# ---------------------------------------------------------------- one cut per dataset


def _check_cut(layout: DatasetLayout, cut: Cut) -> None:
    """Refuses a run whose cut differs from the one the dataset holds (`cut.json`; for a dataset from
    before it, the sizes in index.csv). Mixing would list clips of two sizes together."""
    recorded = _recorded_cut(layout)
    if recorded is None or recorded == {k: v for k, v in asdict(cut).items() if k in recorded}:
        return
    was = Cut(**recorded).options() if set(recorded) == set(asdict(cut)) else ", ".join(
        f"{k} {v}" for k, v in recorded.items())
    raise UserError(f"{layout.root} holds clips cut with {was}; this run asks for {cut.options()}, and one dataset "
                    "cannot hold both.",
                    f"rerun with {was}, pick another --name, or delete {layout.root} to cut it anew.")


def _recorded_cut(layout: DatasetLayout) -> dict | None:
    if layout.cut_json.is_file():
        try:
            recorded = json.loads(layout.cut_json.read_text(encoding="utf-8"))
            Cut(**recorded)
            return recorded
        except (ValueError, TypeError, OSError):
            raise UserError(f"{layout.cut_json} is damaged, so the dataset's cut is unknown.",
                            f"delete {layout.root} and prepare it again.") from None
    if not layout.index_csv.is_file():
        return None
    with open(layout.index_csv, newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f), None)
    if first is None:
        return None
    return {key: int(first[key]) for key in ("frames", "height", "width")}


# ---------------------------------------------------------------- plumbing


def _check_arguments(src: Path, clip_frames: int, max_clips: int | None, height: int, width: int,
                     workers: int) -> None:
    if not src.is_dir() and not (src.is_file() and src.suffix == ".csv"):
        raise UserError(f"Source folder {src} does not exist.",
                        "pass the folder that holds the raw videos (or a Panda-70M style CSV beside them).")
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


def _index_row(folder: Path, job: ClipJob, clip_frames: int, height: int, width: int) -> dict:
    return {"clip": job.clip, "source": _relative(folder, job.source), "start_frame": job.start_frame,
            "start_time": round(job.start_frame / job.fps, 6), "fps": round(job.fps, 6), "frames": clip_frames,
            "height": height, "width": width, "caption_source": job.caption_source}


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Call:
    """A picklable `fn(item, **kwargs)` for the process pool (lambdas and closures do not pickle)."""

    def __init__(self, fn: Callable, **kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, item):
        global _worker_busy
        if _worker_stopping:  # a job queued before the stop: not started
            raise _WorkerStopped(EXIT_STOPPED)
        _worker_busy = True
        try:
            return self.fn(item, **self.kwargs)
        finally:
            _worker_busy = False


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


@contextlib.contextmanager
def _executor(workers: int, num_sources: int) -> Iterator[Executor | None]:
    """A process pool, or None for workers=1 (easier to debug and profile).

    When the block raises (a stop above all), queued work is cancelled and every worker gets SIGTERM:
    it unwinds the clip in hand, removing its temporary files, and exits; one that takes longer than
    WORKER_GRACE_S is killed. Leaving the pool's own shutdown to wait would cut every queued clip first.
    """
    if workers == 1 or num_sources <= 1:
        yield None
        return
    # spawn, not fork: the parent has threads (the progress bar), and fork with threads can deadlock.
    pool = ProcessPoolExecutor(min(workers, num_sources), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_started)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        children = multiprocessing.active_children()
        for child in children:
            child.terminate()
        for child in children:
            child.join(WORKER_GRACE_S)
            if child.is_alive():
                child.kill()
        raise
    pool.shutdown()


class _WorkerStopped(SystemExit):
    """SIGTERM/Ctrl-C in a pool worker: unwinds the clip in hand (its temporary files are removed)."""


_worker_stopping = False
_worker_busy = False  # inside a job: a stop unwinds it; between jobs there is nothing to clean up


def _worker_stop(signum, frame):
    global _worker_stopping
    if _worker_stopping:  # once: the parent and the terminal may both signal; a second would cut the cleanup short
        return
    _worker_stopping = True
    if not _worker_busy:
        # idle (waiting for work, or in the pool's own machinery): an exception raised there would be printed
        # as "Exception ignored" with a traceback, so leave at once
        os._exit(EXIT_STOPPED)
    raise _WorkerStopped(EXIT_STOPPED)


def _ignore_stops_raised_in_finalizers(unraisable) -> None:
    """A stop that lands in a finalizer (a lock release, a __del__) cannot unwind it: exit quietly after it."""
    if not isinstance(unraisable.exc_value, _WorkerStopped):
        sys.__unraisablehook__(unraisable)


def _worker_started() -> None:
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)  # a stopped decoder is killed on purpose
    sys.unraisablehook = _ignore_stops_raised_in_finalizers
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _worker_stop)


@contextlib.contextmanager
def _stops_raised() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here too, as Ctrl-C does, so both unwind the same way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
