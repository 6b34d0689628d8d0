"""`prepare_clips` end to end with real ffmpeg: containers, captions, windows, failures and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from cosmos_lora.data.layout import INDEX_COLUMNS
from cosmos_lora.data.prepare import prepare_clips
from cosmos_lora.data.video import VideoInfo, probe_video, read_video, resize_cover_crop, write_video
from cosmos_lora.errors import EXIT_STOPPED, UserError

CLIP = 17  # frames per clip: 1 + 8k like Cosmos' 121, small enough for CPU tests
HEIGHT, WIDTH = 32, 48
CODECS = {".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx"}


def numbered_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth frames that all differ: a drifting wave in red, a fixed ramp in green, blue = 5 * t."""
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    return np.stack([
        np.stack([120 + 90 * np.sin(xs / 7 + t / 2), ys / height * 200, np.full_like(xs, 5 * t % 250)], axis=-1)
        for t in range(num_frames)
    ]).astype(np.uint8)


def write_source(path, num_frames, height, width, fps):
    """A source video in the container its suffix names."""
    frames = numbered_frames(num_frames, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        write_video(path, frames, fps)
        return
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec=CODECS[path.suffix],
                                         quality=9, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(frame)
    writer.close()


@pytest.fixture
def source_folder(tmp_path):
    """Mixed sources: containers, sizes, fps, lengths, caption kinds, plus a short, a broken and an uncaptioned one."""
    src = tmp_path / "raw"
    write_source(src / "wide.mp4", 40, 64, 96, 24)  # 2 clips (34 of 40 frames), sidecar caption
    (src / "wide.txt").write_text("a wide video\n")
    write_source(src / "sub" / "tall.mov", 20, 96, 64, 30)  # 1 clip, caption from captions.csv
    write_source(src / "sub" / "deeper" / "square.mkv", 51, 48, 48, 25)  # 3 clips, captions.csv
    write_source(src / "old.avi", 17, 64, 96, 24)  # exactly 1 clip, captions.csv
    write_source(src / "web.webm", 18, 32, 64, 24)  # 1 clip, sidecar
    (src / "web.txt").write_text("a web video")
    write_source(src / "short.mp4", 10, 64, 96, 24)
    (src / "short.txt").write_text("too short to cut")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (src / "broken.txt").write_text("cannot be decoded")
    write_source(src / "uncaptioned.mp4", 20, 32, 32, 24)
    with open(src / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerow(["sub/tall.mov", "a tall video, with a comma"])
        writer.writerow(["sub/deeper/square.mkv", "a square video"])
        writer.writerow(["old.avi", "an old video"])
        writer.writerow(["gone.mp4", "listed but missing"])
    return src


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_cuts_probes_and_indexes_every_clip(source_folder, tmp_path):
    out = tmp_path / "dataset"
    summary = prepare_clips(source_folder, out, clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=2)

    expected = {"wide_000": 24, "wide_001": 24, "tall_000": 30, "square_000": 25, "square_001": 25,
                "square_002": 25, "old_000": 24, "web_000": 24}
    assert (summary.clips_written, summary.clips_skipped_existing) == (8, 0)
    assert (summary.videos_too_short, summary.videos_failed, summary.out_root) == (1, 3, out)
    assert sorted(p.stem for p in (out / "videos").iterdir()) == sorted(expected)
    for clip, fps in expected.items():
        assert probe_video(out / "videos" / f"{clip}.mp4") == VideoInfo(CLIP, HEIGHT, WIDTH, fps)

    captions = {p.stem: p.read_text().strip() for p in (out / "metas").iterdir()}
    assert sorted(captions) == sorted(expected)
    assert captions["wide_001"] == "a wide video" and captions["tall_000"] == "a tall video, with a comma"
    assert captions["square_002"] == "a square video" and captions["web_000"] == "a web video"

    index = {row["clip"]: row for row in read_csv(out / "index.csv")}
    assert list(read_csv(out / "index.csv")[0]) == INDEX_COLUMNS
    assert sorted(index) == sorted(expected)
    assert index["square_002"] == {"clip": "square_002", "source": "sub/deeper/square.mkv", "start_frame": "34",
                                   "start_time": "1.36", "fps": "25.0", "frames": "17", "height": "32",
                                   "width": "48", "caption_source": "captions.csv"}
    assert index["wide_001"]["caption_source"] == "sidecar" and index["wide_001"]["start_frame"] == "17"

    failed = {row["source"]: row["reason"] for row in read_csv(out / "failed.csv")}
    assert sorted(failed) == ["broken.mp4", "gone.mp4", "short.mp4", "uncaptioned.mp4"]
    assert "could not be decoded" in failed["broken.mp4"]
    assert failed["short.mp4"].startswith("too short: 10 frames < 17")
    assert "no caption" in failed["uncaptioned.mp4"] and "uncaptioned.txt" in failed["uncaptioned.mp4"]
    assert "listed in captions.csv" in failed["gone.mp4"]


def test_each_clip_holds_the_source_frames_of_its_window(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 40, 64, 96, 24)
    (src / "v.txt").write_text("v")
    prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)

    source, _ = read_video(src / "v.mp4")
    candidates = resize_cover_crop(source, HEIGHT, WIDTH).astype(np.float32)
    for k in range(2):
        clip, _ = read_video(tmp_path / "out" / "videos" / f"v_{k:03d}.mp4")
        errors = ((clip[:, None].astype(np.float32) - candidates[None]) ** 2).mean(axis=(2, 3, 4))  # [17, 40]
        assert errors.argmin(axis=1).tolist() == list(range(k * CLIP, (k + 1) * CLIP))
        best, runner_up = np.sort(errors, axis=1)[:, :2].T
        assert (best < 0.5 * runner_up).all()  # clearly that frame, not merely the least unlike one


def test_rerun_skips_complete_clips_and_redoes_broken_ones(source_folder, tmp_path):
    out = tmp_path / "dataset"
    prepare_clips(source_folder, out, clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}

    again = prepare_clips(source_folder, out, clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert (again.clips_written, again.clips_skipped_existing) == (0, 8)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == mtimes
    assert len(read_csv(out / "index.csv")) == 8

    half = (out / "videos" / "square_001.mp4").read_bytes()
    (out / "videos" / "square_001.mp4").write_bytes(half[: len(half) // 2])  # an interrupted copy
    (out / "videos" / "wide_000.mp4").unlink()
    resumed = prepare_clips(source_folder, out, clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert (resumed.clips_written, resumed.clips_skipped_existing) == (2, 6)
    assert probe_video(out / "videos" / "square_001.mp4") == VideoInfo(CLIP, HEIGHT, WIDTH, 25.0)
    assert probe_video(out / "videos" / "wide_000.mp4").frames == CLIP
    assert not list((out / "videos").glob(".*"))  # no temporary files left


def test_a_different_size_is_not_mistaken_for_an_existing_clip(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 20, 64, 96, 24)
    (src / "v.txt").write_text("v")
    write_video(tmp_path / "out" / "videos" / "v_000.mp4", numbered_frames(CLIP, HEIGHT, WIDTH), 24)  # no cut recorded
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=64, width=64, workers=1)
    assert (summary.clips_written, summary.clips_skipped_existing) == (1, 0)
    assert probe_video(tmp_path / "out" / "videos" / "v_000.mp4") == VideoInfo(CLIP, 64, 64, 24.0)


def test_max_clips_per_video_limits_the_windows(source_folder, tmp_path):
    summary = prepare_clips(source_folder, tmp_path / "out", clip_frames=CLIP, max_clips_per_video=1,
                            height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written == 5
    assert sorted(p.stem for p in (tmp_path / "out" / "videos").iterdir()) == [
        "old_000", "square_000", "tall_000", "web_000", "wide_000"]


def test_pad_loops_short_videos_into_one_clip(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "short.mp4", 10, 64, 96, 24)
    (src / "short.txt").write_text("short")
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1, pad=True)
    assert (summary.clips_written, summary.videos_too_short) == (1, 0)
    clip, _ = read_video(tmp_path / "out" / "videos" / "short_000.mp4")
    assert clip.shape == (CLIP, HEIGHT, WIDTH, 3)
    for i in range(10, CLIP):  # frame 10 repeats frame 0, 11 repeats 1, ...
        assert np.abs(clip[i].astype(int) - clip[i - 10]).mean() < 2
    assert np.abs(clip[10].astype(int) - clip[9]).mean() > 5
    assert read_csv(tmp_path / "out" / "failed.csv") == []


def test_captions_from_jsonl_and_duplicate_stems_get_unique_clip_names(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "a" / "v.mp4", 17, 32, 48, 24)
    write_source(src / "b" / "v.mp4", 17, 32, 48, 24)
    rows = [{"path": "a/v.mp4", "caption": "first"}, {"path": "./b/v.mp4", "caption": "second"}]
    (src / "captions.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written == 2
    captions = {p.stem: p.read_text().strip() for p in (tmp_path / "out" / "metas").iterdir()}
    assert captions == {"a_v_mp4_000": "first", "b_v_mp4_000": "second"}
    assert {row["caption_source"] for row in read_csv(tmp_path / "out" / "index.csv")} == {"captions.jsonl"}


def test_output_folder_inside_the_source_is_not_read_as_a_source(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 17, 32, 48, 24)
    (src / "v.txt").write_text("v")
    prepare_clips(src, src / "prepared", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    again = prepare_clips(src, src / "prepared", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert (again.clips_written, again.clips_skipped_existing, again.videos_failed) == (0, 1, 0)


@pytest.mark.parametrize("height, width", [(30, 48), (32, 50)])
def test_size_not_a_multiple_of_16_is_refused_before_any_work(source_folder, tmp_path, height, width):
    with pytest.raises(UserError, match="multiple of 16"):
        prepare_clips(source_folder, tmp_path / "out", clip_frames=CLIP, height=height, width=width, workers=1)
    assert not (tmp_path / "out").exists()


def test_bad_caption_tables_go_to_failed_csv_and_the_job_carries_on(tmp_path):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 17, 32, 48, 24)
    (src / "v.txt").write_text("v")
    (src / "captions.csv").write_text("file,text\nv.mp4,hello\n")
    (src / "captions.jsonl").write_text('{"path": "v.mp4", "caption": "ok"}\nnot json\n')
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written == 1
    reasons = {row["source"]: row["reason"] for row in read_csv(tmp_path / "out" / "failed.csv")}
    assert "captions.csv has columns" in reasons["captions.csv"]
    assert "captions.jsonl line 2" in reasons["captions.jsonl"]


def test_missing_source_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare_clips(tmp_path / "nope", tmp_path / "out", height=HEIGHT, width=WIDTH, workers=1)


def test_folder_without_videos_is_a_user_error(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("no videos here")
    with pytest.raises(UserError, match="No videos"):
        prepare_clips(tmp_path / "raw", tmp_path / "out", height=HEIGHT, width=WIDTH, workers=1)


def test_progress_goes_to_stderr_and_can_be_turned_off(tmp_path, capsys):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 17, 32, 48, 24)
    (src / "v.txt").write_text("v")
    prepare_clips(src, tmp_path / "a", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    shown = capsys.readouterr()
    assert shown.out == "" and "cutting clips" in shown.err and "1/1" in shown.err
    prepare_clips(src, tmp_path / "b", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1, show_progress=False)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- Vript: time-stamped scenes, categories


def vript_caption(content, shot="close-up", camera="pan left"):
    return {"shot_type": shot, "camera_movement": camera, "content": content, "scene_title": "ignored"}


@pytest.fixture
def vript_folder(tmp_path):
    """Vript's layout: captions per video (JSON and JSONL forms), a meta file with categories, videos."""
    src = tmp_path / "Vript"
    write_source(src / "vript_long_videos" / "vidA.mp4", 51, 64, 96, 10)  # 5.1 s -> clips of 1.7 s
    write_source(src / "vript_long_videos" / "-vidB.mp4", 34, 48, 64, 25)  # 1.36 s -> clips of 0.68 s
    write_source(src / "vript_long_videos" / "nocaption.mp4", 17, 32, 48, 24)
    (src / "vript_captions").mkdir(parents=True)
    scenes = {  # clip 0 = [0, 1.7) s overlaps Scene-002 longest, though it is the first of three clips
        "vidA-Scene-001": ("00:00:00.000-00:00:00.500", "the opening"),
        "vidA-Scene-002": ("00:00:00.500-00:00:03.000", "the middle"),
        "vidA-Scene-003": ("00:00:03.000-00:00:05.100", "the ending"),
    }
    (src / "vript_captions" / "vidA_caption.json").write_text(json.dumps({
        "meta": {"video_id": "vidA", "video_title": "t", "num_clips": 3, "integrity": True},
        "data": {clip_id: {"video_id": "vidA", "clip_id": clip_id, "caption": vript_caption(text), "timestamp": stamp,
                           "voiceover": ["not used"]} for clip_id, (stamp, text) in scenes.items()},
    }))
    lines = [{"clip_id": "-vidB-Scene-001", "caption": "first part", "start": 0, "end": 1.0},
             {"clip_id": "-vidB-Scene-002", "caption": "second part", "start": 1.0, "end": 1.36},
             {"clip_id": "gone-Scene-001", "caption": "a video nobody downloaded", "timestamp": ["0:00:00", "0:00:09"]}]
    (src / "vript_captions" / "more.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    (src / "vript_meta").mkdir()
    (src / "vript_meta" / "vript_long_videos_meta.json").write_text(json.dumps({
        "vidA": {"video_id": "vidA", "categories": "Sports & Outdoors"},
        "-vidB": {"video_id": "-vidB", "categories": ["Music", "Dance"]},
    }))
    return src


def test_vript_clips_take_the_longest_overlapping_scene_and_split_by_category(vript_folder, tmp_path):
    from typer.testing import CliRunner

    from cosmos_lora.cli.app import app

    args = ["--datasets-dir", str(tmp_path / "datasets"), "prepare", str(vript_folder), "--name", "vript",
            "--frames", str(CLIP), "--resolution", str(HEIGHT), str(WIDTH), "--workers", "2"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    out = tmp_path / "datasets" / "vript"
    assert run.stdout.split() == [str(out / "music"), str(out / "sports-outdoors")]
    assert "vript source: 5 clip(s) written" in run.stderr

    sports, music = out / "sports-outdoors", out / "music"
    captions = {p.stem: p.read_text().strip() for p in (sports / "metas").iterdir()}
    assert captions == {  # by position ratio clip 0 would have been "the opening"
        "vidA_000": "the middle Shot type: close-up. Camera movement: pan left.",
        "vidA_001": "the middle Shot type: close-up. Camera movement: pan left.",
        "vidA_002": "the ending Shot type: close-up. Camera movement: pan left.",
    }
    index = {row["clip"]: row for row in read_csv(sports / "index.csv")}
    assert [index[c]["caption_source"] for c in sorted(index)] == [
        "vript scene vidA-Scene-002", "vript scene vidA-Scene-002", "vript scene vidA-Scene-003"]
    assert index["vidA_002"]["source"] == "vript_long_videos/vidA.mp4" and index["vidA_002"]["start_time"] == "3.4"
    # -vidB: [0.68, 1.36) s overlaps "first part" 0.32 s and "second part" 0.36 s
    assert {p.stem: p.read_text().strip() for p in (music / "metas").iterdir()} == {
        "-vidB_000": "first part", "-vidB_001": "second part"}
    assert probe_video(music / "videos" / "-vidB_001.mp4") == VideoInfo(CLIP, HEIGHT, WIDTH, 25.0)

    failed = {row["source"]: row["reason"] for row in read_csv(out / "failed.csv")}
    assert sorted(failed) == ["vript_captions/more.jsonl", "vript_long_videos/nocaption.mp4"]
    assert "no video named gone.*" in failed["vript_captions/more.jsonl"]
    assert "no Vript caption file" in failed["vript_long_videos/nocaption.mp4"]

    again = CliRunner().invoke(app, args)  # resumable per category folder
    assert again.exit_code == 0 and "0 clip(s) written, 5 already there" in again.stderr


def test_vript_scenes_outside_every_clip_leave_the_video_failed(tmp_path):
    src = tmp_path / "Vript"
    write_source(src / "v.mp4", 17, 32, 48, 24)
    (src / "vript_captions").mkdir()
    (src / "vript_captions" / "v.json").write_text(json.dumps(
        {"meta": {"video_id": "v"}, "clips": [{"caption": "later", "timestamp": "00:01:00.000-00:01:05.000"},
                                               {"caption": "no time"}]}))
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert (summary.source_format, summary.clips_written, summary.videos_failed) == ("vript", 0, 1)
    assert "no scene's time stamps overlap" in read_csv(tmp_path / "out" / "failed.csv")[0]["reason"]


def test_vript_time_stamp_forms():
    from cosmos_lora.data.sources import parse_range, parse_time, slugify

    assert parse_time("00:01:02.500") == 62.5 and parse_time("1:02.5") == 62.5 and parse_time(3) == 3.0
    assert parse_range("00:00:01.000-00:00:05.000") == (1.0, 5.0)
    assert parse_range("0:00:01.000 --> 0:00:05.000") == parse_range(["0:00:01", 5]) == (1.0, 5.0)
    assert parse_range({"start": 1, "end": "5"}) == (1.0, 5.0)
    for bad in ("5-1", "a-b", [1], "1:2:3:4-9"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert slugify("Science & Technology") == "science-technology" and slugify(" ") == "uncategorized"


# ---------------------------------------------------------------- Panda-70M / UltraVideo: captioned time ranges


@pytest.fixture
def panda_folder(tmp_path):
    src = tmp_path / "panda"
    write_source(src / "videos" / "p1.mp4", 60, 64, 96, 10)  # 6 s
    write_source(src / "videos" / "p2.mp4", 48, 48, 64, 24)  # 2 s
    write_source(src / "ultra" / "u.mp4", 40, 64, 64, 30)
    with open(src / "panda70m_part.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
        # p1: frames 0..35 hold two windows, 36..59 one
        writer.writerow(["p1", "https://www.youtube.com/watch?v=p1",
                         "[['0:00:00.000', '0:00:03.500'], ['0:00:03.600', '0:00:05.900']]",
                         "['a red thing, moving', 'a blue thing']", "[0.4, 0.5]"])
        writer.writerow(["p2", "", "[['0:00:00.000', '0:00:00.500']]", "['too short a range']", "[0.5]"])
        writer.writerow(["gone", "", "[['0:00:00.000', '0:00:09.000']]", "['not downloaded']", "[0.5]"])
        writer.writerow(["p2", "", "[['0:00:00.000', '0:00:01.000'], ['0:00:01.000', '0:00:02.000']]", "['one']", ""])
    with open(src / "ultravideo.csv", "w", newline="") as f:  # one range per row, a path, start/end seconds
        writer = csv.writer(f)
        writer.writerow(["path", "start", "end", "caption"])
        writer.writerow(["ultra/u.mp4", "0.2", "1.5", "an ultra video"])
    return src


def test_panda_clips_come_only_from_inside_each_captioned_range(panda_folder, tmp_path):
    out = tmp_path / "out"
    summary = prepare_clips(panda_folder, out, clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=2)
    assert summary.source_format == "panda"
    assert (summary.clips_written, summary.videos_too_short, summary.videos_failed) == (5, 1, 2)
    index = {row["clip"]: row for row in read_csv(out / "index.csv")}
    assert {clip: int(row["start_frame"]) for clip, row in index.items()} == {
        "p1_000_000": 0, "p1_000_001": 17, "p1_001_000": 36, "u_000_000": 6, "u_000_001": 23}
    assert index["p1_001_000"]["caption_source"] == "panda70m_part.csv line 2 range 1"
    assert index["u_000_001"]["caption_source"] == "ultravideo.csv line 2 range 0"
    captions = {p.stem: p.read_text().strip() for p in (out / "metas").iterdir()}
    assert captions["p1_000_001"] == "a red thing, moving" and captions["p1_001_000"] == "a blue thing"
    assert captions["u_000_000"] == "an ultra video"

    source, _ = read_video(panda_folder / "videos" / "p1.mp4")
    candidates = resize_cover_crop(source, HEIGHT, WIDTH).astype(np.float32)
    clip, _ = read_video(out / "videos" / "p1_001_000.mp4")
    errors = ((clip[:, None].astype(np.float32) - candidates[None]) ** 2).mean(axis=(2, 3, 4))
    assert errors.argmin(axis=1).tolist() == list(range(36, 36 + CLIP))

    failed = {row["source"]: row["reason"] for row in read_csv(out / "failed.csv")}
    assert failed["panda70m_part.csv line 4"] == f"no video named gone.* under {panda_folder}"
    assert failed["panda70m_part.csv line 5"] == "2 time range(s) but 1 caption(s)"
    assert failed["videos/p2.mp4"].startswith("too short: no captioned range holds 17 frames (longest: 12)")


def test_panda_max_clips_spreads_over_ranges_and_a_csv_can_be_the_source(panda_folder, tmp_path):
    summary = prepare_clips(panda_folder / "panda70m_part.csv", tmp_path / "out", clip_frames=CLIP,
                            max_clips_per_video=2, height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written == 2  # p1's first window of each range, not its range 0 twice
    assert sorted(p.stem for p in (tmp_path / "out" / "videos").iterdir()) == ["p1_000_000", "p1_001_000"]


def test_unknown_or_mismatched_source_format_is_a_user_error(source_folder, tmp_path):
    with pytest.raises(UserError, match="Unknown source format"):
        prepare_clips(source_folder, tmp_path / "out", height=HEIGHT, width=WIDTH, workers=1, source_format="webvid")
    with pytest.raises(UserError, match="no vript_captions/ folder"):
        prepare_clips(source_folder, tmp_path / "out", height=HEIGHT, width=WIDTH, workers=1, source_format="vript")
    with pytest.raises(UserError, match="holds no CSV with a time range"):
        prepare_clips(source_folder, tmp_path / "out", height=HEIGHT, width=WIDTH, workers=1, source_format="panda")


# ---------------------------------------------------------------- through the CLI: bad inputs, one cut, stops


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "cosmos_lora", "prepare", *args], capture_output=True, text=True,
                          **kwargs)


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_LORA_DATASETS", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def test_unreadable_captions_and_dropped_inputs_each_get_a_failed_csv_row(tmp_path, datasets):
    src = tmp_path / "raw"
    for name in ("good", "latin1", "listed", "jsonl"):
        write_source(src / f"{name}.mp4", CLIP, 32, 48, 24)
    (src / "good.txt").write_text("fine")
    (src / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (src / "captions.csv").write_bytes("path,caption\nlisted.mp4,na\xefve\n".encode("latin-1"))
    (src / "captions.jsonl").write_bytes(b'{"path": "jsonl.mp4", "caption": "\xff"}\n')
    (src / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")  # a dangling link

    done = cli(str(src), "--name", "x/y", "--frames", str(CLIP), "--resolution", "32", "48", "--workers", "1")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    reasons = {row["source"]: row["reason"] for row in read_csv(datasets / "x" / "y" / "failed.csv")}
    assert reasons["latin1.mp4"] == "latin1.txt is not UTF-8 text (byte 3)."
    assert reasons["captions.csv"].startswith("captions.csv is not UTF-8 text")
    assert reasons["captions.jsonl"].startswith("captions.jsonl is not UTF-8 text")
    assert reasons["listed.mp4"].startswith("no caption") and reasons["jsonl.mp4"].startswith("no caption")
    assert reasons["gone.mp4"] == "not a readable file (a dangling link?)"
    assert [row["clip"] for row in read_csv(datasets / "x" / "y" / "index.csv")] == ["good_000"]


def test_a_folder_that_cannot_be_listed_is_a_failed_csv_row(tmp_path, monkeypatch):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", CLIP, 32, 48, 24)
    (src / "v.txt").write_text("v")
    (src / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # root reads every folder, so the refusal a user would get is staged here
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = prepare_clips(src, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written == 1
    assert {"source": "locked/", "reason": "folder cannot be read: Permission denied"} in read_csv(
        tmp_path / "out" / "failed.csv")


def test_vript_caption_or_meta_file_that_is_not_utf8_is_a_failed_csv_row(vript_folder, tmp_path):
    (vript_folder / "vript_captions" / "more.jsonl").write_bytes(b'{"clip_id": "x", "caption": "\xe9"}\n')
    (vript_folder / "vript_meta" / "broken_meta.json").write_bytes(b"\xff\xfe")
    summary = prepare_clips(vript_folder, tmp_path / "out", clip_frames=CLIP, height=HEIGHT, width=WIDTH, workers=1)
    assert summary.clips_written > 0
    reasons = {row["source"]: row["reason"] for row in read_csv(tmp_path / "out" / "failed.csv")}
    assert reasons["vript_captions/more.jsonl"].startswith("more.jsonl is not UTF-8 text")
    assert reasons["vript_meta/broken_meta.json"].startswith("broken_meta.json is not UTF-8 text")


def test_a_rerun_with_another_cut_is_refused_in_one_line_and_touches_nothing(tmp_path, datasets):
    src = tmp_path / "raw"
    write_source(src / "v.mp4", 40, 64, 96, 24)
    (src / "v.txt").write_text("v")
    common = [str(src), "--name", "x/y", "--workers", "1"]
    assert cli(*common, "--frames", "17", "--resolution", "32", "48").returncode == 0
    dataset = datasets / "x" / "y"
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    for other in (["--frames", "9", "--resolution", "32", "48"], ["--frames", "17", "--resolution", "64", "64"],
                  ["--frames", "17", "--resolution", "32", "48", "--max-clips", "1"]):
        refused = cli(*common, *other)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and lines[0].startswith(f"Error: {dataset} holds clips cut with --frames 17 "
                                                               "--resolution 32 48; this run asks for"), refused.stderr
        assert len(lines) == 2 and lines[1].startswith("Fix:")
        assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before
    again = cli(*common, "--frames", "17", "--resolution", "32", "48")
    assert again.returncode == 0 and "0 clip(s) written, 2 already there" in again.stderr


def test_sigterm_stops_every_worker_at_once_and_a_rerun_finishes(tmp_path, datasets):
    src = tmp_path / "raw"
    for i in range(4):
        write_video(src / f"v{i}.mp4", np.random.default_rng(i).integers(0, 255, (119, 64, 96, 3), np.uint8), 24,
                    quality="low")
        (src / f"v{i}.txt").write_text(f"video {i}")
    command = [sys.executable, "-m", "cosmos_lora", "prepare", str(src), "--name", "x/y", "--frames", "17",
               "--resolution", "64", "96", "--workers", "2"]
    dataset = datasets / "x" / "y"
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(dataset.glob("videos/*.mp4")):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended or hung before its first clip"
        time.sleep(0.02)
    stopped_at = time.monotonic()
    run.send_signal(signal.SIGTERM)
    stderr = run.communicate(timeout=60)[1]
    assert time.monotonic() - stopped_at < 10  # a whole run takes longer; before, the workers went on cutting
    assert run.returncode == EXIT_STOPPED
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith(("Error", "Fix", "Trace"))]
    assert lines == ["Error: Stopped before every clip was cut; rerun the same command to continue (finished clips "
                     "are kept)."], stderr
    assert not [p for p in dataset.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    made = len(list(dataset.glob("videos/*.mp4")))
    assert 1 <= made < 28

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{28 - made} clip(s) written, {made} already there" in rerun.stderr
    assert len(read_csv(dataset / "index.csv")) == 28


def test_sources_smaller_than_the_clip_size_are_counted_as_upscaled(tmp_path, datasets):
    src = tmp_path / "raw"
    write_source(src / "small.mp4", CLIP, 16, 24, 24)  # half the clip size: upscaled 2x
    write_source(src / "narrow.mp4", CLIP, 32, 40, 24)  # 32x40 covers 32x48 at 1.2x
    write_source(src / "big.mp4", CLIP, 64, 96, 24)  # downscaled only
    for name in ("small", "narrow", "big"):
        (src / f"{name}.txt").write_text(name)
    done = cli(str(src), "--name", "x/y", "--frames", str(CLIP), "--resolution", "32", "48", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert ("2 of 3 source(s) were smaller than 32x48 (height x width) and were upscaled (up to 2.0x)"
            in done.stderr), done.stderr
    assert [probe_video(p).height for p in sorted((datasets / "x" / "y" / "videos").iterdir())] == [HEIGHT] * 3
    only_big = tmp_path / "only_big"
    write_source(only_big / "big.mp4", CLIP, 64, 96, 24)
    (only_big / "big.txt").write_text("big")
    quiet = cli(str(only_big), "--name", "x/z", "--frames", str(CLIP), "--resolution", "32", "48", "--workers", "1")
    assert quiet.returncode == 0 and "upscaled" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("name, source, message", [
    ("sports", "folder", "--name 'sports' is not COLLECTION/DOMAIN."),
    ("a/b/c", "folder", "--name 'a/b/c' is not COLLECTION/DOMAIN."),
    ("vript/sports", "vript", "for a Vript source --name is the COLLECTION alone"),
])
def test_name_must_be_collection_and_domain_before_any_work(tmp_path, datasets, vript_folder, name, source, message):
    src = vript_folder if source == "vript" else tmp_path / "raw"
    if source == "folder":
        write_source(src / "v.mp4", CLIP, 32, 48, 24)
        (src / "v.txt").write_text("v")
    refused = cli(str(src), "--name", name, "--frames", str(CLIP), "--resolution", "32", "48", "--workers", "1")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 2 and message in lines[0] and lines[1].startswith("Fix:"), refused.stderr
    assert not datasets.exists()  # refused before anything was written
