"""The training dataset (clips + captions + T5 embeddings) and the up-front check that guards it.

`require_valid_dataset` runs before training starts and reports every problem at once, so a
broken clip stops nothing hours in; `VideoTextDataset` then assumes a valid folder and raises on
a bad sample instead of quietly swapping in another one.
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cosmos_lora.data.embeddings import pad_embedding, read_t5_embedding
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
    """

    def __init__(self, root: Path, num_frames: int, height: int, width: int, max_text_len: int = 512):
        self.layout = DatasetLayout(Path(root))
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_text_len = max_text_len
        self.clips = self.layout.clips()
        if not self.clips:
            raise UserError(f"Dataset {root} has no videos in {self.layout.videos_dir}.",
                            "run `cosmos-lora prepare` to make clips, or point --dataset at the right folder.")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        video_path = self.layout.video(clip)
        frames, fps = read_video(video_path, max_frames=self.num_frames)  # stops decoding there
        if len(frames) < self.num_frames:
            raise UserError(f"Video {video_path} has {len(frames)} frames; training needs {self.num_frames}.",
                            "remove it or re-run `cosmos-lora prepare` (run `check_dataset` to find all such clips).")
        frames = resize_cover_crop(frames, self.height, self.width)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # [3, T, H, W]
        embedding, mask = pad_embedding(read_t5_embedding(self.layout.embedding(clip)), self.max_text_len)
        return {
            "video": video,
            "t5_text_embeddings": embedding,
            "t5_text_mask": mask,
            "fps": torch.tensor(fps, dtype=torch.float32),
            "caption": _read_caption(self.layout.caption(clip)),
            "name": clip,
        }


def check_dataset(root: Path, num_frames: int, height: int | None = None, width: int | None = None) -> list[str]:
    """Every problem with a dataset folder, each naming its file; empty when training can start.

    Checks each clip's caption, embedding, decodability, frame count and (when given) that it is at
    least height x width, so nothing gets upscaled; then that all embeddings share one width D.
    Videos are probed, not decoded to pixels, several at a time.
    """
    layout = DatasetLayout(Path(root))
    if not layout.videos_dir.is_dir():
        return [f"{layout.videos_dir}: folder is missing."]
    clips = layout.clips()
    if not clips:
        return [f"{layout.videos_dir}: no .mp4 videos in it."]

    def check(clip: str) -> tuple[list[str], int | None]:
        return _check_clip(layout, clip, num_frames, height, width)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # ffmpeg runs outside the GIL
        reports = list(pool.map(check, clips))
    problems = [problem for clip_problems, _ in reports for problem in clip_problems]
    widths = {layout.embedding(clip): d for clip, (_, d) in zip(clips, reports) if d is not None}
    return problems + _embedding_width_problems(widths)


def require_valid_dataset(root: Path, num_frames: int, height: int | None = None, width: int | None = None,
                          name: str | None = None) -> None:
    """Raises one UserError listing every problem `check_dataset` finds (the first 20, then a count)."""
    problems = check_dataset(root, num_frames, height, width)
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more.")
    dataset = name or str(root)
    raise UserError(
        f"Dataset {root} is not ready for training ({len(problems)} problem(s)):\n  " + "\n  ".join(listed) + "\n",
        f"run `cosmos-lora embed --dataset {dataset}` for missing or bad embeddings, re-run `cosmos-lora prepare` "
        "for missing captions or short/small/broken clips, or remove the listed clips.",
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
