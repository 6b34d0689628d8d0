"""The training dataset (clips + captions + T5 embeddings) and the up-front check that guards it.

`require_valid_dataset` runs before training starts and reports every problem at once, so a
broken clip stops nothing hours in; `VideoTextDataset` then assumes a valid folder and raises on
a bad sample instead of quietly swapping in another one.
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cosmos_lora.data.embeddings import pad_embedding, read_t5_embedding
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
    """

    def __init__(self, root: Path, num_frames: int, height: int, width: int, max_text_len: int = 512,
                 latents_dir: Path | None = None):
        self.layout = DatasetLayout(Path(root))
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_text_len = max_text_len
        self.latents_dir = Path(latents_dir) if latents_dir is not None else None
        self.latent_shape = latent_shape(num_frames, height, width)
        self.clips = self.layout.clips()
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
            "caption": _read_caption(self.layout.caption(clip)),
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
                  latents_dir: Path | None = None) -> list[str]:
    """Every problem with a dataset folder, each naming its file; empty when training can start.

    Checks each clip's caption, embedding, decodability, frame count and (when given) that it is at
    least height x width, so nothing gets upscaled; then that all embeddings share one width D.
    With `latents_dir` (needs height and width), also that the cache holds a current latent for
    every clip. Videos are probed, not decoded to pixels, several at a time.
    """
    layout = DatasetLayout(Path(root))
    if not layout.videos_dir.is_dir():
        return [f"{layout.videos_dir}: folder is missing."]
    clips = layout.clips()
    if not clips:
        return [f"{layout.videos_dir}: no .mp4 videos in it."]
    shape = None
    if latents_dir is not None:
        if not (height and width):
            raise ValueError("check_dataset needs height and width to check a latent cache.")
        shape = latent_shape(num_frames, height, width)
        if not Path(latents_dir).is_dir():
            return _check_all(layout, clips, num_frames, height, width, None) + [
                f"{latents_dir}: no latent cache for this tokenizer, frame count and size."]
    return _check_all(layout, clips, num_frames, height, width, (Path(latents_dir), shape) if shape else None)


def _check_all(layout: DatasetLayout, clips: list[str], num_frames: int, height: int | None, width: int | None,
               cache: tuple[Path, tuple] | None) -> list[str]:
    def check(clip: str) -> tuple[list[str], int | None]:
        problems, embedding_width = _check_clip(layout, clip, num_frames, height, width)
        missing = latent_problem(cache[0], clip, layout.video(clip), cache[1]) if cache else None
        return problems + ([missing] if missing else []), embedding_width

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # ffmpeg runs outside the GIL
        reports = list(pool.map(check, clips))
    problems = [problem for clip_problems, _ in reports for problem in clip_problems]
    widths = {layout.embedding(clip): d for clip, (_, d) in zip(clips, reports) if d is not None}
    return problems + _embedding_width_problems(widths)


def require_valid_dataset(root: Path, num_frames: int, height: int | None = None, width: int | None = None,
                          name: str | None = None, latents_dir: Path | None = None) -> None:
    """Raises one UserError listing every problem `check_dataset` finds (the first 20, then a count)."""
    problems = check_dataset(root, num_frames, height, width, latents_dir)
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more.")
    dataset = name or str(root)
    latents = (f" (add `--latents --frames {num_frames} --resolution {height} {width}` for missing or stale "
               "latents)") if latents_dir is not None else ""
    raise UserError(
        f"Dataset {root} is not ready for training ({len(problems)} problem(s)):\n  " + "\n  ".join(listed) + "\n",
        f"run `cosmos-lora embed --dataset {dataset}` for missing or bad embeddings{latents}, re-run "
        "`cosmos-lora prepare` for missing captions or short/small/broken clips, or remove the listed clips.",
    )


def _check_clip(layout: DatasetLayout, clip: str, num_frames: int, height: int | None,
                width: int | None) -> tuple[list[str], int | None]:
    """Problems with one clip, and its embedding width D when the embedding is readable."""
    problems = []
    video_path, caption_path, embedding_path = layout.video(clip), layout.caption(clip), layout.embedding(clip)
    if not caption_path.is_file():
        problems.append(f"{video_path}: no caption ({caption_path} is missing).")
    elif not caption_path.read_text(encoding="utf-8", errors="replace").strip():
        problems.append(f"{caption_path}: caption is empty.")
    embedding_width = None
    if not embedding_path.is_file():
        problems.append(f"{video_path}: no embedding ({embedding_path} is missing).")
    else:
        try:
            embedding_width = read_t5_embedding(embedding_path).shape[1]
        except UserError as err:
            problems.append(err.problem)
    try:
        info = probe_video(video_path)
    except UserError as err:
        return problems + [err.problem], embedding_width
    if info.frames < num_frames:
        problems.append(f"{video_path}: has {info.frames} frames; training needs {num_frames}.")
    if (height and info.height < height) or (width and info.width < width):
        problems.append(f"{video_path}: is {info.height}x{info.width} (HxW), smaller than the training size "
                        f"{height or info.height}x{width or info.width}; it would be upscaled.")
    return problems, embedding_width


def _embedding_width_problems(widths: dict[Path, int]) -> list[str]:
    """Files whose embedding width D differs from the most common one (they came from another encoder)."""
    counts = Counter(widths.values())
    if len(counts) <= 1:
        return []
    common, count = counts.most_common(1)[0]
    return [f"{path}: embedding width D={d} differs from D={common} of {count} other file(s)."
            for path, d in widths.items() if d != common]


def _read_caption(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"Caption {path} is missing.", "re-run `cosmos-lora prepare`, or write the caption there.")
    return path.read_text(encoding="utf-8").strip()
