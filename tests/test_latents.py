"""The latent cache: written once, keyed by what made it, reused, equal to the live encoding, never stale."""

import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.data.dataset import VideoTextDataset, check_dataset, require_valid_dataset
from cosmos_lora.data.embed import LatentSettings, encode_latents
from cosmos_lora.data.latents import latent_cache_dir, latent_path, tokenizer_hash
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.data.synthetic import make_synthetic_dataset
from cosmos_lora.errors import UserError
from cosmos_lora.model.tiny import TINY_T5, TINY_TOKENIZER
from cosmos_lora.model.tokenizer import LATENT_CHANNELS, VideoTokenizer
TINY_DATASET = "demo/shapes"  # the tiny_world fixture's dataset (conftest.py)
FRAMES, HEIGHT, WIDTH = 17, 32, 48
CPU = torch.device("cpu")


def embed_latents(roots, *extra):
    args = ["embed", "--dataset", TINY_DATASET, "--text-encoder", str(roots.checkpoints / TINY_T5),
            "--latents", "--frames", str(FRAMES), "--resolution", str(HEIGHT), str(WIDTH),
            "--tokenizer", str(roots.checkpoints / TINY_TOKENIZER), *extra]
    return CliRunner().invoke(app, args)


def test_embed_latents_writes_a_keyed_cache_and_a_rerun_reuses_it(cli_env):
    root, tokenizer = cli_env.dataset(TINY_DATASET), cli_env.checkpoints / TINY_TOKENIZER
    first = embed_latents(cli_env)
    assert first.exit_code == 0, first.output
    cache = latent_cache_dir(root, tokenizer, FRAMES, HEIGHT, WIDTH)
    assert cache.name == f"{tokenizer_hash(tokenizer)}-17x32x48" and cache.parent == root / "latents"
    assert first.stdout.split() == [str(root / "t5_xxl"), str(cache)]
    assert "8 latent(s) encoded, 0 already cached, 0 failed." in first.stderr
    assert sorted(p.stem for p in cache.glob("*.safetensors")) == DatasetLayout(root).clips()
    info = json.loads((cache / "cache.json").read_text())
    assert info["key"] == cache.name and info["latent_shape"] == [LATENT_CHANNELS, 3, 4, 6]
    assert (info["num_frames"], info["height"], info["width"], info["pixel_chunk"]) == (17, 32, 48, 121)
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}

    again = embed_latents(cli_env)
    assert again.exit_code == 0 and "0 latent(s) encoded, 8 already cached" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")} == mtimes


def test_the_key_changes_with_size_frames_and_tokenizer_contents_not_its_path(tiny_world, tmp_path):
    tokenizer = tiny_world.checkpoints / TINY_TOKENIZER
    key = latent_cache_dir(tmp_path, tokenizer, 17, 32, 48).name
    assert latent_cache_dir(tmp_path, tokenizer, 17, 32, 64).name != key
    assert latent_cache_dir(tmp_path, tokenizer, 9, 32, 48).name != key
    assert latent_cache_dir(tmp_path, tokenizer, 17, 32, 48, pixel_chunk=9).name == key + "-chunk9"
    moved = shutil.copytree(tokenizer, tmp_path / "moved")
    assert latent_cache_dir(tmp_path, moved, 17, 32, 48).name == key
    other = shutil.copytree(tokenizer, tmp_path / "retrained")
    mean, std = torch.load(other / "mean_std.pt")
    torch.save((mean + 0.1, std), other / "mean_std.pt")
    assert latent_cache_dir(tmp_path, other, 17, 32, 48).name != key


def test_dataset_returns_the_cached_latent_equal_to_encoding_its_video(roots):
    root, tokenizer_dir = roots.dataset(TINY_DATASET), roots.checkpoints / TINY_TOKENIZER
    summary = encode_latents(root, LatentSettings(str(tokenizer_dir), FRAMES, HEIGHT, WIDTH, batch_size=3), CPU,
                             torch.float32, show_progress=False)
    assert summary.latents_encoded == 8
    cache = latent_cache_dir(root, tokenizer_dir, FRAMES, HEIGHT, WIDTH)
    decoded = VideoTextDataset(root, FRAMES, HEIGHT, WIDTH)
    cached = VideoTextDataset(root, FRAMES, HEIGHT, WIDTH, latents_dir=cache)
    tokenizer = VideoTokenizer(tokenizer_dir, CPU, torch.float32)
    for index in (0, 5):
        live, sample = decoded[index], cached[index]
        assert "video" not in sample and sample["latent"].dtype == torch.float32
        assert sample["latent"].shape == (LATENT_CHANNELS, 3, HEIGHT // 8, WIDTH // 8)
        torch.testing.assert_close(sample["latent"], tokenizer.encode(live["video"][None])[0])
        assert sample["fps"] == live["fps"] and sample["name"] == live["name"]
        torch.testing.assert_close(sample["t5_text_embeddings"], live["t5_text_embeddings"])
    batch = next(iter(DataLoader(cached, batch_size=4)))
    assert batch["latent"].shape == (4, LATENT_CHANNELS, 3, 4, 6) and "video" not in batch
    assert check_dataset(root, FRAMES, HEIGHT, WIDTH, latents_dir=cache) == []


def test_a_stale_or_foreign_latent_is_never_used_and_the_check_names_it(roots):
    root, tokenizer_dir = roots.dataset(TINY_DATASET), roots.checkpoints / TINY_TOKENIZER
    layout = DatasetLayout(root)
    encode_latents(root, LatentSettings(str(tokenizer_dir), FRAMES, HEIGHT, WIDTH), CPU, torch.float32,
                   show_progress=False)
    cache = latent_cache_dir(root, tokenizer_dir, FRAMES, HEIGHT, WIDTH)
    clips = layout.clips()
    recut = root.parent / "recut"  # clip 0 re-cut by prepare: same name, other pixels
    make_synthetic_dataset(recut, num_clips=1, num_frames=17, height=64, width=64, seed=99)
    shutil.copy(DatasetLayout(recut).video("synthetic_000000"), layout.video(clips[0]))
    latent_path(cache, clips[1]).unlink()
    other = latent_cache_dir(root, tokenizer_dir, FRAMES, HEIGHT, 64)
    other.mkdir(parents=True)
    shutil.copy(latent_path(cache, clips[2]), latent_path(other, clips[2]))  # right name, wrong folder

    dataset = VideoTextDataset(root, FRAMES, HEIGHT, WIDTH, latents_dir=cache)
    assert "video" in dataset[0] and "latent" not in dataset[0]  # decoded again, not the stale latent
    assert "video" in dataset[1] and "latent" in dataset[2]
    assert "video" in VideoTextDataset(root, FRAMES, HEIGHT, 64, latents_dir=other)[2]
    problems = check_dataset(root, FRAMES, HEIGHT, WIDTH, latents_dir=cache)
    assert len(problems) == 2
    assert "stale, the video changed after it was encoded" in problems[0] and clips[0] in problems[0]
    assert problems[1] == f"{layout.video(clips[1])}: no latent ({latent_path(cache, clips[1])} is missing)."
    assert "of key " + cache.name in check_dataset(root, FRAMES, HEIGHT, 64, latents_dir=other)[2]
    missing = latent_cache_dir(root, tokenizer_dir, 9, HEIGHT, WIDTH)
    assert check_dataset(root, 9, HEIGHT, WIDTH, latents_dir=missing) == [
        f"{missing}: no latent cache for this tokenizer, frame count and size."]
    with pytest.raises(UserError) as info:
        require_valid_dataset(root, FRAMES, HEIGHT, WIDTH, name=TINY_DATASET, latents_dir=cache)
    assert "--latents --frames 17 --resolution 32 48" in info.value.fix

    rerun = encode_latents(root, LatentSettings(str(tokenizer_dir), FRAMES, HEIGHT, WIDTH), CPU, torch.float32,
                           show_progress=False)
    assert sorted(rerun.encoded_clips) == clips[:2] and rerun.latents_skipped_existing == 6
    assert check_dataset(root, FRAMES, HEIGHT, WIDTH, latents_dir=cache) == []


def test_a_broken_clip_is_listed_and_the_others_are_encoded(cli_env):
    root, tokenizer_dir = cli_env.dataset(TINY_DATASET), cli_env.checkpoints / TINY_TOKENIZER
    layout = DatasetLayout(root)
    broken = layout.video(layout.clips()[3])
    broken.write_bytes(b"not a video" * 50)
    result = embed_latents(cli_env, "--latent-batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "7 latent(s) encoded, 0 already cached, 1 failed (see failed.csv there)." in result.stderr
    cache = latent_cache_dir(root, tokenizer_dir, FRAMES, HEIGHT, WIDTH)
    failed = (cache / "failed.csv").read_text().splitlines()
    assert failed[0] == "source,reason" and len(failed) == 2
    assert failed[1].startswith(f"{broken},") and "could not be decoded" in failed[1]
    assert len(list(cache.glob("*.safetensors"))) == 7


@pytest.mark.parametrize("args, message", [
    (["--frames", "16"], "is not 1+8k frames of multiples of 16"),
    (["--resolution", "30", "48"], "is not 1+8k frames of multiples of 16"),
    (["--frames", "33", "--pixel-chunk", "9"], "33 frames cannot be encoded in chunks of 9"),
    (["--tokenizer", "nowhere"], "lacks encoder.jit"),
])
def test_bad_latent_settings_are_refused_before_any_work(cli_env, args, message):
    result = CliRunner().invoke(app, ["embed", "--dataset", TINY_DATASET, "--latents", "--tokenizer",
                                      str(cli_env.checkpoints / TINY_TOKENIZER), *args])
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (cli_env.dataset(TINY_DATASET) / "latents").exists()


def test_a_clip_changed_anywhere_in_its_file_is_encoded_again_and_never_trained_on_stale(cli_env):
    import numpy as np

    from cosmos_lora.data.video import write_video

    layout = DatasetLayout(cli_env.dataset(TINY_DATASET))
    clip = layout.video(layout.clips()[0])
    # noise compresses badly: a file of a few hundred KiB, so its middle lies far from both ends
    write_video(clip, np.random.default_rng(0).integers(0, 256, (17, 128, 128, 3), dtype=np.uint8), 24)
    training_size = ["--frames", "17", "--resolution", "64", "64", "--pixel-chunk", "17"]  # the tiny preset's
    args = ["embed", "--dataset", TINY_DATASET, "--latents", "--tokenizer", str(cli_env.checkpoints / TINY_TOKENIZER),
            *training_size]
    assert "8 latent(s) encoded" in CliRunner().invoke(app, args).stderr
    data = bytearray(clip.read_bytes())
    assert len(data) > 3 * 64 * 1024
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    clip.write_bytes(bytes(data))  # same name and size, same first and last 64 KiB; other pixels in frame 8

    train = ["posttrain", "--model", "tiny", "--dataset", TINY_DATASET, "--nproc", "1", "--max-iter", "1",
             "--name", "check"]
    refused = CliRunner().invoke(app, train)
    assert refused.exit_code == 1 and "1 problem(s)" in refused.stderr
    assert "stale, the video changed after it was encoded" in refused.stderr and clip.stem in refused.stderr
    assert "--latents --frames 17 --resolution 64 64" in refused.stderr
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "1 latent(s) encoded, 7 already cached, 0 failed." in again.stderr
    cache = latent_cache_dir(layout.root, cli_env.checkpoints / TINY_TOKENIZER, 17, 64, 64, 17)
    assert check_dataset(layout.root, 17, 64, 64, latents_dir=cache) == []
