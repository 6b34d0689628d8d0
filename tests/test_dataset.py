"""The training dataset and the up-front dataset check, on synthetic clips with tiny embeddings."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from cosmos_lora.cli.app import app

from cosmos_lora.data.dataset import VideoTextDataset, check_dataset, require_valid_dataset
from cosmos_lora.data.embeddings import write_t5_embedding
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.data.synthetic import make_synthetic_dataset
from cosmos_lora.data.video import read_video, resize_cover_crop, write_video
from cosmos_lora.errors import UserError

DIM = 32
TINY_DATASET = "demo/shapes"  # the tiny_world fixture's dataset (conftest.py)


def embedded_dataset(root, num_clips=3, num_frames=20, height=64, width=96, fps=24):
    """Synthetic clips plus an embedding per clip with a different token count each."""
    paths = make_synthetic_dataset(root, num_clips, num_frames, height, width, fps=fps, seed=3)
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        write_t5_embedding(DatasetLayout(root).embedding(path.stem), rng.standard_normal((5 + i, DIM)))
    return paths


def add_clip(root, clip, frames, fps=24, caption="a clip", dim=DIM):
    layout = DatasetLayout(root)
    write_video(layout.video(clip), frames, fps)
    layout.caption(clip).write_text(caption)
    write_t5_embedding(layout.embedding(clip), np.ones((4, dim)))


def test_sample_has_the_documented_keys_shapes_and_ranges(tmp_path):
    embedded_dataset(tmp_path, fps=30)
    dataset = VideoTextDataset(tmp_path, num_frames=17, height=32, width=48, max_text_len=64)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["video"].shape == (3, 17, 32, 48) and sample["video"].dtype == torch.float32
    assert -1.0 <= sample["video"].min() < sample["video"].max() <= 1.0
    assert sample["t5_text_embeddings"].shape == (64, DIM) and sample["t5_text_embeddings"].dtype == torch.float32
    assert sample["t5_text_mask"].tolist() == [1] * 6 + [0] * 58
    assert sample["fps"].dtype == torch.float32 and sample["fps"].ndim == 0 and sample["fps"].item() == 30
    assert sample["name"] == "synthetic_000001"
    assert sample["caption"] == (tmp_path / "metas" / "synthetic_000001.txt").read_text().strip()
    assert sample["caption"].split()[2] in ("circle", "square")


def test_video_is_the_first_frames_resized_and_scaled_to_minus_one_one(tmp_path):
    paths = embedded_dataset(tmp_path)
    sample = VideoTextDataset(tmp_path, num_frames=17, height=32, width=48)[0]
    frames, _ = read_video(paths[0])
    expected = resize_cover_crop(frames[:17], 32, 48)
    expected = torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(sample["video"], expected)


def test_clips_are_sorted_by_name_and_batch_through_a_dataloader(tmp_path):
    embedded_dataset(tmp_path, num_clips=3)
    dataset = VideoTextDataset(tmp_path, num_frames=9, height=64, width=96)
    assert [dataset[i]["name"] for i in range(3)] == ["synthetic_000000", "synthetic_000001", "synthetic_000002"]
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["video"].shape == (2, 3, 9, 64, 96)
    assert batch["t5_text_embeddings"].shape == (2, 512, DIM)
    assert batch["name"] == ["synthetic_000000", "synthetic_000001"]


def test_short_clip_raises_instead_of_being_replaced(tmp_path):
    embedded_dataset(tmp_path, num_clips=1, num_frames=9)
    with pytest.raises(UserError, match="has 9 frames; training needs 17"):
        VideoTextDataset(tmp_path, num_frames=17, height=32, width=48)[0]


def test_empty_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no videos"):
        VideoTextDataset(tmp_path, num_frames=17, height=32, width=48)


def test_valid_dataset_has_no_problems(tmp_path):
    embedded_dataset(tmp_path)
    assert check_dataset(tmp_path, num_frames=17, height=64, width=96) == []
    require_valid_dataset(tmp_path, num_frames=17, height=64, width=96)  # does not raise


def test_check_reports_every_problem_at_once_naming_each_file(tmp_path):
    embedded_dataset(tmp_path, num_clips=3)
    layout = DatasetLayout(tmp_path)
    layout.caption("synthetic_000000").unlink()
    layout.embedding("synthetic_000001").unlink()
    frames = np.full((20, 64, 96, 3), 90, np.uint8)
    add_clip(tmp_path, "short", frames[:10])
    add_clip(tmp_path, "small", frames[:, :32, :48])
    add_clip(tmp_path, "other_encoder", frames, dim=16)
    add_clip(tmp_path, "broken", frames)
    layout.video("broken").write_bytes(b"garbage" * 100)

    problems = check_dataset(tmp_path, num_frames=17, height=64, width=96)

    def about(name):
        return [p for p in problems if name in p]

    assert len(problems) == 6, problems
    assert about("synthetic_000000") == [f"{layout.video('synthetic_000000')}: no caption "
                                         f"({layout.caption('synthetic_000000')} is missing)."]
    assert about("synthetic_000001") == [f"{layout.video('synthetic_000001')}: no embedding "
                                         f"({layout.embedding('synthetic_000001')} is missing)."]
    assert "has 10 frames; training needs 17" in about("short.mp4")[0]
    assert "would be upscaled" in about("small.mp4")[0] and "32x48" in about("small.mp4")[0]
    assert "D=16 differs from D=32" in about("other_encoder.pickle")[0]
    assert "could not be decoded" in about("broken.mp4")[0]


def test_size_is_only_checked_when_given(tmp_path):
    embedded_dataset(tmp_path, num_clips=1)
    assert check_dataset(tmp_path, num_frames=17) == []
    assert "would be upscaled" in check_dataset(tmp_path, num_frames=17, height=128, width=96)[0]


def test_missing_or_empty_videos_folder_is_reported(tmp_path):
    assert check_dataset(tmp_path, num_frames=17) == [f"{tmp_path / 'videos'}: folder is missing."]
    (tmp_path / "videos").mkdir()
    assert check_dataset(tmp_path, num_frames=17) == [f"{tmp_path / 'videos'}: no .mp4 videos in it."]


def test_malicious_embedding_is_reported_as_a_problem_not_run(tmp_path):
    embedded_dataset(tmp_path, num_clips=1)
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    DatasetLayout(tmp_path).embedding("synthetic_000000").write_bytes(evil)
    problems = check_dataset(tmp_path, num_frames=17)
    assert len(problems) == 1 and "refusing to execute code" in problems[0]
    assert not marker.exists()


def test_require_valid_dataset_raises_one_error_listing_the_first_20_and_the_fix(tmp_path):
    make_synthetic_dataset(tmp_path, num_clips=12, num_frames=9, height=32, width=32)
    for caption in (tmp_path / "metas").iterdir():
        caption.unlink()
    with pytest.raises(UserError) as info:  # 12 missing captions + 12 missing embeddings
        require_valid_dataset(tmp_path, num_frames=9, name="demo/shapes")
    message = str(info.value)
    assert "24 problem(s)" in message
    assert message.count("no caption") + message.count("no embedding") == 20
    assert "and 4 more" in message
    assert "cosmos-lora embed --dataset demo/shapes" in info.value.fix and "cosmos-lora prepare" in info.value.fix


def shape_centre(frame: np.ndarray, colour) -> np.ndarray:
    """(x, y) centre of the pixels within a small distance of `colour`."""
    close = np.abs(frame.astype(int) - np.array(colour)).sum(axis=-1) < 60
    ys, xs = np.nonzero(close)
    assert len(xs) > 20, "shape colour not found in the frame"
    return np.array([xs.mean(), ys.mean()])


def test_synthetic_clips_show_what_their_captions_say(tmp_path):
    from cosmos_lora.data.synthetic import BACKGROUND_COLORS, DIRECTIONS, SHAPE_COLORS

    paths = make_synthetic_dataset(tmp_path, num_clips=6, num_frames=17, height=64, width=96, fps=12, seed=5)
    assert [p.name for p in paths] == [f"synthetic_{i:06d}.mp4" for i in range(6)]
    for path in paths:
        caption = (tmp_path / "metas" / f"{path.stem}.txt").read_text().strip()
        colour = caption.split()[1]  # "a red square moves ..."
        direction = next(d for d in DIRECTIONS if f"moves {d} on" in caption)
        background = caption.split(" on a ")[1].removesuffix(" background")
        frames, fps = read_video(path)
        assert frames.shape == (17, 64, 96, 3) and fps == 12
        corner = frames[0, 0, 0].astype(int)
        assert np.abs(corner - BACKGROUND_COLORS[background]).max() < 12
        (x0, y0), (x1, y1) = DIRECTIONS[direction]
        moved = shape_centre(frames[-1], SHAPE_COLORS[colour]) - shape_centre(frames[0], SHAPE_COLORS[colour])
        expected = np.array([x1 - x0, y1 - y0])
        assert np.dot(moved, expected) > 20  # it moved at least 20 px the stated way
    index = (tmp_path / "index.csv").read_text().splitlines()
    assert index[0].startswith("clip,source,start_frame") and len(index) == 7


def test_synthetic_dataset_is_deterministic_for_a_seed(tmp_path):
    first = make_synthetic_dataset(tmp_path / "a", num_clips=3, num_frames=5, height=32, width=32, seed=7)
    second = make_synthetic_dataset(tmp_path / "b", num_clips=3, num_frames=5, height=32, width=32, seed=7)
    other = make_synthetic_dataset(tmp_path / "c", num_clips=3, num_frames=5, height=32, width=32, seed=8)

    def captions(root):
        return [p.read_text() for p in sorted((root / "metas").iterdir())]

    assert captions(tmp_path / "a") == captions(tmp_path / "b") != captions(tmp_path / "c")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(read_video(a)[0], read_video(b)[0])
    assert len(other) == 3


# ---------------------------------------------------------------- through the CLI, on the tiny world


def embed_with(text_encoder):
    return CliRunner().invoke(app, ["embed", "--dataset", TINY_DATASET, "--text-encoder", str(text_encoder)])


def train_one_step():
    """A real training command: the dataset check stops a bad dataset before the run folder is written."""
    return CliRunner().invoke(app, ["posttrain", "--model", "tiny", "--dataset", TINY_DATASET, "--nproc", "1",
                                    "--max-iter", "1", "--name", "check"])


def test_a_caption_that_is_not_utf8_is_skipped_by_embed_and_refused_before_training(cli_env):
    from cosmos_lora.model.tiny import TINY_T5

    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    caption = layout.caption(layout.clips()[3])
    caption.write_bytes("un carré rouge".encode("latin-1"))  # a caption saved by an old Windows tool

    embedded = embed_with(cli_env.checkpoints / TINY_T5)
    assert embedded.exit_code == 0, embedded.output
    assert f"not embedded: {caption}: caption is not UTF-8 text (byte 7)." in embedded.stderr
    assert "0 caption(s) embedded, 7 already done." in embedded.stderr

    refused = train_one_step()
    assert refused.exit_code == 1 and "1 problem(s)" in refused.stderr
    assert f"{caption}: caption is not UTF-8 text (byte 7)." in refused.stderr
    assert not (cli_env.outputs / "runs" / "check").exists()


def test_embeddings_of_another_width_than_the_model_are_all_listed_before_training(cli_env):
    from cosmos_lora.model.tiny import TINY_TEXT_DIM, write_tiny_t5

    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    clips = layout.clips()
    t5_11b = cli_env.outputs / "t5-1024"
    write_tiny_t5(t5_11b, d_model=1024)  # T5-11B's width; the tiny DiT takes TINY_TEXT_DIM
    assert embed_with(t5_11b).exit_code == 0
    write_t5_embedding(layout.embedding(clips[0]), np.ones((4, 512)))  # from a T5 of yet another width
    layout.caption(clips[5]).write_bytes(b"\xff a caption")

    refused = train_one_step()
    assert refused.exit_code == 1
    assert "9 problem(s)" in refused.stderr  # 8 embeddings + 1 caption, in one message
    assert f"{layout.embedding(clips[0])}: embedding width D=512, the model takes D={TINY_TEXT_DIM}" in refused.stderr
    for clip in clips[1:]:
        assert f"{layout.embedding(clip)}: embedding width D=1024, the model takes D={TINY_TEXT_DIM}" in refused.stderr
    assert f"{layout.caption(clips[5])}: caption is not UTF-8 text (byte 0)." in refused.stderr
    assert not (cli_env.outputs / "runs" / "check").exists()
