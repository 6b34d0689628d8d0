"""Weight-free video metrics: exact values on constructed videos, and `infer --stages both` records and shows them.

Constructed videos have known answers: a static video has no flicker or motion, a constant brightness
step d between frames is flicker d, a texture moving k pixels per frame is motion k (also when the
metric works on a downscaled copy), a video d brighter than its reference is PSNR 20 log10(255 / d),
and a video identical to its reference is PSNR inf and SSIM 1.
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.data import video_metrics
from cosmos_lora.data.video import read_video
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.lora import add_lora, lora_state_dict, save_adapter, spec_for
from cosmos_lora.model.prompts import prompt_folder
from cosmos_lora.model.tiny import TINY_DIT


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 `[H, W, 3]` image of random 2x2-pixel cells: every block matches in one place only."""
    cells = np.random.default_rng(seed).integers(0, 256, ((height + 1) // 2, (width + 1) // 2, 3), dtype=np.uint8)
    return cells.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]


def panning(frames: int, height: int, width: int, speed: int) -> np.ndarray:
    """The texture moving `speed` pixels per frame to the right (a window sliding left over a wider texture)."""
    wide = texture(height, width + speed * frames)
    start = speed * frames
    return np.stack([wide[:, start - speed * t: start - speed * t + width] for t in range(frames)])


# -- flicker and motion -----------------------------------------------------------------------------

def test_a_static_video_has_no_flicker_and_no_motion():
    video = np.repeat(texture(64, 96)[None], 9, axis=0)
    assert video_metrics.flicker(video) == 0.0 and video_metrics.motion(video) == 0.0


def test_flicker_is_the_mean_absolute_step_between_frames_on_the_0_255_scale():
    still = texture(64, 64) // 2  # values 0-127: nothing clips
    for d in (1, 3, 20):
        brightening = np.stack([still + d * t for t in range(5)]).astype(np.uint8)  # +d every frame
        alternating = np.stack([still + d * (t % 2) for t in range(6)]).astype(np.uint8)  # +d, -d, ...
        assert video_metrics.flicker(brightening) == pytest.approx(d)
        assert video_metrics.flicker(alternating) == pytest.approx(d)
    blinking = np.stack([still + 20 * (t % 2) for t in range(4)]).astype(np.uint8)
    assert video_metrics.motion(blinking) == pytest.approx(0, abs=1e-3)  # light is not motion (float32 rounding aside)


EXACT = 1e-3  # a frame's mean brightness, removed before matching, changes as new texture enters


@pytest.mark.parametrize("speed", [1, 2, 3, 5])
def test_a_texture_moving_k_pixels_per_frame_has_motion_k(speed):
    assert video_metrics.motion(panning(6, 64, 96, speed)) == pytest.approx(speed, abs=EXACT)
    vertical = panning(6, 96, 64, speed).transpose(0, 2, 1, 3)  # the same, moving down
    assert video_metrics.motion(vertical) == pytest.approx(speed, abs=EXACT)


def test_motion_of_a_large_video_is_measured_on_a_downscaled_copy_in_full_size_pixels():
    height, width = 256, 576  # downscaled by 3 to 85x192
    assert math.ceil(width / video_metrics.WORK_SIZE) == 3
    assert video_metrics.motion(panning(4, height, width, 6)) == pytest.approx(6, abs=EXACT)
    slow = video_metrics.motion(panning(4, height, width, 1))  # a third of a working pixel: sub-pixel estimate
    assert 0.5 < slow < 1.5


def test_motion_saturates_at_the_search_range_and_tiny_or_single_frames_have_none():
    fast = video_metrics.motion(panning(4, 64, 160, 3 * video_metrics.SEARCH))
    assert fast <= video_metrics.SEARCH * math.sqrt(2) + 0.5  # beyond the search: counted as at most that
    one_frame = texture(64, 64)[None]
    assert video_metrics.flicker(one_frame) is None and video_metrics.motion(one_frame) is None
    assert video_metrics.motion(np.repeat(texture(16, 16)[None], 3, axis=0)) is None  # no block fits
    small = np.repeat(texture(8, 8)[None], 2, axis=0)
    assert video_metrics.measure(small, small)["drift_from_original"] == {"psnr_db": "inf", "ssim": None}  # no window fits


# -- drift ------------------------------------------------------------------------------------------

def test_identical_videos_have_infinite_psnr_and_ssim_one():
    video = panning(5, 64, 64, 2)
    assert video_metrics.psnr(video, video.copy()) == math.inf
    assert video_metrics.ssim(video, video.copy()) == 1.0
    drift = video_metrics.measure(video, video.copy())["drift_from_original"]
    assert drift == {"psnr_db": "inf", "ssim": 1.0}  # JSON has no infinity: the string "inf"
    assert json.loads(json.dumps(drift))["psnr_db"] == "inf" and video_metrics.from_json("inf") == math.inf


def ssim_by_definition(frames: np.ndarray, reference: np.ndarray) -> float:
    """Wang et al.'s SSIM written out directly (2-D 11x11 Gaussian window, sigma 1.5, every 'valid'
    position, luma of frames under 256 pixels), averaged over frames: what `video_metrics.ssim` must equal."""
    x = np.arange(11) - 5
    window = np.outer(np.exp(-(x**2) / 4.5), np.exp(-(x**2) / 4.5))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for a, b in zip(frames, reference):
        a, b = a.astype(float) @ [0.299, 0.587, 0.114], b.astype(float) @ [0.299, 0.587, 0.114]
        windows_a = np.lib.stride_tricks.sliding_window_view(a, (11, 11))
        windows_b = np.lib.stride_tricks.sliding_window_view(b, (11, 11))
        mean = lambda w: (w * window).sum(axis=(-2, -1))  # noqa: E731
        mu_a, mu_b = mean(windows_a), mean(windows_b)
        var_a, var_b = mean(windows_a**2) - mu_a**2, mean(windows_b**2) - mu_b**2
        cov = mean(windows_a * windows_b) - mu_a * mu_b
        values.append((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())
    return float(np.mean(values))


@pytest.mark.parametrize("d", [1, 5, 16])
def test_a_brightness_offset_d_gives_psnr_20_log10_255_over_d(d):
    reference = texture(48, 64)[None].repeat(2, axis=0) // 2
    brighter = reference + d
    assert video_metrics.psnr(brighter, reference) == pytest.approx(20 * math.log10(255 / d))
    # an offset leaves contrast and structure alone: only SSIM's luminance term (2ab + C1)/(a^2 + b^2 + C1) drops
    assert video_metrics.ssim(brighter, reference) == pytest.approx(ssim_by_definition(brighter, reference), abs=1e-5)
    assert video_metrics.ssim(reference + 2 * d, reference) < video_metrics.ssim(brighter, reference) < 1


def test_ssim_is_the_definition_and_falls_as_structure_is_lost():
    reference = panning(3, 48, 64, 1)
    rng = np.random.default_rng(1)
    noisy = {sigma: np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 255).astype(np.uint8) for sigma in (5, 20, 60)}
    scores = [video_metrics.ssim(noisy[sigma], reference) for sigma in (5, 20, 60)]
    assert scores == pytest.approx([ssim_by_definition(noisy[sigma], reference) for sigma in (5, 20, 60)], abs=1e-5)
    assert 1 > scores[0] > scores[1] > scores[2]
    assert video_metrics.psnr(noisy[5], reference) > video_metrics.psnr(noisy[60], reference)
    flat_a, flat_b = np.full((2, 32, 32, 3), 100, np.uint8), np.full((2, 32, 32, 3), 140, np.uint8)
    c1 = (0.01 * 255) ** 2  # flat frames: only the luminance term is left
    assert video_metrics.ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1), rel=1e-5)


def test_measure_records_json_ready_metrics_and_the_summary_reads_them():
    video = panning(5, 64, 64, 2)
    lora = np.clip(video.astype(int) + 10, 0, 255).astype(np.uint8)
    base_metrics = video_metrics.measure(video)
    assert base_metrics == {"flicker": pytest.approx(video_metrics.flicker(video), abs=1e-4), "motion_px_per_frame": pytest.approx(2, abs=EXACT)}
    lora_metrics = json.loads(json.dumps(video_metrics.measure(lora, video)))
    assert lora_metrics["drift_from_original"]["psnr_db"] == pytest.approx(video_metrics.psnr(lora, video), abs=1e-4)
    lines = video_metrics.summarise({"original": [base_metrics], "LoRA": [lora_metrics, video_metrics.measure(video, video)]})
    assert lines[1].startswith("  original, 1 video(s): flicker ") and "motion 2.00 (2.00-2.00) px/frame" in lines[1]
    psnr = video_metrics.psnr(lora, video)
    assert f"PSNR from original inf ({psnr:.1f}-inf) dB, SSIM from original " in lines[2]
    assert "drift from original: PSNR inf dB, SSIM 1.000" in video_metrics.describe(video_metrics.measure(video, video))


# -- through `infer --stages both` ------------------------------------------------------------------

def test_infer_sidecars_summary_and_index_carry_the_metrics(cli_env, tmp_path):
    net, _ = load_official_dit(cli_env.checkpoints / TINY_DIT)
    spec = spec_for(len(net.transformer_blocks), rank=4, scale=1.0)
    add_lora(net, spec, seed=0)
    up = torch.Generator().manual_seed(1)  # non-zero up-matrices change the video, as training does
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=up) for k, v in lora_state_dict(net).items()}
    save_adapter(tmp_path / "shapes.safetensors", state, spec)

    for name, scale in (("trained", "1"), ("zero", "0")):  # scale 0: the LoRA video is the base video
        result = CliRunner().invoke(app, ["infer", "--model", "tiny", "--lora", str(tmp_path / "shapes.safetensors"), "--lora-scale", scale,
                                          "-p", "a red square", "--name", name, "--steps", "2"])
        assert result.exit_code == 0, result.output
        out = cli_env.outputs / "infer" / name
        sidecars = {stage: json.loads((out / stage / prompt_folder("a red square") / "seed_0.json").read_text()) for stage in ("original", "lora")}
        for stage, sidecar in sidecars.items():
            metrics = sidecar["metrics"]
            assert metrics["flicker"] > 0 and metrics["motion_px_per_frame"] >= 0
            video = read_video(out / stage / prompt_folder("a red square") / "seed_0.mp4")[0]
            assert metrics["flicker"] == pytest.approx(video_metrics.flicker(video), rel=0.2)  # the mp4 is lossy
        assert "drift_from_original" not in sidecars["original"]["metrics"]
        drift = sidecars["lora"]["metrics"]["drift_from_original"]
        index = (out / "index.html").read_text()
        assert "original: flicker " in index and "LoRA: flicker " in index
        assert "video metrics, median (min-max)" in result.stderr and "LoRA, 1 video(s): flicker" in result.stderr
        if name == "zero":
            assert drift == {"psnr_db": "inf", "ssim": 1.0}
            assert "drift from original: PSNR inf dB, SSIM 1.000" in index
        else:
            assert 0 < drift["psnr_db"] < 40 and drift["ssim"] < 0.99
            assert f"drift from original: PSNR {drift['psnr_db']:.1f} dB, SSIM {drift['ssim']:.3f}" in index
