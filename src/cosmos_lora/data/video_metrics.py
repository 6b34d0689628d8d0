"""Weight-free video metrics: flicker, motion, and the drift of one video from another (numpy only).

They need no model download and take seconds per 121x704x1280 video on one CPU core (minutes
are spent making it), so `infer` and the validation samples of `posttrain` compute them for every
video they write:

- **flicker**: the mean absolute difference between consecutive frames, over every pixel and RGB
  channel, on the 0-255 scale. A static video has 0; a video whose every frame is d brighter than
  the last has d. It counts every change, so motion raises it too: read it beside `motion`.
- **motion**: the mean displacement in pixels per frame (at the video's resolution) of 8x8 blocks
  of a grey, downscaled copy, found by exhaustive block matching with a parabola through the
  neighbouring costs for sub-pixel steps. Each frame's mean brightness is removed first, so a
  global brightness change is not motion; textureless blocks count as still, and motion faster
  than `SEARCH` working pixels per frame is not found (it reads lower).
- **drift** of a LoRA video from the base video of the same seed: PSNR over the whole video (all
  frames and channels, 0-255; infinite when identical) and SSIM (Wang et al. 2004: Gaussian
  window of 11 taps with sigma 1.5, K1 0.01, K2 0.03, on the luma, after their box downsampling of
  large frames) averaged over frames; 1 when identical.

`measure` returns what a sidecar stores. JSON holds no infinity, so an infinite PSNR is stored as
the string "inf" (`float("inf")` reads it back). A one-frame video has no flicker or motion, a
video under 18 pixels on a side no motion and one under 11 no SSIM: those are None (null).
"""

import math

import numpy as np

WORK_SIZE = 192  # motion: longer side of the downscaled grey copy, in pixels
BLOCK = 8  # motion: block side, working pixels
SEARCH = 5  # motion: largest displacement searched, working pixels per frame
SSIM_SIGMA, SSIM_TAPS, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
INF = "inf"  # an infinite PSNR in JSON


def flicker(frames: np.ndarray) -> float | None:
    """Mean |frame[t+1] - frame[t]| on the 0-255 scale, of uint8 `[T, H, W, C]` frames (None for one frame)."""
    if len(frames) < 2:
        return None
    total = sum(np.abs(frames[t + 1].astype(np.int16) - frames[t]).sum(dtype=np.int64) for t in range(len(frames) - 1))
    return float(total / (frames[1:].size))


def motion(frames: np.ndarray) -> float | None:
    """Mean block displacement in pixels per frame at the frames' resolution (None for one frame, or
    frames under 18 pixels on a side)."""
    if len(frames) < 2:
        return None
    factor = max(1, math.ceil(max(frames.shape[1:3]) / WORK_SIZE))
    grey = np.stack([_box_down(_luma(frame), factor) for frame in frames])  # [T, h, w]
    grey -= grey.mean(axis=(1, 2), keepdims=True)  # a whole frame getting brighter is not motion
    if min(grey.shape[1:]) < 2 * SEARCH + BLOCK:  # not one block fits inside the search margin
        return None
    dy, dx = _block_displacements(grey[:-1], grey[1:])
    return float(np.hypot(dy, dx).mean() * factor)


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 frames against a reference of the same shape, over the whole video; inf when identical."""
    squared = sum(((a.astype(np.int32) - b) ** 2).sum(dtype=np.int64) for a, b in zip(frames, reference))
    mse = squared / frames.size
    return math.inf if mse == 0 else float(10 * math.log10(255.0**2 / mse))


def ssim(frames: np.ndarray, reference: np.ndarray) -> float | None:
    """Mean over frames of the luma SSIM of uint8 frames against a reference of the same shape; 1 when
    identical (None for frames smaller than the window)."""
    factor = max(1, round(min(frames.shape[1:3]) / 256))  # Wang et al.'s downsampling of large frames
    if min(frames.shape[1:3]) < SSIM_TAPS:
        return None
    window = _gaussian(SSIM_TAPS, SSIM_SIGMA)
    return float(np.mean([
        _ssim_frame(_box_down(_luma(a), factor), _box_down(_luma(b), factor), window) for a, b in zip(frames, reference)
    ]))


def measure(frames: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """A sidecar's `metrics`: flicker and motion of uint8 `[T, H, W, 3]` frames and, with a reference of
    the same seed (the base model's video), their drift from it."""
    result = {"flicker": _rounded(flicker(frames), 4), "motion_px_per_frame": _rounded(motion(frames), 4)}
    if reference is not None:
        if reference.shape != frames.shape:
            raise ValueError(f"drift needs videos of one shape, not {frames.shape} and {reference.shape}")
        result["drift_from_original"] = {"psnr_db": to_json(_rounded(psnr(frames, reference), 4)),
                                         "ssim": _rounded(ssim(frames, reference), 6)}
    return result


def to_json(value: float | None):
    return INF if value == math.inf else value


def from_json(value) -> float | None:
    return math.inf if value == INF else value


def describe(metrics: dict) -> str:
    """One line for people: `flicker 3.21 · motion 1.40 px/frame · drift from original: PSNR 24.3 dB, SSIM 0.812`."""
    parts = []
    if metrics.get("flicker") is not None:
        parts.append(f"flicker {metrics['flicker']:.2f}")
    if metrics.get("motion_px_per_frame") is not None:
        parts.append(f"motion {metrics['motion_px_per_frame']:.2f} px/frame")
    if drift := metrics.get("drift_from_original"):
        ssim_text = "-" if drift["ssim"] is None else f"{drift['ssim']:.3f}"
        parts.append(f"drift from original: PSNR {_number(from_json(drift['psnr_db']), 1)} dB, SSIM {ssim_text}")
    return " · ".join(parts)


SUMMARY = (  # label, sidecar field, decimals, unit
    ("flicker", lambda m: m.get("flicker"), 2, ""),
    ("motion", lambda m: m.get("motion_px_per_frame"), 2, " px/frame"),
    ("PSNR from original", lambda m: from_json(m.get("drift_from_original", {}).get("psnr_db")), 1, " dB"),
    ("SSIM from original", lambda m: m.get("drift_from_original", {}).get("ssim"), 3, ""),
)


def summarise(metrics_by_stage: dict[str, list[dict]]) -> list[str]:
    """A few lines: per stage, the median (min-max) of each metric over its videos' sidecar `metrics`."""
    lines = []
    for stage, records in metrics_by_stage.items():
        parts = []
        for label, field, decimals, unit in SUMMARY:
            values = sorted(v for v in map(field, records) if v is not None)
            if values:
                middle, low, high = (_number(v, decimals) for v in (float(np.median(values)), values[0], values[-1]))
                parts.append(f"{label} {middle} ({low}-{high}){unit}")
        if parts:
            lines.append(f"  {stage}, {len(records)} video(s): " + ", ".join(parts))
    if lines:
        lines.insert(0, "video metrics, median (min-max) over videos; flicker: mean |frame difference| on 0-255; "
                        "drift: LoRA vs original video of the same seed (README: Video metrics)")
    return lines


# -- helpers ----------------------------------------------------------------------------------------

def _rounded(value: float | None, digits: int) -> float | None:
    return value if value is None or math.isinf(value) else round(value, digits)


def _number(value: float, decimals: int) -> str:
    return "inf" if value == math.inf else f"{value:.{decimals}f}"


def _luma(frame: np.ndarray) -> np.ndarray:
    """Grey float32 `[H, W]` on the 0-255 scale of a uint8 `[H, W, 3]` frame."""
    return frame.astype(np.float32) @ LUMA


def _box_down(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block (the bottom and right remainders are dropped)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    rows = image[: h * factor, : w * factor].reshape(h, factor, w * factor).sum(axis=1)  # one axis at a time: 5x faster
    return rows.reshape(h, w, factor).sum(axis=2) / np.float32(factor * factor)


def _block_displacements(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) per block and frame pair, `[N, rows, cols]` each: the shift d of `before` whose pixels
    best match (least squared difference) each BLOCK x BLOCK block of `after`, i.e. after[p] ~ before[p - d].
    Blocks lie `SEARCH` pixels inside the frame so every candidate is inside `before`."""
    n, h, w = after.shape
    rows, cols = (h - 2 * SEARCH) // BLOCK, (w - 2 * SEARCH) // BLOCK
    target = after[:, SEARCH: SEARCH + rows * BLOCK, SEARCH: SEARCH + cols * BLOCK]
    span = 2 * SEARCH + 1
    costs = np.empty((span, span, n, rows, cols), dtype=np.float32)  # [dy, dx, pair, block row, block col]
    for iy in range(span):
        for ix in range(span):
            y0, x0 = 2 * SEARCH - iy, 2 * SEARCH - ix  # = SEARCH - d
            source = before[:, y0: y0 + rows * BLOCK, x0: x0 + cols * BLOCK]
            costs[iy, ix] = ((target - source) ** 2).reshape(n, rows, BLOCK, cols, BLOCK).sum(axis=(2, 4))
    # ties (flat blocks) go to the smallest displacement: candidates are tried nearest first
    offsets = np.arange(span) - SEARCH
    nearest_first = np.argsort(np.add.outer(offsets**2, offsets**2).ravel(), kind="stable")
    flat = costs.reshape(span * span, n, rows, cols)
    best = nearest_first[np.argmin(flat[nearest_first], axis=0)]  # [N, rows, cols]
    iy, ix = np.divmod(best, span)
    return offsets[iy] + _subpixel(costs, iy, ix, axis=0), offsets[ix] + _subpixel(costs, iy, ix, axis=1)


def _subpixel(costs: np.ndarray, iy: np.ndarray, ix: np.ndarray, axis: int) -> np.ndarray:
    """The vertex of the parabola through the best cost and its two neighbours along `axis` (0: y, 1: x),
    within half a pixel; 0 for an exact match, at the search's edge, or on a flat cost."""
    span = costs.shape[0]
    at = iy if axis == 0 else ix
    inside = (at > 0) & (at < span - 1)
    step = (1, 0) if axis == 0 else (0, 1)
    pick = np.indices(iy.shape)

    def cost(shift: int) -> np.ndarray:
        y = np.clip(iy + shift * step[0], 0, span - 1)
        x = np.clip(ix + shift * step[1], 0, span - 1)
        return costs[y, x, pick[0], pick[1], pick[2]].astype(np.float64)

    below, centre, above = cost(-1), cost(0), cost(1)
    curvature = below - 2 * centre + above
    usable = inside & (centre > 0) & (curvature > 0)
    vertex = np.where(usable, (below - above) / np.where(usable, 2 * curvature, 1), 0.0)
    return np.clip(vertex, -0.5, 0.5)


def _gaussian(taps: int, sigma: float) -> np.ndarray:
    x = np.arange(taps) - (taps - 1) / 2
    weights = np.exp(-(x**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of `[..., H, W]` keeping only positions where the window fits ('valid')."""
    taps = len(window)
    h, w = images.shape[-2] - taps + 1, images.shape[-1] - taps + 1
    rows = sum(window[k] * images[..., k: k + h, :] for k in range(taps))
    return sum(window[k] * rows[..., k: k + w] for k in range(taps))


def _ssim_frame(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    # float64: a variance is a difference of two numbers near 65025 and must be exact to well under c2 (58.5)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = _filter_valid(np.stack([a, b, a * a, b * b, a * b]), window)
    var_a, var_b, covariance = mean_aa - mu_a * mu_a, mean_bb - mu_b * mu_b, mean_ab - mu_a * mu_b
    # written so that a == b gives exactly 1: 2*x*y and x*x + y*y round alike when x == y
    numerator = (2 * mu_a * mu_b + c1) * (2 * covariance + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((numerator / denominator).mean())
