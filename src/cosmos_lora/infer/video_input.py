"""Video2World's input: the image or the video a generated video continues, read as the official
`video2world.py` reads it (`read_video_or_image_into_frames_BCTHW`, `check_input_frames`).

An image is one frame (RGBA blended onto white); of a video, the last `num_input_frames` frames are
used. Resizing to the generation size and padding to the clip length happen in
`model.generation.VideoInput.pixels`. Everything here runs before any model loads, so a file that
cannot be read, or a video that is too short, stops the command with one line.
"""

import collections
import functools
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cosmos_lora.data.video import iter_video_frames
from cosmos_lora.errors import UserError
from cosmos_lora.model.generation import INPUT_FRAME_CHOICES

KINDS = ("image", "video")


def check_request(kind: str, num_input_frames: int) -> None:
    """What the options alone can tell."""
    if num_input_frames not in INPUT_FRAME_CHOICES:
        raise UserError(f"--num-input-frames {num_input_frames}: the model continues 1 or 9 frames.",
                        "use --num-input-frames 1 (the last frame) or 9 (the last 9 frames of --video).")
    if kind == "image" and num_input_frames != 1:
        raise UserError(f"--num-input-frames {num_input_frames} with --image: an image is 1 frame.",
                        "drop --num-input-frames, or pass a video with --video.")


def read_input(path: Path, kind: str, num_input_frames: int) -> np.ndarray:
    """uint8 `[num_input_frames, H, W, 3]`: the image, or the video's last frames."""
    check_request(kind, num_input_frames)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No {kind} at {path}.", f"check the path given to --{kind}.")
    return _read_image(path) if kind == "image" else _last_frames(path, num_input_frames)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image)  # official: alpha blended onto white
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable image ({error}).", "pass a PNG or JPEG file with --image.") from None
    return rgb[None].copy()


def _last_frames(path: Path, count: int) -> np.ndarray:
    last, total = collections.deque(maxlen=count), 0
    for frame in iter_video_frames(path):  # a file ffmpeg cannot decode raises its own one-line error
        last.append(frame)
        total += 1
    if total < count:
        raise UserError(f"{path} has {total} frame(s); --num-input-frames {count} needs at least {count}.",
                        "pass a longer video, or use --num-input-frames 1.")
    return np.stack(last)


def file_sha256(path: Path) -> str:
    return _sha256(Path(path), *_stamp(Path(path)))


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_panel(frames: np.ndarray, length: int, height: int, width: int) -> np.ndarray:
    """The input as a video panel beside the generated ones: its frames resized to the output size,
    the last one held for the rest of the clip."""
    resized = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    held = resized + [resized[-1]] * max(0, length - len(resized))
    return np.stack(held[:length])
