"""`cosmos-lora infer` on the tiny model: videos, comparisons, LoRA formats, errors, sharding, resume, index.html.

Everything runs the real pipeline (tiny DiT, tiny T5, tiny tokenizer, ffmpeg) with 2 denoising steps.
The "trained" adapter is written by the trainer's own `Checkpointer` with random up-matrices, which
changes the video as much as real training does and takes no time.
"""

import hashlib
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cosmos_lora.cli.app import app
from cosmos_lora.config import load_preset, resolved, save_config
from cosmos_lora.data.video import probe_video, read_video
from cosmos_lora.distributed import Distributed
from cosmos_lora.infer.pipeline import Text2WorldGenerator
from cosmos_lora.infer.prompts import plan_jobs, shard
from cosmos_lora.infer.settings import InferSettings, StackedLora
from cosmos_lora.model import lora_formats
from cosmos_lora.model.prompts import DEFAULT_NEGATIVE_PROMPT, Prompt, prompt_folder
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.lora import LoraSpec, add_lora, lora_state_dict, save_adapter, spec_for
from cosmos_lora.model.tiny import TINY_DIT, TINY_T5, TINY_TOKENIZER
from cosmos_lora.train.checkpointer import Checkpointer

RUN = "shapes-lora"
RED = prompt_folder("a red square")  # a prompt's folder: its slug and a hash of its text
STEP = 10
FAST = ["--steps", "2"]
FRAMES, SIZE = 17, 64  # the tiny preset's generation size


# -- helpers and fixtures ---------------------------------------------------------------------------

def infer(*args: str):
    return CliRunner().invoke(app, ["infer", *args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def assert_user_error(result, *phrases: str) -> None:
    """Exit 1 through the CLI's error boundary: one `Error:` line and its `Fix:` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # any other exception is a bug
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert all(phrase in result.stderr for phrase in phrases), result.stderr
    assert "Fix:" in result.stderr and "Traceback" not in result.output


def frames_of(path) -> np.ndarray:
    return read_video(path)[0].astype(int)


def trained_lora(checkpoints, rank: int = 4, scale: float = 1.0, seed: int = 0):
    """(tensors, spec) of a LoRA on the tiny DiT with non-zero up-matrices, as training leaves them."""
    net, _ = load_official_dit(checkpoints / TINY_DIT)
    spec = spec_for(len(net.transformer_blocks), rank=rank, scale=scale)
    add_lora(net, spec, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {k: v if ".lora_A." in k else 0.5 * torch.randn(v.shape, generator=generator) for k, v in lora_state_dict(net).items()}
    return state, spec


@pytest.fixture(scope="session")
def run_template(tiny_world, tmp_path_factory):
    """A finished tiny run as posttrain leaves it: config.yaml, adapters (raw + EMA) at step 10, latest.json."""
    run_dir = tmp_path_factory.mktemp("runs") / RUN
    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir = RUN, "demo/shapes", str(run_dir)
    save_config(resolved(config), run_dir / "config.yaml")
    state, spec = trained_lora(tiny_world.checkpoints)
    cpu = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    checkpointer = Checkpointer(run_dir, cpu, spec, keep_states=1, metadata={"base": TINY_DIT})
    ema = {k: 0.9 * v for k, v in state.items()}
    checkpointer.save(STEP, state, ema, train_state={"step": STEP}, rng_state={})
    return run_dir


@pytest.fixture
def run_dir(cli_env, run_template):
    target = cli_env.outputs / "runs" / RUN
    shutil.copytree(run_template, target)
    return target


@pytest.fixture
def official_base(cli_env, tiny_world, fixtures_dir, monkeypatch):
    """A checkpoints folder whose tiny DiT is the fixtures' official base net (the one their LoRA was trained on)."""
    checkpoints = cli_env.outputs.parent / "official_checkpoints"
    shutil.copytree(tiny_world.checkpoints, checkpoints)
    shutil.copyfile(fixtures_dir / "dit_tiny_native.pt", checkpoints / TINY_DIT)
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(checkpoints))
    return checkpoints


# -- 1. outputs of --stages both --------------------------------------------------------------------

def test_both_writes_videos_sidecars_comparisons_and_index(cli_env, run_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a blue circle", "name": "circle", "seed": 7, "negative_prompt": "blurry"}) + "\n")
    result = infer("--run", RUN, "-p", "a red square moves", "--prompts-file", str(prompts), "--num-videos", "2", "--seed", "3", *FAST)
    assert_ok(result)
    out = cli_env.outputs / "infer" / RUN
    assert result.stdout.strip() == str(out)
    jobs = [(prompt_folder("a red square moves"), 3, "a red square moves"), (prompt_folder("a red square moves"), 4, "a red square moves"),
            ("circle", 7, "a blue circle"), ("circle", 8, "a blue circle")]
    adapter = run_dir / "adapters" / f"step_{STEP:06d}.ema.safetensors"  # EMA by default
    for name, seed, text in jobs:
        stage_frames = {}
        for stage in ("original", "lora"):
            video = out / stage / name / f"seed_{seed}.mp4"
            info = probe_video(video)
            assert (info.frames, info.height, info.width, info.fps) == (FRAMES, SIZE, SIZE, 24.0)
            stage_frames[stage] = frames_of(video)
            assert (video.parent / "prompt.txt").read_text() == text + "\n"
            meta = json.loads(video.with_suffix(".json").read_text())
            assert (meta["prompt"], meta["seed"], meta["stage"], meta["steps"]) == (text, seed, stage, 2)
            assert (meta["frames"], meta["height"], meta["width"]) == (FRAMES, SIZE, SIZE)
            assert meta["negative_prompt"] == ("blurry" if name == "circle" else DEFAULT_NEGATIVE_PROMPT)
            assert meta["seconds"] > 0 and meta["process"] == "0/1"
            if stage == "lora":
                [lora] = meta["adapters"]
                assert lora["adapter"] == str(adapter) and lora["weight"] == 1.0 and lora["adapter_step"] == STEP and lora["adapter_ema"] is True
                assert lora["adapter_sha256"] == hashlib.sha256(adapter.read_bytes()).hexdigest()
                assert (lora["lora_rank"], lora["lora_scale"], lora["lora_blocks"]) == (4, 1.0, [0, 1])
            else:
                assert "adapters" not in meta
        assert np.abs(stage_frames["original"] - stage_frames["lora"]).mean() > 5  # the LoRA changes the video
        # the comparison: a label strip above each panel, original left, LoRA right, 8 px apart
        compare = out / "compare" / name / f"seed_{seed}.mp4"
        info = probe_video(compare)
        assert (info.frames, info.width) == (FRAMES, 2 * SIZE + 8) and info.height > SIZE
        both, strip = frames_of(compare), info.height - SIZE
        assert np.abs(both[:, strip:, :SIZE] - stage_frames["original"]).mean() < 4
        assert np.abs(both[:, strip:, SIZE + 8:] - stage_frames["lora"]).mean() < 4
    index = (out / "index.html").read_text()
    assert index.count('<figure class="comparison"') == len(jobs)
    for name, seed, _ in jobs:
        assert f'src="compare/{name}/seed_{seed}.mp4"' in index
    assert json.loads((out / "plan.json").read_text())["num_videos"] == 2


# -- 2. zero-effect and trained LoRA ----------------------------------------------------------------

def test_zero_scale_lora_gives_the_original_frames_and_a_trained_one_does_not(cli_env, run_dir):
    for name, scale in (("zero", "0"), ("trained", "1")):
        assert_ok(infer("--run", RUN, "-p", "a red square", "--lora-scale", scale, "--name", name, *FAST))
    frames = {
        (name, stage): frames_of(cli_env.outputs / "infer" / name / stage / RED / "seed_0.mp4")
        for name in ("zero", "trained") for stage in ("original", "lora")
    }
    assert np.array_equal(frames["zero", "original"], frames["zero", "lora"])
    assert np.array_equal(frames["zero", "original"], frames["trained", "original"])  # same seed, same noise
    assert np.abs(frames["trained", "original"] - frames["trained", "lora"]).mean() > 5
    [meta] = json.loads((cli_env.outputs / "infer" / "zero" / "lora" / RED / "seed_0.json").read_text())["adapters"]
    assert (meta["lora_trained_scale"], meta["lora_scale_multiplier"], meta["lora_scale"]) == (1.0, 0.0, 0.0)


def test_offload_moves_models_between_phases_without_changing_the_videos(cli_env, run_dir):
    for name, extra in (("resident", ()), ("offloaded", ("--offload",))):
        assert_ok(infer("--run", RUN, "-p", "a red square", "--name", name, *FAST, *extra))
    for stage in ("original", "lora"):
        resident = frames_of(cli_env.outputs / "infer" / "resident" / stage / RED / "seed_0.mp4")
        offloaded = frames_of(cli_env.outputs / "infer" / "offloaded" / stage / RED / "seed_0.mp4")
        assert np.array_equal(resident, offloaded)


def test_fp8_videos_stay_close_to_the_plain_ones_and_the_plan_records_fp8(cli_env, run_dir):
    for name, extra in (("plain", ()), ("fp8", ("--fp8",))):
        assert_ok(infer("--run", RUN, "-p", "a red square", "--name", name, *FAST, *extra))
    out = cli_env.outputs / "infer"
    video = {(name, stage): frames_of(out / name / stage / RED / "seed_0.mp4")
             for name in ("plain", "fp8") for stage in ("original", "lora")}
    lora_effect = np.abs(video["plain", "original"] - video["plain", "lora"]).mean()
    for stage in ("original", "lora"):
        fp8_effect = np.abs(video["plain", stage] - video["fp8", stage]).mean()
        assert 0 < fp8_effect < lora_effect / 4  # FP8 rounding, not another video
    assert np.abs(video["fp8", "original"] - video["fp8", "lora"]).mean() > lora_effect / 2  # the LoRA still acts
    assert json.loads((out / "fp8" / "plan.json").read_text())["settings"]["fp8"] is True
    # without an adapter too (nothing frozen by LoRA then)
    assert_ok(infer("--model", "tiny", "-p", "a red square", "--stages", "original", "--name", "base_fp8", "--fp8", *FAST))
    base = frames_of(out / "base_fp8" / "original" / RED / "seed_0.mp4")
    assert 0 < np.abs(base - video["plain", "original"]).mean() < lora_effect / 4
    # a folder of FP8 videos is not topped up with plain ones
    assert_user_error(infer("--run", RUN, "-p", "a red square", "--name", "fp8", *FAST), "fp8 True -> False", "--overwrite")


def test_no_ema_and_step_pick_the_raw_adapter_of_that_step(cli_env, run_dir):
    assert_ok(infer("--run", RUN, "--step", str(STEP), "--no-ema", "--stages", "lora", "-p", "a red square", *FAST))
    [meta] = json.loads((cli_env.outputs / "infer" / RUN / "lora" / RED / "seed_0.json").read_text())["adapters"]
    assert meta["adapter"] == str(run_dir / "adapters" / f"step_{STEP:06d}.safetensors") and meta["adapter_ema"] is False


# -- 3. --lora file formats -------------------------------------------------------------------------

def test_lora_accepts_our_diffusers_and_comfyui_files_with_the_same_result(cli_env, tmp_path):
    state, spec = trained_lora(cli_env.checkpoints, rank=4, scale=1.5)  # a non-default scale must survive export
    ours = tmp_path / "ours.safetensors"
    save_adapter(ours, state, spec)
    diffusers_tensors, metadata = lora_formats.to_diffusers(state, spec)
    save_file(diffusers_tensors, tmp_path / "diffusers.safetensors", metadata=metadata)
    save_file(lora_formats.to_comfyui(state, spec), tmp_path / "comfyui.safetensors")
    assert next(iter(diffusers_tensors)).startswith("transformer.transformer_blocks.")
    assert "diffusion_model.blocks.block0.blocks.0.block.attn.to_q.0.lora_up.weight" in load_file(tmp_path / "comfyui.safetensors")

    videos = {}
    for kind in ("ours", "diffusers", "comfyui"):
        result = infer("--model", "tiny", "--lora", str(tmp_path / f"{kind}.safetensors"), "--stages", "lora", "-p", "a red square", *FAST)
        assert_ok(result)
        lora_dir = cli_env.outputs / "infer" / kind / "lora" / RED
        [meta] = json.loads((lora_dir / "seed_0.json").read_text())["adapters"]
        expected_format = "cosmos-lora" if kind == "ours" else kind
        assert (meta["adapter_format"], meta["lora_rank"], meta["lora_scale"], meta["lora_blocks"]) == (expected_format, 4, 1.5, [0, 1])
        videos[kind] = frames_of(lora_dir / "seed_0.mp4")
        assert not (cli_env.outputs / "infer" / kind / "original").exists()  # --stages lora makes only LoRA videos
    assert np.array_equal(videos["ours"], videos["diffusers"]) and np.array_equal(videos["ours"], videos["comfyui"])


def test_lora_accepts_official_flat_and_post_trained_checkpoints(cli_env, official_base, fixtures_dir, tmp_path):
    flat_file = fixtures_dir / "dit_tiny_lora_native.pt"
    result = infer("--model", "tiny", "--lora", str(flat_file), "--lora-scale", "1.5", "--name", "flat", "-p", "a red square", *FAST)
    assert_ok(result)
    assert "1 is assumed" in result.stderr  # official files do not store their scale
    out = cli_env.outputs / "infer" / "flat"
    [meta] = json.loads((out / "lora" / RED / "seed_0.json").read_text())["adapters"]
    assert (meta["adapter_format"], meta["lora_rank"], meta["lora_scale"], meta["lora_blocks"]) == ("official", 4, 1.5, [0, 1])
    flat = frames_of(out / "lora" / RED / "seed_0.mp4")
    assert np.abs(flat - frames_of(out / "original" / RED / "seed_0.mp4")).mean() > 1

    # post-trained layout: {"model": ..., "ema": {key with '-'}}; the EMA's LoRA is the one used
    checkpoint = torch.load(flat_file, weights_only=True)
    lora_keys = [k for k in checkpoint if "_lora.net." in k]
    model = {k: torch.zeros_like(v) if k in lora_keys else v for k, v in checkpoint.items()}
    nested = tmp_path / "iter_000000100_model.pt"
    torch.save({"model": model, "ema": {k.replace(".", "-"): checkpoint[k] for k in lora_keys}}, nested)
    assert_ok(infer("--model", "tiny", "--lora", str(nested), "--lora-scale", "1.5", "--stages", "lora", "--name", "nested", "-p", "a red square", *FAST))
    assert np.array_equal(flat, frames_of(cli_env.outputs / "infer" / "nested" / "lora" / RED / "seed_0.mp4"))


def test_official_lora_in_the_generator_matches_the_official_network(official_base, fixtures_dir, tmp_path):
    """The generator's LoRA switch against the official outputs with and without LoRA (README §6)."""
    settings = InferSettings(
        out_dir=tmp_path, dit=official_base / TINY_DIT, tokenizer=official_base / TINY_TOKENIZER,
        text_encoder=official_base / TINY_T5, pixel_chunk_duration=FRAMES, precision="fp32",
        adapters=[StackedLora(fixtures_dir / "dit_tiny_lora_native.pt")], lora_scale=1.5,
    )
    generator = Text2WorldGenerator(settings, torch.device("cpu"))
    io = load_file(fixtures_dir / "dit_tiny_lora_io.safetensors")
    inputs = {k: io[f"case1.{k}"] for k in ("x", "timesteps", "crossattn_emb", "fps", "padding_mask")}
    for stage, expected in (("lora", "out_lora"), ("original", "out_base"), ("lora", "out_lora")):
        generator.set_stage(stage)
        with torch.no_grad():
            torch.testing.assert_close(generator.net(**inputs), io[f"case1.{expected}"], atol=2e-5, rtol=1e-5)


# -- 4. adapters that do not fit the base model -----------------------------------------------------

def _adapter_for_more_blocks(checkpoints, path):
    state, _ = trained_lora(checkpoints)
    spec = LoraSpec(rank=4, scale=1.0, blocks=(0, 1, 2), targets=spec_for(2, 4, 1.0).targets)
    state |= {k.replace("transformer_blocks.1.", "transformer_blocks.2."): v.clone() for k, v in state.items() if k.startswith("transformer_blocks.1.")}
    save_adapter(path, state, spec)


def _adapter_for_a_wider_model(checkpoints, path):
    state, spec = trained_lora(checkpoints)
    wide = {k: torch.zeros(v.shape[0], 2 * v.shape[1]) if ".lora_A." in k else torch.zeros(2 * v.shape[0], v.shape[1])
            for k, v in state.items()}
    save_adapter(path, wide, spec)


def _diffusers_lora_with_text_encoder_layers(checkpoints, path):
    state, spec = trained_lora(checkpoints)
    tensors, metadata = lora_formats.to_diffusers(state, spec)
    tensors["text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, path, metadata=metadata)


def _not_a_lora(checkpoints, path):
    path.write_bytes(b"\x00" * 64)


@pytest.mark.parametrize("make, phrases", [
    (_adapter_for_more_blocks, ["has LoRA for block 2", "has 2 blocks"]),
    (_adapter_for_a_wider_model, ["does not fit the base model", "128 -> 128 features", "the layer maps 64 -> 64"]),
    (_diffusers_lora_with_text_encoder_layers, ["cannot place", "text_encoder.encoder.block.0"]),
    (_not_a_lora, ["not a readable safetensors file"]),
])
def test_an_adapter_that_does_not_fit_fails_clearly_before_writing(cli_env, tmp_path, make, phrases):
    adapter = tmp_path / "bad.safetensors"
    make(cli_env.checkpoints, adapter)
    result = infer("--model", "tiny", "--lora", str(adapter), "-p", "a red square", *FAST)
    assert_user_error(result, *phrases)
    assert not (cli_env.outputs / "infer").exists()  # nothing half-written


def test_wider_model_message_names_the_layer(cli_env, tmp_path):
    adapter = tmp_path / "wide.safetensors"
    _adapter_for_a_wider_model(cli_env.checkpoints, adapter)
    assert_user_error(infer("--model", "tiny", "--lora", str(adapter), "-p", "x", "--stages", "lora"), "attn1.to_q LoRA")


# -- user errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, phrases", [
    (["--model", "tiny", "--stages", "lora", "-p", "x"], ["--stages lora needs a LoRA"]),
    (["--model", "tiny", "--stages", "everything", "-p", "x"], ["Unknown --stages"]),
    (["--model", "tiny", "--frames", "20", "-p", "x"], ["20 frames is not 1+8k"]),
    (["--model", "tiny", "--frames", "25", "-p", "x", "--stages", "original"], ["more than the tokenizer's 17-frame chunk"]),
    (["--model", "tiny", "--resolution", "60", "64", "-p", "x"], ["60x64 is not a multiple of 16"]),
    (["--model", "tiny", "--resolution", "512", "512", "-p", "x", "--stages", "original"], ["at most", "256x256"]),
    (["--model", "tiny", "--prompts-file", "missing.txt", "--stages", "original"], ["No prompts file at missing.txt"]),
    (["--model", "tiny", "--prompts-file", "{bad_jsonl}", "--stages", "original"], ["bad.jsonl:2 is not valid JSON"]),
    (["--model", "tiny", "--prompts-file", "{typo_jsonl}", "--stages", "original"], ["typo.jsonl:1 has an unknown field 'negative'"]),
    (["--model", "tiny", "--stages", "original"], ["No prompts given"]),
    (["--model", "tiny", "--num-videos", "0", "-p", "x"], ["--num-videos 0"]),
    (["--model", "huge", "-p", "x"], ["Unknown --model 'huge'"]),
    (["--model", "tiny", "--step", "5", "-p", "x"], ["--step picks one of a run's adapters"]),
    (["--model", "tiny", "--name", "../escape", "-p", "x", "--stages", "original"], ["is not a folder name"]),
    (["--run", "no-such-run", "-p", "x"], ["No run 'no-such-run'"]),
    (["--run", RUN, "--step", "99", "-p", "x"], ["has no adapter for step 99", "step_000010.safetensors"]),
    (["--run", RUN, "--model", "tiny", "-p", "x"], ["--run sets the model"]),
    (["--model", "tiny", "--lora", "nowhere.safetensors", "-p", "x"], ["No LoRA file at nowhere.safetensors"]),
    (["-p", "x", "--stages", "original"], ["No DiT checkpoint"]),  # the 7B default, not downloaded here
])
def test_user_errors_exit_1_with_one_line_and_write_nothing(cli_env, run_dir, tmp_path, args, phrases):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": "broken",\n')
    (tmp_path / "typo.jsonl").write_text('{"prompt": "x", "negative": "y"}\n')
    args = [a.format(bad_jsonl=tmp_path / "bad.jsonl", typo_jsonl=tmp_path / "typo.jsonl") for a in args]
    assert_user_error(infer(*args), *phrases)
    assert not (cli_env.outputs / "infer").exists()


# -- 5. sharding over processes ---------------------------------------------------------------------

@pytest.mark.parametrize("num_prompts, num_videos", [(1, 1), (3, 1), (2, 3), (5, 2)])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_job_exactly_once(num_prompts, num_videos, world_size):
    prompts = [Prompt(f"prompt {i}", f"p{i}", seed=100 if i == 0 else None) for i in range(num_prompts)]
    jobs = plan_jobs(prompts, num_videos, base_seed=5)
    assert len(set(jobs)) == len(jobs) == num_prompts * num_videos
    assert {j.seed for j in jobs if j.prompt.name == "p0"} == set(range(100, 100 + num_videos))  # a prompt's own seed
    shards = [shard(jobs, rank, world_size) for rank in range(world_size)]
    flat = [job for part in shards for job in part]
    assert sorted(flat, key=jobs.index) == jobs and len(flat) == len(set(flat))  # no duplicates, no gaps
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


@pytest.mark.slow
def test_two_torchrun_processes_make_every_video_exactly_once(cli_env, run_dir, capfd):
    prompts = ["a red square", "a blue circle", "a green triangle"]  # 3 jobs over 2 processes: 2 + 1
    result = infer("--run", RUN, *[a for p in prompts for a in ("-p", p)], "--nproc", "2", *FAST)
    assert_ok(result)
    out = cli_env.outputs / "infer" / RUN
    expected = {f"{stage}/{prompt_folder(p)}/seed_0.mp4" for stage in ("original", "lora", "compare") for p in prompts}
    assert {str(v.relative_to(out)) for v in out.rglob("*.mp4")} == expected
    reports = re.findall(r"process (\d)/2: (\d+) jobs, 0 finished before, (\d+) videos written", capfd.readouterr().err)
    assert sorted(reports) == [("0", "2", "4"), ("1", "1", "2")]  # each job made by exactly one process
    makers = {p: json.loads((out / "lora" / prompt_folder(p) / "seed_0.json").read_text())["process"] for p in prompts}
    assert makers == {"a red square": "0/2", "a blue circle": "1/2", "a green triangle": "0/2"}
    assert (out / "index.html").read_text().count('<figure class="comparison"') == 3


# (a 2-process run stopped by SIGTERM, and its rerun: tests/test_stops.py)


# -- 6. resume and --overwrite ----------------------------------------------------------------------

def test_rerun_skips_finished_videos_and_overwrite_remakes_them(cli_env, run_dir):
    args = ["--run", RUN, "-p", "a red square", "-p", "a blue circle", *FAST]
    assert_ok(infer(*args))
    out = cli_env.outputs / "infer" / RUN
    outputs = sorted(p for p in out.rglob("*") if p.suffix in (".mp4", ".json") and p.name != "plan.json")
    assert len(outputs) == 10  # 2 prompts x (2 videos + 2 sidecars + 1 comparison)
    made = {p: p.stat().st_mtime_ns for p in outputs}

    rerun = infer(*args)
    assert_ok(rerun)
    assert "2 jobs, 2 finished before, 0 videos written" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in outputs} == made

    # an interrupted job (its LoRA sidecar never written) is redone; the finished one is kept
    (out / "lora" / prompt_folder("a blue circle") / "seed_0.json").unlink()
    assert_ok(infer(*args))
    redone = {p for p in outputs if p.stat().st_mtime_ns != made[p]}
    assert redone == {p for p in outputs if p.parent.name == prompt_folder("a blue circle")}

    # other settings into the same folder would mix videos: refused, nothing touched
    assert_user_error(infer("--run", RUN, "-p", "a red square", "--steps", "3"), "made with other settings", "steps 2 -> 3")
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert_ok(infer(*args, "--overwrite"))
    assert all(p.stat().st_mtime_ns != before[p] for p in outputs)


# -- 7. index.html in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_index_html_shows_every_comparison_in_headless_chromium(cli_env, run_dir, tmp_path):
    assert_ok(infer("--run", RUN, "-p", "a red square", "-p", "a blue circle", "--num-videos", "2", *FAST))
    index = cli_env.outputs / "infer" / RUN / "index.html"
    browser = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--window-size=1000,1200",
    ]
    dom = subprocess.run([*browser, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120).stdout
    figures = re.findall(r'<figure class="comparison" data-state="(\w+)">', dom)
    assert figures == ["playable"] * 4, dom[:2000]  # every comparison is there and the browser decodes it

    shot = tmp_path / "index.png"
    subprocess.run([*browser, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    background = np.all(pixels == (17, 17, 17), axis=1).mean()
    assert 0.05 < 1 - background and len(np.unique(pixels, axis=0)) > 100  # videos and text drawn, not a blank page


def test_background_writes_keep_their_order_raise_a_failed_write_and_drop_unstarted_ones_on_a_stop():
    """infer writes each finished video on a thread while the next one samples (pipeline.BackgroundWrites)."""
    import threading

    from cosmos_lora.infer.pipeline import BackgroundWrites

    order = []
    with BackgroundWrites() as writes:
        for i in range(5):
            writes.submit(lambda i=i: (time.sleep(0.01 * (5 - i)), order.append(i)), done=lambda i=i: order.append(-i))
    assert order == [0, 0, 1, -1, 2, -2, 3, -3, 4, -4]  # each write, then its note, in the order given

    def disk_full():
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with BackgroundWrites() as writes:
            writes.submit(disk_full)

    started, release, order = threading.Event(), threading.Event(), []
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWrites() as writes:
            writes.submit(lambda: (started.set(), release.wait(10), order.append("in progress")))
            writes.submit(lambda: order.append("not started"))
            assert started.wait(10)
            threading.Timer(0.2, release.set).start()
            raise KeyboardInterrupt  # Ctrl-C while the first video is being written
    assert order == ["in progress"]  # it finished (a file is published whole); the next was dropped


def test_the_comparison_is_encoded_beside_the_last_video_and_published_after_it_or_not_at_all(tmp_path):
    """`job_done` counts a comparison older than a sidecar as unfinished, and one without its videos as
    a lie: the comparison lane waits for the last stage's write before publishing, and drops its file
    when that write failed."""
    import concurrent.futures
    import threading

    from cosmos_lora.infer.pipeline import _write_comparison
    from cosmos_lora.infer.settings import compare_path

    settings = InferSettings(out_dir=tmp_path, dit=tmp_path / "dit.pt", tokenizer=tmp_path, text_encoder=tmp_path,
                             pixel_chunk_duration=9, stages="both")
    job = plan_jobs([Prompt("a red square", "red")], 1, 0)[0]
    frames = np.full((3, 16, 16, 3), 128, np.uint8)
    outputs = {"original": frames, "lora": frames}
    path = compare_path(tmp_path, job)

    stage_write, published = concurrent.futures.Future(), threading.Event()
    writer = threading.Thread(target=lambda: (_write_comparison(settings, job, None, ["original", "lora"], outputs, stage_write),
                                              published.set()))
    writer.start()
    assert not published.wait(1.0) and not path.exists()  # encoded, but held until the stage video is written
    stage_write.set_result(None)
    writer.join(30)
    assert published.is_set() and probe_video(path).frames == 3

    path.unlink()
    failed = concurrent.futures.Future()
    failed.set_exception(OSError("No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        _write_comparison(settings, job, None, ["original", "lora"], outputs, failed)
    assert list(tmp_path.rglob("*.mp4*")) == [] and not [p for p in tmp_path.rglob(".*") if p.is_file()]
