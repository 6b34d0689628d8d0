"""Video2World beside Text2World: the variant is read off the checkpoint, the tiny V2W model, and the
errors a user meets (parity with the official code is in test_parity_v2w.py)."""

import json

import numpy as np

import pytest
import torch

from cosmos_lora.model.checkpoint import load_official_dit, official_state_dict
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.sizes import DIT_SIZES, size_from_state_dict


def test_the_7b_video2world_layout_is_the_7b_with_a_72_wide_patch_embedding(fixtures_dir):
    layout = json.loads((fixtures_dir / "dit7b_keys.json").read_text())["keys"]
    state = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    assert size_from_state_dict(state) == DIT_SIZES["7b"]
    state["net.x_embedder.proj.1.weight"] = torch.empty(4096, 72, device="meta")
    assert size_from_state_dict(state) == DIT_SIZES["7b-v2w"]
    net = build_dit("7b-v2w", device="meta")
    assert net.video2world and net.patch_embed.proj.weight.shape == (4096, 72)
    state["net.x_embedder.proj.1.weight"] = torch.empty(4096, 76, device="meta")
    with pytest.raises(ValueError, match="neither Text2World"):
        size_from_state_dict(state)


def test_tiny_v2w_round_trips_and_a_t2w_net_refuses_a_condition_mask(tmp_path):
    torch.manual_seed(0)
    net = build_dit("tiny-v2w")
    torch.save(official_state_dict(net, LogVarHead()), tmp_path / "model.pt")
    loaded, _ = load_official_dit(tmp_path / "model.pt")
    assert loaded.video2world and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    x = dict(x=torch.randn(1, 16, 2, 8, 8), timesteps=torch.tensor([0.1]), crossattn_emb=torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="Text2World DiT"):
        build_dit("tiny")(**x, condition_mask=torch.ones(1, 1, 2, 8, 8))


def test_the_v2w_preset_trains_what_download_fetches():
    from cosmos_lora.config import load_preset
    from cosmos_lora.hub.download import MODELS

    folders = {spec.folder for spec in MODELS["7B-Video2World"]}
    model = load_preset("video2world_7b_lora").model
    assert model.dit.split("/")[0] in folders and model.tokenizer in folders and model.text_encoder in folders


def _trainer(cli_env, name: str, overrides: dict | None = None):
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.distributed import Distributed, Launch
    from cosmos_lora.train.checks import check_inputs
    from cosmos_lora.train.launch import prepare_run_dir
    from cosmos_lora.train.trainer import Trainer

    config = build_experiment("tiny_v2w_lora", cli_env, "demo/shapes", overrides or {}, [], name, Launch(1))
    check_inputs(config)
    prepare_run_dir(config, resume=False)
    return Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))


def test_v2w_training_gives_the_drawn_condition_frames_with_the_recipes_sigmas(cli_env):
    trainer = _trainer(cli_env, "v2w", {"model.video2world.condition_frames": [2]})
    seen = []
    hook = trainer.net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        trainer._start_data()
        before = {k: v.detach().clone() for k, v in trainer.params.items()}
        loss, _, _ = trainer.train_step()
    finally:
        hook.remove()
        trainer.close()
    assert torch.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in trainer.params.items())
    mask = seen[0]["condition_mask"]
    assert mask.shape == (1, 1, 3, 8, 8) and mask[:, :, :2].all() and not mask[:, :, 2:].any()
    sigma = torch.exp(4 * seen[0]["timesteps"].double())  # c_noise = ln(sigma) / 4
    first = torch.Generator().manual_seed(0 * 1_000_003)  # the trainer's noise generator, rank 0, seed 0
    torch.rand(1, generator=first)  # text dropout draw
    expected = 4.0 * torch.exp(torch.randn(1, generator=first, dtype=torch.float64))  # sigma_multiplier 4
    torch.testing.assert_close(sigma, expected, rtol=1e-5, atol=0)


def test_the_recipe_must_agree_with_the_checkpoint(cli_env):
    from cli_helpers import assert_user_error, cli
    from cosmos_lora.model.tiny import TINY_DIT, TINY_DIT_V2W

    wrong_dit = cli("posttrain", "--model", "tiny-v2w", "-d", "demo/shapes", "--dry-run", "--", f"model.dit={TINY_DIT}")
    assert_user_error(wrong_dit, "trains Video2World", "Text2World checkpoint")
    no_recipe = cli("posttrain", "--model", "tiny", "-d", "demo/shapes", "--dry-run", "--", f"model.dit={TINY_DIT_V2W}")
    assert_user_error(no_recipe, "is a Video2World checkpoint", "--model 7b-v2w")
    too_many = cli("posttrain", "--model", "tiny-v2w", "-d", "demo/shapes", "--dry-run", "--",
                   "model.video2world.condition_frames=[0,3]")
    assert_user_error(too_many, "condition_frames [0, 3]")


# -- infer --image / --video --------------------------------------------------------------------------

ORANGE = (230, 120, 30)


def _image(path, colour=ORANGE, size=(48, 40), mode="RGB"):
    from PIL import Image

    Image.new(mode, size, colour).save(path)
    return path


def _v2w_lora(checkpoints, path, video2world=True):
    from cosmos_lora.model.lora import add_lora, lora_state_dict, save_adapter, spec_for
    from cosmos_lora.model.tiny import TINY_DIT_V2W

    net, _ = load_official_dit(checkpoints / TINY_DIT_V2W)
    spec = spec_for(len(net.transformer_blocks), rank=2, scale=1.0)
    add_lora(net, spec, seed=0)
    generator = torch.Generator().manual_seed(1)
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=generator) for k, v in lora_state_dict(net).items()}
    save_adapter(path, state, spec, {"step": 5, "video2world": video2world})
    return path


def _round_trip(checkpoints, image) -> np.ndarray:
    """The mean colour of an image (or a flat colour) after the tiny tokenizer's encode and decode (its decoder
    ends in tanh)."""
    from cosmos_lora.model.generation import VideoInput, VideoSettings
    from cosmos_lora.model.tiny import TINY_TOKENIZER
    from cosmos_lora.model.tokenizer import VideoTokenizer, video_to_uint8

    tokenizer = VideoTokenizer(checkpoints / TINY_TOKENIZER, "cpu", torch.float32, 17)
    image = np.full((40, 48, 3), image, np.uint8) if len(image) == 3 else image
    pixels = VideoInput(image[None]).pixels(VideoSettings(17, 64, 64, 24, 3, 7))
    return video_to_uint8(tokenizer.decode(tokenizer.encode(pixels))[0]).numpy()[0].reshape(-1, 3).mean(0)


def test_image_conditioned_videos_start_from_the_image_and_record_it(cli_env, tmp_path):
    import hashlib

    from cli_helpers import assert_ok, cli
    from cosmos_lora.data.video import read_video, probe_video

    image = _image(tmp_path / "first.png")
    lora = _v2w_lora(cli_env.checkpoints, tmp_path / "v2w.safetensors")
    result = cli("infer", "--model", "tiny-v2w", "--lora", str(lora), "--image", str(image), "-p", "a red square",
                 "--steps", "3", "--name", "v2w")
    assert_ok(result)
    out = cli_env.outputs / "infer" / "v2w"
    videos = sorted(out.glob("*/*/seed_0.mp4"))
    assert [v.parts[-3] for v in videos] == ["compare", "lora", "original"]
    through_tokenizer = _round_trip(cli_env.checkpoints, ORANGE)
    for stage in ("original", "lora"):
        frames, _ = read_video(out / stage / videos[0].parts[-2] / "seed_0.mp4")
        first = frames[0].reshape(-1, 3).mean(0)
        assert abs(first - through_tokenizer).max() < 4, first  # the condition frame comes back as the image
        meta = json.loads((out / stage / videos[0].parts[-2] / "seed_0.json").read_text())
        assert meta["input_file"] == str(image) and meta["input_kind"] == "image" and meta["num_input_frames"] == 1
        assert meta["input_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert meta["augment_sigma"] == 0.001
    compare = probe_video(videos[0])
    assert compare.width > 3 * 64  # input, original and LoRA side by side
    rerun = cli("infer", "--model", "tiny-v2w", "--lora", str(lora), "--image", str(_image(image, (10, 200, 10))),
                "-p", "a red square", "--steps", "3", "--name", "v2w", "--stages", "original")
    assert_ok(rerun)  # same path, other content: the videos are remade (their sidecar's hash no longer matches)
    frames, _ = read_video(out / "original" / videos[0].parts[-2] / "seed_0.mp4")
    assert frames[0].reshape(-1, 3).mean(0)[1] > 150


def test_video_conditioned_inference_takes_the_last_nine_frames(cli_env, tmp_path):
    from cli_helpers import assert_ok, cli
    from cosmos_lora.data.video import read_video, write_video

    clip = np.zeros((12, 64, 64, 3), np.uint8)
    clip[:3] = (0, 0, 255)  # only the first 3 frames are blue: the last 9 are green
    clip[3:] = (20, 210, 40)
    write_video(tmp_path / "clip.mp4", clip, 24)
    result = cli("infer", "--model", "tiny-v2w", "--video", str(tmp_path / "clip.mp4"), "--num-input-frames", "9",
                 "-p", "a green field", "--steps", "3", "--stages", "original", "--name", "v2w9")
    assert_ok(result)
    video = next((cli_env.outputs / "infer" / "v2w9" / "original").glob("*/seed_0.mp4"))
    frames, _ = read_video(video)
    green = _round_trip(cli_env.checkpoints, (20, 210, 40))
    assert abs(frames[:9].reshape(-1, 3).mean(0) - green).max() < 6  # 2 latent frames: the first 9 frames


def test_v2w_input_errors_stop_before_any_model_loads(cli_env, tmp_path):
    from cli_helpers import assert_user_error, cli
    from cosmos_lora.data.video import write_video

    image = _image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_text("not an image")
    write_video(tmp_path / "short.mp4", np.zeros((5, 64, 64, 3), np.uint8), 24)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    base = ["infer", "--model", "tiny-v2w", "-p", "x", "--stages", "original"]
    assert_user_error(cli(*base, "--image", str(tmp_path / "broken.png")), "broken.png is not a readable image")
    assert_user_error(cli(*base, "--image", str(tmp_path / "missing.png")), "No image at")
    assert_user_error(cli(*base, "--video", str(tmp_path / "short.mp4"), "--num-input-frames", "9"), "has 5 frame(s)")
    assert_user_error(cli(*base, "--video", str(tmp_path / "broken.mp4")), "broken.mp4")
    assert_user_error(cli(*base, "--image", str(image), "--num-input-frames", "9"), "an image is 1 frame")
    assert_user_error(cli(*base, "--video", str(tmp_path / "short.mp4"), "--num-input-frames", "4"), "1 or 9 frames")
    assert_user_error(cli(*base, "--image", str(image), "--video", str(tmp_path / "short.mp4")), "give only one")
    assert_user_error(cli(*base), "is a Video2World model", "--image FILE")
    assert_user_error(cli("infer", "--model", "tiny", "-p", "x", "--stages", "original", "--image", str(image)),
                      "needs a Video2World model")
    t2w_lora = _v2w_lora(cli_env.checkpoints, tmp_path / "t2w.safetensors", video2world=False)
    assert_user_error(cli(*base[:-2], "--lora", str(t2w_lora), "--image", str(image)),
                      "is a Text2World LoRA", "is Video2World")
    assert not (cli_env.outputs / "infer").exists()  # nothing written


# -- exports ----------------------------------------------------------------------------------------

@pytest.fixture
def v2w_run(cli_env, v2w_fixtures_dir, monkeypatch):
    """Checkpoints whose tiny V2W DiT is the fixtures' official one, and a run holding the fixtures' official LoRA."""
    import shutil

    from cosmos_lora.config import load_preset
    from cosmos_lora.config.experiment import resolved, save_config
    from cosmos_lora.distributed import Distributed
    from cosmos_lora.model.checkpoint import base_fingerprint
    from cosmos_lora.model.lora import from_official
    from cosmos_lora.model.tiny import TINY_DIT_V2W
    from cosmos_lora.train.checkpointer import Checkpointer

    checkpoints = cli_env.outputs.parent / "official_checkpoints"
    shutil.copytree(cli_env.checkpoints, checkpoints)
    shutil.copyfile(v2w_fixtures_dir / "v2w_tiny_native.pt", checkpoints / TINY_DIT_V2W)
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(checkpoints))
    state, spec = from_official(torch.load(v2w_fixtures_dir / "v2w_tiny_lora_native.pt", weights_only=True), scale=1.5)
    run_dir = cli_env.outputs / "runs" / "v2w-run"
    config = load_preset("tiny_v2w_lora")
    config.job.name, config.job.dataset, config.job.run_dir = "v2w-run", "demo/shapes", str(run_dir)
    save_config(resolved(config), run_dir / "config.yaml")
    metadata = {"base_fingerprint": base_fingerprint(checkpoints / TINY_DIT_V2W), "base": TINY_DIT_V2W, "video2world": True}
    cpu = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    Checkpointer(run_dir, cpu, spec, keep_states=1, metadata=metadata).save(
        10, {k: 2 * v for k, v in state.items()}, state, train_state={"step": 10}, rng_state={})  # EMA = the official LoRA
    return checkpoints / TINY_DIT_V2W


def _lora_output(base, adapter, io, case="case2"):
    from cosmos_lora.model.network import build_network

    net = build_network(base, torch.device("cpu"), torch.float32, lora=adapter).net.eval()
    inputs = {k: io[f"{case}.{k}"] for k in ("x", "timesteps", "crossattn_emb", "fps", "padding_mask")}
    with torch.no_grad():
        return net(**inputs, condition_mask=io[f"{case}.condition_video_input_mask"])


def test_v2w_exports_load_back_and_the_official_one_has_an_ema_entry(cli_env, v2w_run, v2w_fixtures_dir, tmp_path):
    from safetensors.torch import load_file

    from cli_helpers import assert_ok, cli
    from cosmos_lora.model import adapter_files

    io = load_file(v2w_fixtures_dir / "v2w_tiny_io.safetensors")
    expected = load_file(v2w_fixtures_dir / "v2w_tiny_lora_io.safetensors")["case2.out_lora"]
    out = tmp_path / "Cosmos-Predict1-7B-Video2World_post-trained-lora" / "model.pt"
    result = cli("export", "--run", "v2w-run", "--format", "official", "--out", str(out))
    assert_ok(result)
    assert "video2world.py" in result.stderr and "--num_input_frames" in result.stderr
    exported = torch.load(out, weights_only=True)
    assert exported["model"]["net.x_embedder.proj.1.weight"].shape == (64, 72)
    lora_keys = {k for k in exported["model"] if "_lora." in k}
    # the official loader (`load_network_model`) overlays the EMA entry, '-' read as '.', on the model weights
    assert {k.replace("-", ".") for k in exported["ema"]} == lora_keys and len(lora_keys) == 16
    assert all(torch.equal(exported["ema"][k.replace(".", "-")], exported["model"][k]) for k in lora_keys)
    official = adapter_files.from_file(out)
    assert official.video2world is True
    torch.testing.assert_close(_lora_output(v2w_run, official, io), expected, atol=2e-5, rtol=1e-5)

    assert_ok(cli("export", "--run", "v2w-run", "--format", "comfyui", "--out", str(tmp_path / "c.safetensors")))
    comfy = adapter_files.from_file(tmp_path / "c.safetensors")
    torch.testing.assert_close(_lora_output(v2w_run, comfy, io), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_demo_v2w_trains_and_continues_an_image(tmp_path):
    import os
    import subprocess
    import sys

    from cosmos_lora.data.video import read_video

    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_LORA_")}
    done = subprocess.run([sys.executable, "-m", "cosmos_lora", "demo", "--v2w", "--max-iter", "10", "--nproc", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / done.stdout.strip().splitlines()[-1]
    assert out == tmp_path / "outputs" / "infer" / "demo-v2w"
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "input.png"))
    for compare in sorted((out / "compare").glob("*/seed_0.mp4")):
        meta = json.loads((out / "lora" / compare.parent.name / "seed_0.json").read_text())
        assert meta["input_kind"] == "image" and meta["input_file"].endswith("input.png")
        original = read_video(out / "original" / compare.parent.name / "seed_0.mp4")[0]
        assert original.shape == (17, 64, 64, 3)
        assert abs(original[0].astype(int) - image.astype(int)).mean() < 40  # starts near the clip's first frame
    adapter = tmp_path / "outputs" / "runs" / "demo-v2w" / "adapters" / "step_000010.safetensors"
    from cosmos_lora.model.adapter_files import from_file

    assert from_file(adapter).video2world is True


def test_v2w_validation_samples_continue_the_first_frame_of_a_clip(cli_env):
    from cosmos_lora.data.layout import DatasetLayout
    from cosmos_lora.data.video import read_video

    trainer = _trainer(cli_env, "v2w-val", {"trainer.validate_every": 1, "trainer.validation.steps": 2,
                                            "trainer.validation.prompts": ["a red circle"]})
    try:
        folder = trainer.validate()
    finally:
        trainer.close()
    layout = DatasetLayout(cli_env.dataset("demo/shapes"))
    first = read_video(layout.video(layout.clips()[0]), max_frames=1)[0][0]
    sample = read_video(next(folder.glob("*_seed0.mp4")))[0]
    assert abs(sample[0].reshape(-1, 3).mean(0) - _round_trip(cli_env.checkpoints, first)).max() < 4


def test_v2w_validation_inputs_come_from_the_held_out_clips_when_there_are_any(cli_env):
    """Validation continues frames the LoRA never trained on: the eval loss's held-out clips, when a split exists."""
    from omegaconf import OmegaConf

    from cosmos_lora.data.layout import DatasetLayout
    from cosmos_lora.data.video import read_video
    from cosmos_lora.data.split import excluded_from_training
    from cosmos_lora.train.validation import first_frames

    dataset = cli_env.dataset("demo/shapes")
    clips = DatasetLayout(dataset).clips()
    split = OmegaConf.create({"trainer": {"evaluation": {"dataset": None, "clips": [clips[-1]]}}})
    assert excluded_from_training(split.trainer.evaluation) == [clips[-1]]
    frames = first_frames(dataset, ["a", "b"], excluded_from_training(split.trainer.evaluation))
    last = read_video(DatasetLayout(dataset).video(clips[-1]), max_frames=1)[0]
    assert all(np.array_equal(f, last) for f in frames.values())
    other_dataset = OmegaConf.create({"trainer": {"evaluation": {"dataset": "x/y", "clips": [clips[-1]]}}})
    assert excluded_from_training(other_dataset.trainer.evaluation) == []  # another dataset's clips are not this one's: fall back to its own
    assert np.array_equal(first_frames(dataset, ["a"], excluded_from_training(other_dataset.trainer.evaluation))["a"],
                          read_video(DatasetLayout(dataset).video(clips[0]), max_frames=1)[0])
