"""The training dataset (clips + captions + T5 embeddings) and the up-front check that guards it.

`require_valid_dataset` runs before training starts and reports every problem at once, so a
broken clip stops nothing hours in; `VideoTextDataset` then assumes a valid folder and raises on
a bad sample instead of quietly swapping in another one.
"""

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cosmos_lora.data.embeddings import (caption_sha256, embedding_source, pad_embedding, read_caption,
                                         read_t5_embedding)
from cosmos_lora.data.latents import latent_problem, latent_shape, load_latent
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.data.video import probe_video, read_video, resize_cover_crop
from cosmos_lora.errors import UserError

MAX_LISTED_PROBLEMS = 20


class VideoTextDataset(Dataset):
    """Clips of `root/videos/*.mp4` (sorted by name) with `metas/<clip>.txt` and `t5_xxl/<clip>.pickle`.

    Each sample is a dict:
        video               float32 [3, num_frames, height, width] in [-1, 1]: the first `num_frames`
                            frames, cover-resized and centre-cropped to height x width
        t5_text_embeddings  float32 [max_text_len, D], zero-padded
        t5_text_mask        int64 [max_text_len], 1 on real tokens
        fps                 float32 scalar tensor (the clip's own frame rate)
        caption             str
        name                str, the clip name (video file stem)

    With `latents_dir` (from `latent_cache_dir`), a clip whose cached latent is current comes with
        latent              float32 [16, 1 + (num_frames-1)/8, height/8, width/8]: the tokenizer's
                            normalised output for `video` (multiply by sigma_data for the DiT)
    instead of `video`, and its video is not decoded. A clip the cache lacks (or holds a stale
    latent for) is decoded as usual; `check_dataset(..., latents_dir=...)` lists such clips.

    `exclude_clips`: clip names left out (the clips held out for the evaluation loss).
    """

    def __init__(self, root: Path, num_frames: int, height: int, width: int, max_text_len: int = 512,
                 latents_dir: Path | None = None, exclude_clips: list[str] | tuple[str, ...] = ()):
        self.layout = DatasetLayout(Path(root))
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_text_len = max_text_len
        self.latents_dir = Path(latents_dir) if latents_dir is not None else None
        self.latent_shape = latent_shape(num_frames, height, width)
        excluded = set(exclude_clips)
        self.clips = [clip for clip in self.layout.clips() if clip not in excluded]
        if not self.clips:
            raise UserError(f"Dataset {root} has no videos in {self.layout.videos_dir}.",
                            "run `cosmos-lora prepare` to make clips, or point --dataset at the right folder.")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        video_path = self.layout.video(clip)
        cached = None
        if self.latents_dir is not None:
            cached = load_latent(self.latents_dir, clip, video_path, self.latent_shape)
        if cached is not None:
            pixels_or_latent, fps = {"latent": cached[0]}, cached[1]
        else:
            frames, fps = read_clip_frames(video_path, self.num_frames, self.height, self.width)
            pixels_or_latent = {"video": frames_to_video(torch.from_numpy(frames))}
        embedding, mask = pad_embedding(read_t5_embedding(self.layout.embedding(clip)), self.max_text_len)
        return {
            **pixels_or_latent,
            "t5_text_embeddings": embedding,
            "t5_text_mask": mask,
            "fps": torch.tensor(fps, dtype=torch.float32),
            "caption": read_caption(self.layout.caption(clip)),
            "name": clip,
        }


def read_clip_frames(path: Path, num_frames: int, height: int, width: int) -> tuple[np.ndarray, float]:
    """The first `num_frames` frames, cover-resized and centre-cropped: uint8 `[T, H, W, 3]`, and fps.

    The one preprocessing of training clips: the dataset and the latent cache both use it.
    """
    frames, fps = read_video(path, max_frames=num_frames)  # stops decoding there
    if len(frames) < num_frames:
        raise UserError(f"Video {path} has {len(frames)} frames; training needs {num_frames}.",
                        "remove it or re-run `cosmos-lora prepare` (run `check_dataset` to find all such clips).")
    return resize_cover_crop(frames, height, width), fps


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., T, H, W, 3]` -> float32 `[..., 3, T, H, W]` in [-1, 1] (on the frames' device)."""
    return frames.movedim(-1, -4).float().div_(127.5).sub_(1.0)


def check_dataset(root: Path, num_frames: int, height: int | None = None, width: int | None = None,
                  latents_dir: Path | None = None, text_width: int | None = None) -> list[str]:
    """Every problem with a dataset folder, each naming its file; empty when training can start.

    Checks each clip's caption (present, UTF-8, not empty), embedding (readable, made from the
    caption the clip has now when its record says so), decodability, frame count and (when given)
    that it is at least height x width, so nothing gets upscaled; then that every embedding has the
    model's width `text_width` (when given; else that all share one width) and that the recorded
    ones come from one text encoder. With `latents_dir` (needs height and width), also that the
    cache holds a current latent for every clip. Videos are probed, not decoded to pixels, several
    at a time.
    """
    return _inspect(root, num_frames, height, width, latents_dir, text_width).problems


def require_valid_dataset(root: Path, num_frames: int, height: int | None = None, width: int | None = None,
                          name: str | None = None, latents_dir: Path | None = None,
                          text_width: int | None = None) -> None:
    """Raises one UserError listing every problem `check_dataset` finds (the first 20, then a count).

    Embeddings without a record (made by the official scripts or another tool) cannot be checked
    against their captions: they are accepted, with one note saying how many.
    """
    report = _inspect(root, num_frames, height, width, latents_dir, text_width)
    dataset = name or str(root)
    if report.unrecorded and not report.problems:
        print(f"Note: {len(report.unrecorded)} embedding(s) in {DatasetLayout(Path(root)).t5_dir} have no record of "
              f"the caption they were made from (made by another tool); they are used as they are. "
              f"`cosmos-lora embed --dataset {dataset}` re-embeds them with one.", file=sys.stderr)
    problems = report.problems
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more.")
    latents = (f" (add `--latents --frames {num_frames} --resolution {height} {width}` for missing or stale "
               "latents)") if latents_dir is not None else ""
    raise UserError(
        f"Dataset {root} is not ready for training ({len(problems)} problem(s)):\n  " + "\n  ".join(listed) + "\n",
        f"run `cosmos-lora embed --dataset {dataset}` for missing, stale or bad embeddings{latents}, re-run "
        "`cosmos-lora prepare` for missing or unreadable captions or short/small/broken clips, or remove the "
        "listed clips.",
    )


def dit_text_width(dit: Path) -> int:
    """The embedding width D the DiT checkpoint at `dit` cross-attends to (read memory-mapped)."""
    return dit_size(dit).text_embed_dim


def dit_size(dit: Path):
    """The architecture (`model.sizes.DiTSize`) of the DiT checkpoint at `dit` (read memory-mapped)."""
    from cosmos_lora.model.checkpoint import read_official_checkpoint, unwrap_container
    from cosmos_lora.model.sizes import size_from_state_dict

    try:
        return size_from_state_dict(unwrap_container(read_official_checkpoint(dit)))
    except (KeyError, ValueError, IndexError, AttributeError):  # a readable file that is not a Cosmos DiT
        raise UserError(f"{dit} is not a Cosmos-Predict1 DiT checkpoint.",
                        "run `cosmos-lora download`, or point --checkpoints-dir at the official folders.") from None


@dataclass
class _ClipReport:
    problems: list[str]
    embedding_width: int | None = None
    text_encoder: str | None = None  # from the embedding's record
    unrecorded: bool = False  # a readable embedding that no record describes


@dataclass
class _DatasetReport:
    problems: list[str]
    unrecorded: list[str]  # embedding files


def _inspect(root: Path, num_frames: int, height: int | None, width: int | None, latents_dir: Path | None,
             text_width: int | None) -> _DatasetReport:
    layout = DatasetLayout(Path(root))
    if not layout.videos_dir.is_dir():
        return _DatasetReport([f"{layout.videos_dir}: folder is missing."], [])
    clips = layout.clips()
    if not clips:
        return _DatasetReport([f"{layout.videos_dir}: no .mp4 videos in it."], [])
    cache, no_cache = None, []
    if latents_dir is not None:
        if not (height and width):
            raise ValueError("check_dataset needs height and width to check a latent cache.")
        if Path(latents_dir).is_dir():
            cache = (Path(latents_dir), latent_shape(num_frames, height, width))
        else:
            no_cache = [f"{latents_dir}: no latent cache for this tokenizer, frame count and size."]

    def check(clip: str) -> _ClipReport:
        report = _check_clip(layout, clip, num_frames, height, width)
        missing = latent_problem(cache[0], clip, layout.video(clip), cache[1]) if cache else None
        report.problems += [missing] if missing else []
        return report

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # ffmpeg runs outside the GIL
        reports = dict(zip(clips, pool.map(check, clips)))
    problems = [problem for report in reports.values() for problem in report.problems]
    widths = {layout.embedding(c): r.embedding_width for c, r in reports.items() if r.embedding_width is not None}
    encoders = {layout.embedding(c): r.text_encoder for c, r in reports.items() if r.text_encoder is not None}
    problems += _embedding_width_problems(widths, text_width) + _mixed_encoder_problems(encoders) + no_cache
    return _DatasetReport(problems, [str(layout.embedding(c)) for c, r in reports.items() if r.unrecorded])


def _check_clip(layout: DatasetLayout, clip: str, num_frames: int, height: int | None,
                width: int | None) -> _ClipReport:
    """Problems with one clip, and what its embedding is (width, recorded encoder) when readable."""
    video_path, caption_path = layout.video(clip), layout.caption(clip)
    caption = None
    if not caption_path.is_file():
        problems = [f"{video_path}: no caption ({caption_path} is missing)."]
    else:
        try:
            caption = read_caption(caption_path)
            problems = [] if caption else [f"{caption_path}: caption is empty."]
        except UserError as err:
            problems = [err.problem]
    report = _check_embedding(layout, clip, caption)
    report.problems[:0] = problems
    try:
        info = probe_video(video_path)
    except UserError as err:
        report.problems.append(err.problem)
        return report
    if info.frames < num_frames:
        report.problems.append(f"{video_path}: has {info.frames} frames; training needs {num_frames}.")
    if (height and info.height < height) or (width and info.width < width):
        report.problems.append(f"{video_path}: is {info.height}x{info.width} (HxW), smaller than the training size "
                               f"{height or info.height}x{width or info.width}; it would be upscaled.")
    return report


def _check_embedding(layout: DatasetLayout, clip: str, caption: str | None) -> _ClipReport:
    """The embedding readable, and made from `caption` (the clip's current caption) if recorded."""
    path = layout.embedding(clip)
    if not path.is_file():
        return _ClipReport([f"{layout.video(clip)}: no embedding ({path} is missing)."])
    try:
        data = path.read_bytes()
        width = read_t5_embedding(path, data).shape[1]
    except OSError as err:
        return _ClipReport([f"{path}: cannot be read ({err.strerror or err})."])
    except UserError as err:
        return _ClipReport([err.problem])
    source = embedding_source(path, data)
    if source is None:
        return _ClipReport([], width, unrecorded=True)
    stale = caption is not None and source.caption_sha256 != caption_sha256(caption)
    problems = [f"{layout.caption(clip)}: caption changed since its embedding {path} was made."] if stale else []
    return _ClipReport(problems, width, source.text_encoder)


def _embedding_width_problems(widths: dict[Path, int], text_width: int | None) -> list[str]:
    """Files whose embedding width D is not the model's, or (model unknown) not the most common one."""
    if text_width is not None:
        return [f"{path}: embedding width D={d}, the model takes D={text_width} (made by another text encoder)."
                for path, d in widths.items() if d != text_width]
    return [f"{path}: embedding width D={d} differs from D={common} of {count} other file(s)."
            for path, d, common, count in _outliers(widths)]


def _mixed_encoder_problems(encoders: dict[Path, str]) -> list[str]:
    """Recorded embeddings made by a text encoder other than the one most of them come from."""
    return [f"{path}: made by text encoder {name}, {count} other(s) by {common}."
            for path, name, common, count in _outliers(encoders)]


def _outliers(values: dict[Path, object]) -> list[tuple[Path, object, object, int]]:
    """(path, value, most common value, its count) for every path whose value is not the most common one."""
    counts = Counter(values.values())
    if len(counts) <= 1:
        return []
    common, count = counts.most_common(1)[0]
    return [(path, value, common, count) for path, value in values.items() if value != common]


