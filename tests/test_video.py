"""Video I/O against the real ffmpeg binary from imageio-ffmpeg, on tiny generated clips."""

import contextlib
import gc
import os
import signal
import subprocess

import numpy as np
import pytest

from cosmos_lora.data.video import (
    VideoInfo,
    VideoWriter,
    count_frames,
    probe_video,
    read_video,
    resize_cover_crop,
    side_by_side,
    write_video,
)
from cosmos_lora.errors import UserError


def moving_gradient(num_frames: int, height: int, width: int) -> np.ndarray:
    """A smooth colour gradient that shifts each frame: easy to compress, so round trips stay close."""
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    frames = [
        np.stack([xs / width * 200 + 2 * t, ys / height * 200, np.full_like(xs, 60 + 3 * t)], axis=-1)
        for t in range(num_frames)
    ]
    return np.clip(frames, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "num_frames, height, width, fps",
    [(17, 64, 96, 24.0), (33, 40, 64, 30.0), (1, 32, 32, 10.0), (21, 96, 64, 25.0)],
)
def test_write_then_probe_reports_exact_frames_size_and_fps(tmp_path, num_frames, height, width, fps):
    path = tmp_path / "clip.mp4"
    write_video(path, moving_gradient(num_frames, height, width), fps)
    assert probe_video(path) == VideoInfo(frames=num_frames, height=height, width=width, fps=fps)
    frames, read_fps = read_video(path)
    assert frames.shape == (num_frames, height, width, 3) and frames.dtype == np.uint8
    assert read_fps == fps


def test_ntsc_frame_rate_is_recovered_from_ffmpegs_rounded_print(tmp_path):
    path = tmp_path / "ntsc.mp4"
    write_video(path, moving_gradient(9, 32, 32), 24000 / 1001)
    assert probe_video(path).fps == pytest.approx(24000 / 1001, abs=1e-6)


def test_round_trip_at_high_quality_is_close(tmp_path):
    original = moving_gradient(17, 64, 96)
    write_video(tmp_path / "a.mp4", original, 24)
    decoded, _ = read_video(tmp_path / "a.mp4")
    error = np.abs(decoded.astype(np.int16) - original.astype(np.int16))
    assert error.mean() < 1.5
    assert np.percentile(error, 99) <= 6


def test_read_video_max_frames_returns_the_first_frames(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path, moving_gradient(20, 32, 48), 24)
    everything, _ = read_video(path)
    first, fps = read_video(path, max_frames=5)
    assert first.shape == (5, 32, 48, 3) and fps == 24
    np.testing.assert_array_equal(first, everything[:5])
    assert read_video(path, max_frames=100)[0].shape[0] == 20


def test_count_frames_stops_at_limit(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path, moving_gradient(20, 32, 32), 24)
    assert count_frames(path) == 20
    assert count_frames(path, limit=7) == 7
    assert probe_video(path, max_frames=30).frames == 20


def test_probe_and_read_agree_on_a_damaged_stream(tmp_path):
    # Zeroing part of the data drops frames; a raw pipe at constant frame rate would fill the gap
    # with duplicates, so this catches the reader and the counter using different frame-rate modes.
    path = tmp_path / "damaged.mp4"
    write_video(path, moving_gradient(40, 64, 96), 24)
    data = bytearray(path.read_bytes())
    start, end = int(len(data) * 0.3), int(len(data) * 0.5)
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))
    frames, _ = read_video(path)
    assert probe_video(path).frames == len(frames) <= 40


def test_write_creates_parent_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "er" / "a.mp4"
    write_video(path, moving_gradient(3, 32, 32), 24)
    assert [p.name for p in path.parent.iterdir()] == ["a.mp4"]


def test_odd_frame_size_is_a_user_error_and_writes_nothing(tmp_path):
    path = tmp_path / "odd.mp4"
    with pytest.raises(UserError, match="even") as info:
        write_video(path, np.zeros((3, 33, 64, 3), np.uint8), 24)
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_interrupted_by_an_error_leaves_old_file_untouched(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path, moving_gradient(5, 32, 32), 24)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, 32, 32, 24) as writer:
            writer.write(moving_gradient(3, 32, 32))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_a_stop_while_ffmpeg_starts_leaves_no_temporary_file(tmp_path, monkeypatch):
    """SIGTERM/Ctrl-C right after ffmpeg was started (the race that left `.seed_0.mp4.tmp*` in infer's
    output): the writer never returns, and the ffmpeg it started must not publish a temporary file."""
    started = []
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt at once
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        VideoWriter(tmp_path / "a.mp4", 32, 32, 24)
    monkeypatch.undo()
    gc.collect()
    for process in started:  # whatever ffmpeg got started must be finished before looking
        with contextlib.suppress(OSError):
            process.stdin.close()
        process.wait(timeout=30)
    assert started and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("when", ["writing", "closing"])
def test_a_stop_mid_write_or_close_leaves_no_temporary_file(tmp_path, monkeypatch, when):
    path = tmp_path / "a.mp4"
    writer = VideoWriter(path, 32, 32, 24)
    if when == "writing":
        with pytest.raises(KeyboardInterrupt):
            with writer:
                writer.write(moving_gradient(3, 32, 32))
                os.kill(os.getpid(), signal.SIGINT)
                writer.write(moving_gradient(3, 32, 32))
    else:
        writer.write(moving_gradient(3, 32, 32))
        monkeypatch.setattr(os, "replace", lambda *a: signal.raise_signal(signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            writer.close()  # used on its own, as prepare does: close must clean up after itself
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50, "truncated"])
def test_undecodable_file_is_a_user_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.mp4"
    if content == "truncated":
        write_video(tmp_path / "good.mp4", moving_gradient(17, 64, 96), 24)
        content = (tmp_path / "good.mp4").read_bytes()[:2000]  # moov atom is at the end: cut off
    path.write_bytes(content)
    for read in (probe_video, read_video):
        with pytest.raises(UserError, match="could not be decoded") as info:
            read(path)
        assert str(path) in info.value.problem


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")


def test_resize_cover_crop_is_a_no_op_at_the_right_size():
    frames = moving_gradient(2, 32, 48)
    assert resize_cover_crop(frames, 32, 48) is frames


def test_resize_cover_crop_keeps_the_centre_of_a_wide_video():
    # 64x128: red | blue | blue | green quarters. Cropping to square keeps the blue middle half.
    frames = np.zeros((2, 64, 128, 3), np.uint8)
    frames[:, :, :32] = (255, 0, 0)
    frames[:, :, 32:96] = (0, 0, 255)
    frames[:, :, 96:] = (0, 255, 0)
    out = resize_cover_crop(frames, 32, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    inner = out[:, :, 1:-1].astype(int)
    assert inner[..., 2].min() > 200 and inner[..., 0].max() < 50 and inner[..., 1].max() < 50


def test_resize_cover_crop_keeps_the_centre_of_a_tall_video_and_can_upscale():
    frames = np.zeros((1, 48, 16, 3), np.uint8)
    frames[:, 16:32] = 200  # middle third bright, top and bottom thirds black
    out = resize_cover_crop(frames, 32, 64)  # aspect 2:1 wide: keeps rows ~20..28 of the source
    assert out.shape == (1, 32, 64, 3)
    assert out.min() >= 190


def test_side_by_side_places_panels_under_label_strips():
    a = np.full((4, 32, 48, 3), 100, np.uint8)
    b = np.full((4, 32, 48, 3), 200, np.uint8)
    out = side_by_side([a, b], ["base", "lora"])
    strip = out.shape[1] - 32
    assert out.shape == (4, 32 + strip, 48 + 8 + 48, 3)
    assert out.shape[1] % 2 == 0 and out.shape[2] % 2 == 0
    assert strip >= 10
    assert (out[:, strip:, :48] == 100).all() and (out[:, strip:, 56:] == 200).all()
    for panel in (slice(0, 48), slice(56, 104)):
        label = out[:, :strip, panel]
        assert label.max() > 200  # text pixels are drawn
        assert np.median(label) < 60  # on a dark strip
        assert (label == label[:1]).all()  # on every frame
    assert not (out[0, :strip, :48] == out[0, :strip, 56:]).all()  # different labels


def test_side_by_side_rejects_videos_of_different_length():
    with pytest.raises(ValueError, match="equally long"):
        side_by_side([np.zeros((3, 8, 8, 3), np.uint8), np.zeros((4, 8, 8, 3), np.uint8)], ["a", "b"])
