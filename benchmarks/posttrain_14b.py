"""Issue 19: the 14B on one 80 GB GPU at 121x704x1280, measured in one device call.

Phases, each in its own process (a clean GPU each; an out-of-memory phase is recorded, not fatal):

  world    the fake 14B world (`fake_world.py --size 14b`: random official-format 14B weights, drawn on
           the GPU and written once, 28.5 GB) and a bf16 matmul's TFLOP/s on this GPU
  keepN    `cosmos-lora posttrain --model 14b` through the real CLI (torchrun, DDP worker, `Trainer`) with
           `model.keep_attention_blocks=N`: s/step and peak GPU memory of the steps after the first
           (which compiles), from the run's metrics.csv; nvidia-smi's peak beside it
  cfg      the CFG step (batch-2 forward + Euler step) of the DiT as `infer` builds it (compiled blocks,
           cuDNN attention), timed per step after the first

The JSON is rewritten after every phase, so a cut-off call still brings back what was measured. A phase
is skipped when the time left (`--budget-s`) is less than it is expected to take.

    python benchmarks/posttrain_14b.py --root /tmp/world14 --out $OUT/posttrain_14b.json
    python benchmarks/posttrain_14b.py --root /tmp/world14 --phases keep0,keep12,keep18,keep24 --steps 2 --out ...
    python benchmarks/posttrain_14b.py --root /tmp/world14 --video --out $OUT/infer_14b.json    # one whole video (separate call)
    python benchmarks/posttrain_14b.py --root /tmp/w --size tiny ...                             # the script itself, on CPU
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "A red sports car drives along a coastal road at sunset, the camera tracking alongside."
TEXT_TOKENS = 512
# expected seconds of a phase before it has run once (H100, 14B): what the budget check assumes
EXPECTED_S = {"world": 90, "keep": 150, "cfg": 110}


# -- FLOPs ---------------------------------------------------------------------------------------------

def forward_pflop(width: int, blocks: int, tokens: int, text_dim: int = 1024) -> tuple[float, float]:
    """(linear, attention) PFLOP of one forward: per block the video-token linears (self-attention q/k/v/out,
    cross-attention q/out, MLP 4x) and the two attentions. Gives the 7B's 0.74 + 1.45 of shared/REFERENCE.md."""
    linear = 2 * tokens * 14 * width**2 + 2 * TEXT_TOKENS * 2 * text_dim * width
    attention = 4 * tokens**2 * width + 4 * tokens * TEXT_TOKENS * width
    return blocks * linear / 1e15, blocks * attention / 1e15


def step_pflop(width: int, blocks: int, tokens: int) -> dict[str, float]:
    """A LoRA training step (forward + input-gradient backward, attention backward 2.5x, no recompute) and a CFG step."""
    linear, attention = forward_pflop(width, blocks, tokens)
    return {"train": round(2 * linear + 3.5 * attention, 2), "cfg": round(2 * (linear + attention), 2)}


# -- GPU memory as nvidia-smi sees it -------------------------------------------------------------------

class SmiPeak:
    """Polls nvidia-smi's memory.used (MiB) of GPU 0 while a phase runs: allocator cache and context included."""

    def __init__(self):
        self.peak_mib, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib or 0, int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return  # no nvidia-smi (CPU check): no figure

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- phases (each runs in its own process) --------------------------------------------------------------

def world_phase(args) -> dict:
    import torch

    started = time.perf_counter()
    command = [sys.executable, str(HERE / "fake_world.py"), "--root", str(args.root), "--clips", str(args.clips),
               "--size", args.size if args.size != "tiny" else "7b"]
    if args.size == "tiny":
        _tiny_world(args.root)
    else:
        subprocess.run(command, check=True)
    entry = {"world_seconds": round(time.perf_counter() - started, 1)}
    if torch.cuda.is_available():
        from gpu_timing import timed

        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        seconds, _ = timed(lambda: [a @ b for _ in range(20)])
        entry |= {"gpu": torch.cuda.get_device_name(), "gpu_total_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
                  "matmul_bf16_tflops": round(20 * 2 * 8192**3 / seconds / 1e12, 1)}
    return entry


def _tiny_world(root: Path) -> None:
    """The same layout at test scale, for checking this script on a CPU."""
    import torch

    from cosmos_lora.data.embed import embed_dataset
    from cosmos_lora.data.synthetic import make_synthetic_dataset
    from cosmos_lora.model.tiny import TINY_T5, write_tiny_checkpoints

    write_tiny_checkpoints(root / "checkpoints")
    dataset = root / "datasets" / "bench" / "clips"
    if not (dataset / "videos").is_dir():
        make_synthetic_dataset(dataset, num_clips=2, num_frames=17, height=64, width=64, fps=24, seed=0)
    embed_dataset(dataset, root / "checkpoints" / TINY_T5, torch.device("cpu"), torch.float32)


def cli_env(root: Path) -> dict:
    return os.environ | {"COSMOS_LORA_CHECKPOINTS": str(root / "checkpoints"), "COSMOS_LORA_DATASETS": str(root / "datasets"),
                         "COSMOS_LORA_OUTPUTS": str(root / "outputs"), "PYTHONUNBUFFERED": "1"}


def train_phase(args, keep: int) -> dict:
    """The real `posttrain` with `keep` blocks keeping self-attention; figures from its metrics.csv."""
    name = f"bench_{args.size}_keep{keep}"
    model = "14b" if args.size == "14b" else "tiny"
    command = ["cosmos-lora", "posttrain", "--model", model, "--dataset", "bench/clips", "--name", name, "--nproc", "1",
               "--max-iter", str(1 + args.steps), "--save-every", "1000000", "--",
               f"model.keep_attention_blocks={keep}", "trainer.log_every=1"]
    if args.size == "tiny":
        command += ["model.activation_checkpointing=1.0"]
    started = time.perf_counter()
    with SmiPeak() as smi:
        code = subprocess.run([sys.executable, "-m", "cosmos_lora", *command[1:]], env=cli_env(args.root)).returncode
    entry = {"keep_attention_blocks": keep, "command": " ".join(command), "exit_code": code,
             "wall_seconds": round(time.perf_counter() - started, 1), "nvidia_smi_peak_gb": smi.peak_mib and round(smi.peak_mib * 2**20 / 1e9, 1)}
    run_dir = args.root / "outputs" / "runs" / name
    metrics = run_dir / "metrics.csv"
    rows = list(csv.DictReader(open(metrics))) if metrics.is_file() else []
    if rows:
        steady = rows[1:] or rows
        entry |= {
            "s_per_step_first": float(rows[0]["s_per_step"]),
            "s_per_step": [float(r["s_per_step"]) for r in steady],
            "s_per_step_median": statistics.median(float(r["s_per_step"]) for r in steady),
            "gpu_peak_gb": max(float(r["gpu_mem_gb"] or 0) for r in rows),  # torch max_memory_allocated, as posttrain logs it
            "loss": [float(r["loss"]) for r in rows],
        }
    status = run_dir / "status.json"
    if code and status.is_file():
        entry["status"] = json.loads(status.read_text())
    return entry


def cfg_phase(args) -> dict:
    """CFG steps of the DiT built as `infer` builds it; the first step (compilation) is left out."""
    import torch

    from cosmos_lora.model.checkpoint import load_official_dit
    from cosmos_lora.model.dit import configure_blocks
    from cosmos_lora.model.sampler import sample_latents

    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    started = time.perf_counter()
    net, _ = load_official_dit(_dit(args), device=device, dtype=dtype)
    net.eval()
    configure_blocks(net, compile_blocks=cuda, prefer_cudnn=True)
    load_s = time.perf_counter() - started
    frames, height, width = (16, 88, 160) if args.size != "tiny" else (3, 8, 8)
    text_dim = 1024 if args.size != "tiny" else 32
    noise = torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    text = torch.randn(1, TEXT_TOKENS, text_dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    cond, uncond = {"crossattn_emb": text, "fps": 24.0}, {"crossattn_emb": torch.zeros_like(text), "fps": 24.0}
    marks = []

    def on_step(*_):
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        begun = time.perf_counter()
        latents = sample_latents(net, noise, cond, uncond, steps=args.cfg_steps, guidance=7.0, on_step=on_step)
    if not torch.isfinite(latents).all():
        raise SystemExit("non-finite latents from the CFG steps")
    times = [b - a for a, b in zip([begun] + marks, marks)]
    return {
        "load_seconds": round(load_s, 1), "first_step_seconds_incl_compile": round(times[0], 2),
        "s_per_cfg_step": [round(t, 3) for t in times[1:]],
        "s_per_cfg_step_median": round(statistics.median(times[1:]), 3),
        "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if cuda else None,
    }


def video_phase(args) -> dict:
    """One whole video through `cosmos-lora infer --model 14b` (35 steps, guidance 7) on `--video-nproc`
    GPUs (one video: infer gives it every process)."""
    name = f"bench_{args.size}_{args.video_nproc}gpu"
    command = ["cosmos-lora", "infer", "--model", "14b" if args.size == "14b" else "tiny", "--prompt", PROMPT,
               "--stages", "original", "--steps", str(args.video_steps), "--name", name, "--overwrite",
               "--nproc", str(args.video_nproc)]
    started = time.perf_counter()
    with SmiPeak() as smi:
        subprocess.run([sys.executable, "-m", "cosmos_lora", *command[1:]], env=cli_env(args.root), check=True)
    wall = time.perf_counter() - started
    meta = json.loads(next((args.root / "outputs" / "infer" / name / "original").glob("*/seed_0.json")).read_text())
    return {
        "command": " ".join(command), "size": f"{meta['frames']}x{meta['height']}x{meta['width']}", "steps": meta["steps"],
        "video_seconds": meta["seconds"], "sample_seconds": meta["sample_seconds"],
        "seconds_per_cfg_step": meta["seconds_per_step"], "decode_seconds": meta["decode_seconds"],
        "gpu_peak_gb": meta.get("gpu_peak_gb"), "nvidia_smi_peak_gb": smi.peak_mib and round(smi.peak_mib * 2**20 / 1e9, 1),
        "cli_wall_seconds_incl_loading": round(wall, 1), "processes": args.video_nproc,
        "parallel": meta.get("parallel"),
    }


def _dit(args) -> Path:
    from cosmos_lora.model.tiny import TINY_DIT

    if args.size == "tiny":
        return args.root / "checkpoints" / TINY_DIT
    return args.root / "checkpoints" / "Cosmos-Predict1-14B-Text2World" / "model.pt"


# -- the orchestrator -------------------------------------------------------------------------------------

def run_phase(args, phase: str) -> dict:
    """`phase` in a child process; its JSON comes back through a file."""
    result = args.out.with_name(f".{args.out.stem}.{phase}.json")
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--root", str(args.root), "--size", args.size, "--out", str(args.out),
               "--steps", str(args.steps), "--cfg-steps", str(args.cfg_steps), "--clips", str(args.clips),
               "--video-steps", str(args.video_steps), "--video-nproc", str(args.video_nproc), "--child", phase, "--child-out", str(result)]
    started = time.perf_counter()
    code = subprocess.run(command).returncode
    entry = json.loads(result.read_text()) if result.is_file() else {"error": f"phase exited with code {code}"}
    result.unlink(missing_ok=True)
    entry["phase_seconds"] = round(time.perf_counter() - started, 1)
    return entry


def child(args) -> None:
    phase = args.child
    if phase == "world":
        entry = world_phase(args)
    elif phase.startswith("keep"):
        entry = train_phase(args, int(phase.removeprefix("keep")))
    elif phase == "cfg":
        entry = cfg_phase(args)
    elif phase == "video":
        entry = video_phase(args)
    else:
        raise SystemExit(f"unknown phase {phase}")
    args.child_out.write_text(json.dumps(entry))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=["14b", "tiny"], default="14b", help="tiny: check this script on a CPU")
    parser.add_argument("--phases", default="keep18,keep24,cfg,keep0",
                        help="keepN (posttrain with model.keep_attention_blocks=N) and cfg, in this order after the world")
    parser.add_argument("--steps", type=int, default=1, help="training steps timed after the first (compiling) one")
    parser.add_argument("--cfg-steps", type=int, default=3, help="CFG steps, the first (compiling) one not counted")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=560, help="skip phases that would end after this many seconds")
    parser.add_argument("--video", action="store_true", help="instead: one whole video through `infer` (its own device call)")
    parser.add_argument("--video-steps", type=int, default=35)
    parser.add_argument("--video-nproc", type=int, default=1, help="GPUs for the --video run (infer --nproc)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    started = time.perf_counter()
    from cosmos_lora.model.sizes import DIT_SIZES

    size = DIT_SIZES[args.size if args.size == "14b" else "tiny"]
    tokens = 16 * 88 * 160 // 4 if args.size == "14b" else 3 * 8 * 8 // 4
    report = {
        "date": time.strftime("%Y-%m-%d"), "size": "121x704x1280 (16x88x160 latents, 56,320 tokens)" if args.size == "14b" else "tiny",
        "model": f"{args.size}: width {size.width}, {size.num_attention_heads} heads x {size.attention_head_dim}, "
                 f"{size.num_layers} blocks, rope_scale {size.rope_scale}",
        "lora": f"rank 8, FA+CA q/v, all {size.num_layers} blocks", "batch": 1,
        "pflop_per_step": step_pflop(size.width, size.num_layers, tokens), "phases": {}, "skipped": [],
    }
    phases = ["world", "video"] if args.video else ["world", *args.phases.split(",")]
    spent = {}
    for phase in phases:
        kind = "keep" if phase.startswith("keep") else phase
        expected = spent.get(kind, EXPECTED_S.get(kind, 600))
        if phase not in ("world", "video") and time.perf_counter() - started + expected > args.budget_s:
            report["skipped"].append(phase)
            continue
        print(f"== {phase} ({time.perf_counter() - started:.0f} s in)", flush=True)
        entry = run_phase(args, phase)
        spent[kind] = entry["phase_seconds"]
        report["phases"][phase] = entry
        _summarise(report)
        args.out.write_text(json.dumps(report, indent=1))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def _summarise(report: dict) -> None:
    """Achieved TFLOP/s and MFU per measured phase, against the matmul of the same run."""
    matmul = report["phases"].get("world", {}).get("matmul_bf16_tflops")
    pflop = report["pflop_per_step"]
    for name, entry in report["phases"].items():
        seconds = entry.get("s_per_step_median") or entry.get("s_per_cfg_step_median")
        if not seconds:
            continue
        work = pflop["train"] if name.startswith("keep") else pflop["cfg"]
        entry["tflops"] = round(work * 1e3 / seconds, 1)
        if matmul:
            entry["mfu"] = round(work * 1e3 / seconds / matmul, 3)


if __name__ == "__main__":
    main()
