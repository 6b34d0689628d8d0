"""A tiny captioned video dataset made from nothing: coloured shapes moving across plain backgrounds.

`cosmos-lora demo` and the tests train on it, so it needs no download, is deterministic for a
seed, and each caption describes exactly what the clip shows, e.g. "a red square moves from left
to right on a dark blue background". The folder looks exactly like the output of `prepare`.
"""

from pathlib import Path

import numpy as np

from cosmos_lora.data.layout import DatasetLayout, update_index
from cosmos_lora.data.video import VideoWriter

SHAPE_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (60, 110, 240),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (160, 70, 210),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
BACKGROUND_COLORS = {
    "black": (0, 0, 0),
    "dark blue": (15, 25, 80),
    "dark gray": (45, 45, 45),
    "dark green": (15, 55, 25),
}
# Direction phrase -> start and end of the shape centre, as fractions of the free travel range.
DIRECTIONS = {
    "from left to right": ((0.0, 0.5), (1.0, 0.5)),
    "from right to left": ((1.0, 0.5), (0.0, 0.5)),
    "from top to bottom": ((0.5, 0.0), (0.5, 1.0)),
    "from bottom to top": ((0.5, 1.0), (0.5, 0.0)),
}
SHAPES = ("circle", "square")


def make_synthetic_dataset(root: Path, num_clips: int, num_frames: int, height: int, width: int,
                           fps: float = 24, seed: int = 0) -> list[Path]:
    """Writes `videos/synthetic_NNNNNN.mp4`, `metas/synthetic_NNNNNN.txt` and `index.csv` under `root`.

    Returns the video paths. Clip i is drawn from `seed` alone, so the same arguments always give
    the same clips and captions.
    """
    layout = DatasetLayout(Path(root))
    rng = np.random.default_rng(seed)
    paths, index_rows = [], []
    for i in range(num_clips):
        clip = f"synthetic_{i:06d}"
        scene = _random_scene(rng)
        with VideoWriter(layout.video(clip), height, width, fps) as writer:
            for t in range(num_frames):
                writer.write(_draw_frame(scene, t / max(num_frames - 1, 1), height, width))
        layout.caption(clip).parent.mkdir(parents=True, exist_ok=True)
        layout.caption(clip).write_text(_caption(scene) + "\n", encoding="utf-8")
        paths.append(layout.video(clip))
        index_rows.append({"clip": clip, "source": "synthetic", "start_frame": 0, "start_time": 0.0, "fps": fps,
                           "frames": num_frames, "height": height, "width": width, "caption_source": "synthetic"})
    update_index(layout, index_rows)
    return paths


def _random_scene(rng: np.random.Generator) -> dict:
    return {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "color": list(SHAPE_COLORS)[rng.integers(len(SHAPE_COLORS))],
        "background": list(BACKGROUND_COLORS)[rng.integers(len(BACKGROUND_COLORS))],
        "direction": list(DIRECTIONS)[rng.integers(len(DIRECTIONS))],
    }


def _caption(scene: dict) -> str:
    article = "an" if scene["color"][0] in "aeiou" else "a"
    return (f"{article} {scene['color']} {scene['shape']} moves {scene['direction']} "
            f"on a {scene['background']} background")


def _draw_frame(scene: dict, progress: float, height: int, width: int) -> np.ndarray:
    """One `[H, W, 3]` frame with the shape `progress` (0..1) of the way along its path."""
    radius = max(2.0, 0.15 * min(height, width))
    (x0, y0), (x1, y1) = DIRECTIONS[scene["direction"]]
    # The centre travels between `radius` and `size - radius`, so the shape stays whole in frame.
    cx = radius + (x0 + (x1 - x0) * progress) * (width - 2 * radius)
    cy = radius + (y0 + (y1 - y0) * progress) * (height - 2 * radius)
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5 - cx  # [1, W]
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - cy  # [H, 1]
    if scene["shape"] == "circle":
        inside = xs**2 + ys**2 <= radius**2
    else:
        inside = (np.abs(xs) <= radius) & (np.abs(ys) <= radius)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = BACKGROUND_COLORS[scene["background"]]
    frame[inside] = SHAPE_COLORS[scene["color"]]
    return frame
