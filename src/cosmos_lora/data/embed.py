"""`cosmos-lora embed`: T5 caption embeddings (official pickles) and, optionally, the latent cache.

One process per GPU (`launch_embed` starts them through `distributed.launch`; on a CPU machine one process).
Rank r of w takes clips[r::w] of the sorted clip list, so every clip is done exactly once and no
process needs to talk to another until the end. Work is batched; a CUDA out-of-memory error
halves the batch and retries it. Clips whose embedding (or latent) is current are skipped, so an
interrupted run resumes: an embedding is current while its record (`t5_xxl/<clip>.json`) names the
clip's caption as it is now and this text encoder; one with no record (made by another tool) is
redone, since it cannot be verified. A latent is current while its recorded fingerprint matches
the clip file's content. A clip that cannot be encoded is skipped and listed, and
the rest carry on. Progress and ETA show on rank 0 (its shard is the same size as the others).

    python -m cosmos_lora.data.embed JOB.json      # what torchrun starts on each GPU
"""

import json
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from cosmos_lora.data.embeddings import (EmbeddingSource, caption_sha256, embedding_source, read_caption,
                                         read_t5_embedding, text_encoder_fingerprint, write_embedding_record,
                                         write_t5_embedding)
from cosmos_lora.data.latents import (CACHE_INFO, cache_info, latent_cache_dir, latent_problem, latent_shape,
                                      video_fingerprint, write_cache_info, write_latent)
from cosmos_lora.data.layout import FAILED_COLUMNS, DatasetLayout, write_csv
from cosmos_lora.errors import UserError
from cosmos_lora.progress import progress_bar

DECODE_THREADS = 4  # ffmpeg decodes in its own processes; threads only wait on them
QUIET = "--quiet"  # a worker without progress bars


@dataclass(frozen=True)
class LatentSettings:
    tokenizer_dir: str
    num_frames: int = 121
    height: int = 704
    width: int = 1280
    pixel_chunk: int = 121
    batch_size: int = 4  # clips per tokenizer call (halved on out-of-memory)


@dataclass(frozen=True)
class EmbedJob:
    """Everything a worker needs; travels to torchrun's processes as JSON."""

    root: str
    text_encoder_dir: str
    batch_size: int = 16  # captions per T5 call (halved on out-of-memory)
    latents: LatentSettings | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EmbedJob":
        values = json.loads(text)
        latents = values.pop("latents")
        return cls(**values, latents=LatentSettings(**latents) if latents else None)


@dataclass
class EmbedSummary:
    embedded: int
    skipped_existing: int
    missing_captions: list[str]
    embedded_clips: list[str] = field(default_factory=list)
    latents_encoded: int = 0
    latents_skipped_existing: int = 0
    latent_failures: list[dict] = field(default_factory=list)  # failed.csv rows: source (video), reason
    latents_dir: str | None = None
    encoded_clips: list[str] = field(default_factory=list)
    bad_captions: list[str] = field(default_factory=list)  # problems: captions that cannot be read as text
    redone_changed: int = 0  # of `embedded`: made from another caption or text encoder before
    redone_unrecorded: int = 0  # of `embedded`: had no record (made by another tool), so unverifiable

    def merge(self, other: "EmbedSummary") -> "EmbedSummary":
        """The summary of two shards."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name != "latents_dir"}
        return EmbedSummary(**summed, latents_dir=self.latents_dir or other.latents_dir)


class HalvingBatches:
    """Runs `fn` over consecutive slices of `items`, halving the slice after a CUDA out-of-memory error.

    The size that fits is kept for later calls, so an out-of-memory error costs one retry per run,
    not one per batch. At batch size 1 the error is raised.
    """

    def __init__(self, batch_size: int, on_halve: Callable[[int, int], None] | None = None):
        if batch_size < 1:
            raise UserError(f"Batch size {batch_size} is less than 1.", "use a batch size of 1 or more.")
        self.batch_size = batch_size
        self.on_halve = on_halve

    def run(self, items: list, fn: Callable[[list], list]) -> Iterator[tuple[list, list]]:
        """Yields (batch, fn(batch)) in order, every item in exactly one batch that succeeded."""
        start = 0
        while start < len(items):
            batch = items[start : start + self.batch_size]
            try:
                outputs = fn(batch)
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                outputs = None  # leave the except block first so the failed batch's tensors are freed
            if outputs is None:
                self._halve(len(batch))
                continue
            yield batch, outputs
            start += len(batch)

    def _halve(self, failed_size: int) -> None:
        self.batch_size = max(1, failed_size // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.on_halve is not None:
            self.on_halve(failed_size, self.batch_size)


# ---------------------------------------------------------------- T5 caption embeddings


def embed_dataset(root: Path, text_encoder_dir: Path, device: torch.device, dtype: torch.dtype, batch_size: int = 16,
                  rank: int = 0, world_size: int = 1, show_progress: bool = True) -> EmbedSummary:
    """Writes `t5_xxl/<clip>.pickle` and its record for this rank's share of the clips whose embedding
    is missing, unreadable, unrecorded, or made from another caption or text encoder."""
    layout = DatasetLayout(Path(root))
    clips = _all_clips(layout)[rank::world_size]
    encoder_id = text_encoder_fingerprint(text_encoder_dir)  # None: no T5 there (an error only if needed)
    captions, missing, bad = {}, [], []
    for clip in clips:
        if not layout.caption(clip).is_file():
            missing.append(str(layout.caption(clip)))
            continue
        try:
            captions[clip] = read_caption(layout.caption(clip))
        except UserError as err:
            bad.append(err.problem)
    reasons = {clip: _redo_reason(layout.embedding(clip), text, encoder_id) for clip, text in captions.items()}
    todo = [clip for clip, reason in reasons.items() if reason is not None]
    if todo:
        from cosmos_lora.model.text_encoder import T5TextEncoder

        encoder = T5TextEncoder(text_encoder_dir, device, dtype)
        batches = HalvingBatches(batch_size, _halving_note("T5", rank))
        with progress_bar(show_progress and rank == 0) as progress:
            task = progress.add_task("caption embeddings", total=len(todo))
            for batch, embeddings in batches.run(todo, lambda batch: encoder.encode([captions[c] for c in batch])):
                for clip, embedding in zip(batch, embeddings):
                    write_t5_embedding(layout.embedding(clip), embedding)
                    write_embedding_record(layout.embedding(clip),
                                           EmbeddingSource(caption_sha256(captions[clip]), encoder_id))
                progress.advance(task, len(batch))
    redone = [reasons[c] for c in todo]
    return EmbedSummary(len(todo), len(captions) - len(todo), missing, embedded_clips=todo, bad_captions=bad,
                        redone_changed=redone.count("changed"), redone_unrecorded=redone.count("unrecorded"))


def _redo_reason(path: Path, caption: str, encoder_id: str | None) -> str | None:
    """Why the embedding at `path` must be made (again) from `caption`: "missing" (or unreadable),
    "unrecorded" (cannot be verified), "changed" (other caption or text encoder); None if current."""
    try:
        data = path.read_bytes()
        read_t5_embedding(path, data)
    except (UserError, OSError):
        return "missing"
    source = embedding_source(path, data)
    if source is None:
        return "unrecorded"
    if source.caption_sha256 != caption_sha256(caption) or encoder_id not in (None, source.text_encoder):
        return "changed"
    return None


# ---------------------------------------------------------------- the latent cache


def encode_latents(root: Path, settings: LatentSettings, device: torch.device, dtype: torch.dtype, rank: int = 0,
                   world_size: int = 1, show_progress: bool = True) -> EmbedSummary:
    """Encodes this rank's share of the clips that lack a current latent into `latent_cache_dir(...)`.

    The pixels are exactly `VideoTextDataset`'s (`read_clip_frames` + `frames_to_video`), so a cached
    latent equals `VideoTokenizer.encode` of the sample the dataset would have decoded.
    """
    from cosmos_lora.data.dataset import frames_to_video, read_clip_frames
    from cosmos_lora.model.tokenizer import VideoTokenizer

    s = settings
    layout = DatasetLayout(Path(root))
    cache_dir = latent_cache_dir(layout.root, Path(s.tokenizer_dir), s.num_frames, s.height, s.width, s.pixel_chunk)
    shape = latent_shape(s.num_frames, s.height, s.width)
    clips = _all_clips(layout)[rank::world_size]
    todo = [c for c in clips if latent_problem(cache_dir, c, layout.video(c), shape) is not None]
    summary = EmbedSummary(0, 0, [], latents_skipped_existing=len(clips) - len(todo), latents_dir=str(cache_dir))
    if not todo:
        return summary
    tokenizer = VideoTokenizer(Path(s.tokenizer_dir), device, dtype, s.pixel_chunk)

    def load(clip: str) -> tuple[np.ndarray, float, str]:
        video = layout.video(clip)
        fingerprint = video_fingerprint(video)  # before decoding: it must describe what was decoded
        frames, fps = read_clip_frames(video, s.num_frames, s.height, s.width)
        return frames, fps, fingerprint

    def encode(batch: list[tuple[str, np.ndarray, float, str]]) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([frames for _, frames, _, _ in batch])).to(device)
        latents = tokenizer.encode(frames_to_video(pixels)).float().cpu()  # [B, 16, t, h, w]
        if tuple(latents.shape[1:]) != shape:
            raise RuntimeError(f"The tokenizer {s.tokenizer_dir} made latents of shape {list(latents.shape[1:])}, "
                               f"expected {list(shape)} for {s.num_frames}x{s.height}x{s.width}.")
        return latents

    batches = HalvingBatches(s.batch_size, _halving_note("tokenizer", rank))
    with progress_bar(show_progress and rank == 0) as progress, ThreadPoolExecutor(DECODE_THREADS) as pool:
        task = progress.add_task("latents", total=len(todo))
        for group in _loaded_groups(pool, todo, load, batches, summary, layout, lambda: progress.advance(task)):
            for batch, latents in batches.run(group, encode):
                for (clip, _, fps, fingerprint), latent in zip(batch, latents):
                    write_latent(cache_dir, clip, latent, fps, fingerprint)
                    summary.encoded_clips.append(clip)
                progress.advance(task, len(batch))
    summary.latents_encoded = len(summary.encoded_clips)
    return summary


def _loaded_groups(pool: ThreadPoolExecutor, clips: list[str], load: Callable, batches: HalvingBatches,
                   summary: EmbedSummary, layout: DatasetLayout, skipped: Callable[[], None]) -> Iterator[list]:
    """Decoded clips in groups of the current batch size, the next ones decoding meanwhile.

    A clip that fails to load goes to `summary.latent_failures` and is left out.
    """
    pending = deque()
    remaining = iter(clips)
    group = []

    def submit() -> None:
        clip = next(remaining, None)
        if clip is not None:
            pending.append((clip, pool.submit(load, clip)))

    for _ in range(2 * batches.batch_size):
        submit()
    while pending:
        clip, future = pending.popleft()
        submit()
        try:
            group.append((clip, *future.result()))
        except (UserError, OSError) as err:
            reason = err.problem if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            summary.latent_failures.append({"source": str(layout.video(clip)), "reason": " ".join(reason.split())})
            skipped()
        if len(group) >= batches.batch_size:
            yield group
            group = []
    if group:
        yield group


# ---------------------------------------------------------------- one worker, and the launch


def check_embed_job(job: EmbedJob) -> None:
    """What can be wrong before any process starts. (The T5 folder is checked when it is loaded: a
    dataset whose captions are all embedded does not need it.)"""
    from cosmos_lora.model.tokenizer import check_tokenizer_folder

    _all_clips(DatasetLayout(Path(job.root)))
    if job.batch_size < 1 or (job.latents and job.latents.batch_size < 1):
        raise UserError("A batch size is less than 1.", "use --batch-size and --latent-batch-size of 1 or more.")
    s = job.latents
    if s is None:
        return
    check_tokenizer_folder(Path(s.tokenizer_dir), "run `cosmos-lora download`, or pass --tokenizer with a Cosmos tokenizer folder.")
    if s.height % 16 or s.width % 16 or s.height <= 0 or s.width <= 0 or s.num_frames < 1 or (s.num_frames - 1) % 8:
        raise UserError(f"Latent size {s.num_frames}x{s.height}x{s.width} (frames x H x W) is not 1+8k frames of "
                        "multiples of 16.", "use the training size, e.g. --frames 121 --resolution 704 1280.")
    if s.pixel_chunk < 1 or (s.num_frames > s.pixel_chunk and s.num_frames % s.pixel_chunk):
        raise UserError(f"{s.num_frames} frames cannot be encoded in chunks of {s.pixel_chunk}.",
                        "use --pixel-chunk 121 (the tokenizer's) with at most 121 frames, or a multiple of it.")


def run_embed(job: EmbedJob, dist_info, show_progress: bool = True) -> EmbedSummary:
    """This process's share of the job (`clips[rank::world]`); needs no process group."""
    device = dist_info.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rank, world = dist_info.rank, dist_info.world_size
    summary = embed_dataset(Path(job.root), Path(job.text_encoder_dir), device, dtype, job.batch_size, rank, world,
                            show_progress)
    if job.latents is not None:
        s = job.latents
        cache_dir = latent_cache_dir(Path(job.root), Path(s.tokenizer_dir), s.num_frames, s.height, s.width,
                                     s.pixel_chunk)
        if rank == 0 and not (cache_dir / CACHE_INFO).is_file():  # describes the run that made the cache
            write_cache_info(cache_dir, cache_info(Path(s.tokenizer_dir), s.num_frames, s.height, s.width,
                                                   s.pixel_chunk, dtype))
        summary = summary.merge(encode_latents(Path(job.root), s, device, dtype, rank, world, show_progress))
    return summary


def finish_embed(job: EmbedJob, shards: list[EmbedSummary]) -> EmbedSummary:
    """All processes' summaries as one; the latent failures go to the cache's failed.csv."""
    summary = shards[0]
    for shard in shards[1:]:
        summary = summary.merge(shard)
    if job.latents is not None:
        write_csv(Path(summary.latents_dir) / "failed.csv", FAILED_COLUMNS, summary.latent_failures)
    return summary


def launch_embed(job: EmbedJob, nproc: int, show_progress: bool = True) -> EmbedSummary:
    """Runs the job in `nproc` processes (through torchrun; one runs in this process), each writing
    its own summary; under the user's own torchrun, this rank's share only."""
    from cosmos_lora.distributed import Launch, launch, launched_by_torchrun

    check_embed_job(job)
    with tempfile.TemporaryDirectory(prefix="cosmos-lora-embed-") as folder:
        job_file = Path(folder) / "job.json"
        job_file.write_text(job.to_json(), encoding="utf-8")
        outcome = launch("cosmos_lora.data.embed", [str(job_file), folder] + ([] if show_progress else [QUIET]),
                         Launch(nproc))
        outcome.raise_unless_finished("every clip was embedded",
                                      "rerun the same command: finished embeddings and latents are kept.")
        shards = [EmbedSummary(**json.loads(p.read_text(encoding="utf-8")))
                  for p in sorted(Path(folder).glob("summary.rank*.json"))]
    if launched_by_torchrun():  # the user's own torchrun: this rank's share only
        return shards[0] if int(os.environ["WORLD_SIZE"]) > 1 else finish_embed(job, shards)
    if len(shards) != nproc:
        raise UserError(f"{nproc - len(shards)} of {nproc} embedding processes ended without a summary.",
                        "rerun the same command: finished embeddings and latents are kept.")
    return finish_embed(job, shards)


def main(argv: list[str]) -> int:
    """A worker: `python -m cosmos_lora.data.embed JOB.json FOLDER [--quiet]`; each process writes
    `FOLDER/summary.rank<r>.json`. The processes never talk to each other, so no process group."""
    from cosmos_lora.distributed import run_worker

    job = EmbedJob.from_json(Path(argv[0]).read_text(encoding="utf-8"))

    def work(dist_info) -> None:
        summary = run_embed(job, dist_info, show_progress=QUIET not in argv)
        shard = Path(argv[1]) / f"summary.rank{dist_info.rank}.json"
        shard.write_text(json.dumps(asdict(summary)), encoding="utf-8")

    return run_worker(work, process_group=False)


# ---------------------------------------------------------------- plumbing


def _all_clips(layout: DatasetLayout) -> list[str]:
    clips = layout.clips()
    if not clips:
        raise UserError(f"Dataset {layout.root} has no videos.", "run `cosmos-lora prepare` first, or check --dataset.")
    return clips


def _halving_note(what: str, rank: int) -> Callable[[int, int], None]:
    def note(failed: int, now: int) -> None:
        print(f"rank {rank}: {what} ran out of GPU memory at batch {failed}; retrying with batch {now}.",
              file=sys.stderr)

    return note


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
