"""One 7B (or 14B: --size 14b) video on 1, 2 and 4 GPUs of one machine: Ulysses (context) and CFG parallelism (issue 17).

    python benchmarks/one_video_many_gpus.py --root /tmp/world --out result.json [--steps 5] [--variants 1,2cfg,4cfg,4sp]
    python benchmarks/one_video_many_gpus.py --tiny --root /tmp/tiny --out result.json   # CPU check: tiny world, gloo, 2 processes

Builds the fake 7B world (`fake_world.py`: random 7B weights, tokenizer stand-in), then ONE torchrun
of N processes (one per GPU) loads the DiT once per process and makes the same video (121x704x1280,
same noise, same random text embeddings, guidance 7) under each variant in turn:

  1      every GPU makes the video alone (the 1-GPU rate, measured with all GPUs busy like the others)
  Gcfg   G GPUs per video: the two CFG branches on G/2 GPUs each, their tokens split in G/2 (G = 2: no split)
  Gsp    G GPUs per video: the tokens split in G, both branches as one batch (as on one GPU)
  1flash every GPU alone with the flash attention kernel instead of cuDNN's: the bf16 control (the
         same mathematics rounded another way), to bound how far rounding alone moves the latents

With N = 4, `2cfg`/`2sp` run two videos at once (ranks 0-1 and 2-3); the figures are those of ranks 0-1.
Per variant the JSON has: seconds per CFG step (mean over the steps after the first, which includes
compiling the blocks), the first step, the measured sampling + decode seconds, the seconds a 35-step
video takes at that rate (first step + 34 steps + decode), the scaling efficiency t1 / (G tG) of the
per-step times, the peak memory of every GPU, and the largest difference of the video's latents from
the 1-GPU latents after rounding both to bf16 (absolute, and relative to the largest 1-GPU latent).
Fewer steps (`--steps 5`) save device time; the per-step figures are the same. The worker keeps
its results after every variant, so a run cut short (`--timeout`, whole script) still reports the
variants it finished. Within a 10-minute device call on 4 GPUs: build the world in a call of its own
(`python benchmarks/fake_world.py --root /tmp/world --clips 1`, a few minutes), then run this
script with `--steps 5` (loading, one compile per variant, 5 steps per variant).
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPT_TOKENS = 512
VIDEO_STEPS = 35


def parse_variant(name: str) -> tuple[int, bool, bool]:
    """(GPUs per video, CFG parallel, cuDNN attention): '1' -> (1, False, True); '4cfg' -> (4, True, True);
    '4sp' -> (4, False, True); '1flash' -> (1, False, False), the bf16 control (torch's own attention kernel)."""
    for suffix, cfg, cudnn in (("cfg", True, True), ("sp", False, True), ("flash", False, False), ("", False, True)):
        if name.endswith(suffix) and name[: len(name) - len(suffix)].isdigit():
            return int(name[: len(name) - len(suffix)]), cfg, cudnn
    raise SystemExit(f"unknown variant {name!r}: use 1, 1flash, Gcfg or Gsp (e.g. 4cfg)")


# -- the worker: one process of the torchrun -------------------------------------------------------


def worker(config: dict) -> None:
    import torch.distributed as dist
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cosmos_lora.distributed import close_distributed, init_distributed
    from cosmos_lora.model.checkpoint import load_official_dit
    from cosmos_lora.model.dit import configure_blocks, reset_blocks
    from cosmos_lora.model.edm import SIGMA_DATA
    from cosmos_lora.model.fp8 import use_fp8_linears
    from cosmos_lora.model.parallel import VideoLayout, cfg_split, check_layout, make_groups, parallelize
    from cosmos_lora.model.sampler import sample_latents
    from cosmos_lora.model.tokenizer import VideoTokenizer, latent_frames, video_to_uint8

    place = init_distributed()
    device, cuda = place.device, place.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    out = Path(config["out_dir"])
    net, _ = load_official_dit(Path(config["dit"]), device=device, dtype=dtype)
    net.eval()
    if config["fp8"]:
        use_fp8_linears(net)
    tokenizer = VideoTokenizer(Path(config["tokenizer"]), device, dtype, config["frames"])
    shape = (1, 16, latent_frames(config["frames"]), config["height"] // 8, config["width"] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    text_generator = torch.Generator().manual_seed(1)
    text_dim = net.config.text_embed_dim
    cond = {"crossattn_emb": (0.2 * torch.randn(1, PROMPT_TOKENS, text_dim, generator=text_generator)).to(device, dtype), "fps": 24.0}
    uncond = {**cond, "crossattn_emb": (0.2 * torch.randn(1, PROMPT_TOKENS, text_dim, generator=text_generator)).to(device, dtype)}
    tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = {}
    for variant in config["variants"]:
        per_video, cfg, cudnn = parse_variant(variant)
        reset_blocks(net)
        configure_blocks(net, compile_blocks=config["compile"] and cuda, prefer_cudnn=cudnn)
        layout = VideoLayout(place.world_size, per_video, cfg)
        check_layout(layout, net.config.num_attention_heads, tokens)
        groups = make_groups(layout, place.rank) if place.world_size > 1 else None
        split = parallelize(net, groups)
        if cuda:
            torch._dynamo.reset()  # each variant compiles its own blocks (other shapes, other attention)
            torch.cuda.reset_peak_memory_stats(device)
        if place.world_size > 1:
            dist.barrier()
        step_ends = []

        def on_step(i, x0, x):
            sync()
            step_ends.append(time.perf_counter())

        started = time.perf_counter()
        # the control forces the flash kernel: torch 2.11 already picks cuDNN's by itself on Hopper (a
        # first control with "no preference" ran the same kernel and came out bit-identical)
        kernel = contextlib.nullcontext() if cudnn or not cuda else sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        with kernel:
            latents = sample_latents(net, noise, cond, uncond, config["steps"], 7.0, on_step=on_step, cfg=cfg_split(groups))
        sampled = time.perf_counter()
        if groups is None or groups.leads_video:  # decoding, as infer does it: once per video
            frames = video_to_uint8(tokenizer.decode((latents / SIGMA_DATA).to(dtype))[0])
            assert frames.shape[0] == config["frames"]
        sync()
        decoded = time.perf_counter()
        if split is not None:
            split.remove()
        peak = round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None
        peaks = [None] * place.world_size
        if place.world_size > 1:
            dist.all_gather_object(peaks, peak)
        else:
            peaks = [peak]
        steps = [b - a for a, b in zip([started] + step_ends, step_ends)]
        later = steps[1:] or steps
        if place.is_main:
            torch.save(latents.cpu(), out / f"latents_{variant}.pt")
            results[variant] = {
                "gpus_per_video": per_video, "cfg_parallel": layout.cfg_parallel, "token_shards": layout.sequence_size,
                "videos_at_once": layout.videos_at_once, "steps": config["steps"],
                "first_step_seconds": round(steps[0], 3), "seconds_per_cfg_step": round(sum(later) / len(later), 4),
                "sample_seconds": round(sampled - started, 3), "decode_seconds": round(decoded - sampled, 3),
                "peak_gb_per_gpu": peaks,
            }
            (out / "worker.json").write_text(json.dumps(results, indent=1))
            print(f"{variant}: {results[variant]['seconds_per_cfg_step']} s per CFG step", file=sys.stderr, flush=True)
    close_distributed()


# -- the parent: world, launch, report ----------------------------------------------------------------


def build_world(args) -> dict:
    if args.tiny:
        from cosmos_lora.model.tiny import TINY_DIT, TINY_TOKENIZER, write_tiny_checkpoints

        checkpoints = args.root / "checkpoints"
        write_tiny_checkpoints(checkpoints)
        return {"dit": str(checkpoints / TINY_DIT), "tokenizer": str(checkpoints / TINY_TOKENIZER), "frames": 17, "height": 64, "width": 64}
    fake_world = Path(__file__).with_name("fake_world.py")
    subprocess.run([sys.executable, str(fake_world), "--root", str(args.root), "--clips", "1", "--size", args.size], check=True)
    sys.path.insert(0, str(fake_world.parent))
    from fake_world import dit_path

    checkpoints = args.root / "checkpoints"
    return {
        "dit": str(dit_path(args.root, args.size)),
        "tokenizer": str(checkpoints / "Cosmos-Tokenize1-CV8x8x8-720p"), "frames": 121, "height": 704, "width": 1280,
    }


def run_with_deadline(command: list[str], seconds: float) -> int | str:
    """The torchrun, and all its workers with it when the time is up (they must not keep the GPUs)."""
    child = subprocess.Popen(command, env={"OMP_NUM_THREADS": "1"} | os.environ, start_new_session=True)
    try:
        return child.wait(timeout=max(seconds, 30))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        return "timeout"


def report(config: dict, results: dict, out_dir: Path) -> dict:
    """Efficiency and latent differences against the 1-GPU variant (when it ran)."""
    base = results.get("1")
    reference = torch.load(out_dir / "latents_1.pt", weights_only=True) if base else None
    for variant, row in results.items():
        per_step, g = row["seconds_per_cfg_step"], row["gpus_per_video"]
        row["video_seconds_measured"] = round(row["sample_seconds"] + row["decode_seconds"], 2)
        row[f"video_seconds_{VIDEO_STEPS}_steps"] = round(
            row["first_step_seconds"] + (VIDEO_STEPS - 1) * per_step + row["decode_seconds"], 1
        )
        if base is None:
            continue
        row["speedup_per_step"] = round(base["seconds_per_cfg_step"] / per_step, 3)
        row["scaling_efficiency"] = round(base["seconds_per_cfg_step"] / (g * per_step), 3)
        latents = torch.load(out_dir / f"latents_{variant}.pt", weights_only=True)
        difference = (latents.bfloat16().float() - reference.bfloat16().float()).abs().max().item()
        row["max_abs_latent_difference_bf16"] = difference
        row["max_relative_latent_difference_bf16"] = difference / reference.abs().max().item()
    return results


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # one process of the torchrun below
        worker(json.loads(Path(sys.argv[2]).read_text()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the fake world's folder (reused when built)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--steps", type=int, default=VIDEO_STEPS)
    parser.add_argument("--gpus", type=int, default=None, help="processes (default: visible GPUs; --tiny: 2)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated, e.g. 1,2cfg,2sp,4cfg,4sp (default: 1, Gcfg for G = 2, 4, 8 up to --gpus, Gsp for the largest)")
    parser.add_argument("--no-compile", action="store_true", help="eager blocks (compiled by default, as infer runs)")
    parser.add_argument("--fp8", action="store_true", help="FP8 matmuls for the DiT's linears (infer --fp8)")
    parser.add_argument("--size", choices=["7b", "14b"], default="7b", help="the fake world's DiT (fake_world.py --size)")
    parser.add_argument("--tiny", action="store_true", help="CPU check: tiny world, gloo")
    parser.add_argument("--timeout", type=int, default=570, help="seconds for the whole script; the variants finished by then are reported")
    args = parser.parse_args()
    nproc = args.gpus or (2 if args.tiny else torch.cuda.device_count())
    gpus = [g for g in (2, 4, 8) if g <= nproc]
    variants = args.variants.split(",") if args.variants else ["1"] + [f"{g}cfg" for g in gpus] + [f"{g}sp" for g in gpus[-1:]]
    for variant in variants:
        if parse_variant(variant)[0] > nproc:
            raise SystemExit(f"variant {variant} needs more than the {nproc} processes")
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = build_world(args) | {
        "steps": args.steps, "variants": variants, "compile": not args.no_compile, "fp8": args.fp8,
        "out_dir": str(args.root / "one_video_many_gpus"),
    }
    out_dir = Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*"):
        stale.unlink()
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(Path(__file__).resolve()), "--worker", str(out_dir / "config.json")]
    world_seconds = time.perf_counter() - started
    code = run_with_deadline(command, args.timeout - world_seconds)
    results = json.loads((out_dir / "worker.json").read_text()) if (out_dir / "worker.json").is_file() else {}
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "processes": nproc,
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "command": " ".join(sys.argv),
        "model": "tiny" if args.tiny else args.size, "size": f"{config['frames']}x{config['height']}x{config['width']}", "steps": args.steps, "guidance": 7.0,
        "compile": config["compile"], "fp8": args.fp8, "world_seconds": round(world_seconds, 1),
        "torchrun_exit": code, "wall_seconds": round(time.perf_counter() - started, 1),
        "variants": report(config, results, out_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if code != 0 or len(results) < len(variants):
        sys.exit(1)


if __name__ == "__main__":
    main()
