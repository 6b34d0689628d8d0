"""`cosmos-lora posttrain` on the 7B architecture at 121x704x1280 over N GPUs: steps, a save, a resume.

Builds the fake 7B world (`fake_world.py`: random official-format weights, real size), trains
`--max-iter A` steps, then resumes the same run to `B` steps, and reports s/step, samples/s and
peak GPU memory from the run's metrics.csv.

    python benchmarks/posttrain_7b.py --root /tmp/world --nproc 2 --first 4 --total 8 --out result.json [--variant v2w]

`--variant v2w`: the 7B Video2World recipe (`--model 7b-v2w`) on a 7B Video2World DiT.
`--eval-clips N --eval-every K`: also an evaluation pass on N held-out clips (a second synthetic
dataset, `--eval-dataset bench/heldout`) at step 0, every K steps and at the end; reports seconds per
pass and its cost per clip in training steps (issue 18). `--total` equal to `--first`: no resume.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def posttrain(root: Path, *args: str) -> tuple[list[str], float]:
    env = os.environ | {"COSMOS_LORA_CHECKPOINTS": str(root / "checkpoints"), "COSMOS_LORA_DATASETS": str(root / "datasets"),
                        "COSMOS_LORA_OUTPUTS": str(root / "outputs"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cosmos_lora", "posttrain", *args]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return ["cosmos-lora", "posttrain", *args], time.perf_counter() - started


def heldout_dataset(root: Path, clips: int) -> str:
    """N synthetic clips of the training size, embedded with the world's T5 stand-in (seed 1: not the training clips)."""
    from cosmos_lora.data.embed import embed_dataset
    from cosmos_lora.data.synthetic import make_synthetic_dataset

    dataset = root / "datasets" / "bench" / "heldout"
    if not (dataset / "videos").is_dir():
        make_synthetic_dataset(dataset, clips, 121, 704, 1280, fps=24, seed=1)
    embed_dataset(dataset, root / "checkpoints" / "google-t5" / "t5-11b", torch.device("cpu"), torch.float32)
    return "bench/heldout"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--nproc", type=int, default=torch.cuda.device_count())
    parser.add_argument("--first", type=int, default=4)
    parser.add_argument("--total", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--variant", choices=["t2w", "v2w"], default="t2w")
    parser.add_argument("--eval-clips", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(Path(__file__).with_name("fake_world.py")), "--root", str(args.root),
                    "--clips", str(args.clips), "--variant", args.variant], check=True)
    suffix, model = ("_v2w", "7b-v2w") if args.variant == "v2w" else ("", "7b")
    common = ["--model", model, "--dataset", "bench/clips", "--name", f"bench_{args.nproc}gpu{suffix}", "--nproc", str(args.nproc),
              "--grad-accum", str(args.grad_accum), "--save-every", str(args.first)]
    if args.eval_clips:
        common += ["--eval-dataset", heldout_dataset(args.root, args.eval_clips), "--eval-every", str(args.eval_every)]
    else:
        common += ["--eval-fraction", "0"]
    first, first_s = posttrain(args.root, *common, "--max-iter", str(args.first), "--", "trainer.log_every=1")
    run_dir = args.root / "outputs" / "runs" / f"bench_{args.nproc}gpu{suffix}"
    commands, resume_s = [" ".join(first)], None
    if args.total > args.first:
        resume, resume_s = posttrain(args.root, "--config", str(run_dir / "config.yaml"), "--resume", "--nproc",
                                     str(args.nproc), "--", f"trainer.max_iter={args.total}")
        commands.append(" ".join(resume))
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("s_per_step")]
    evals = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("s_per_eval")]
    steady = [r for r in rows if int(r["step"]) not in (1, args.first + 1)]  # drop each launch's warm-up step
    report = {
        "gpu": torch.cuda.get_device_name(), "gpus": args.nproc, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "size": "121x704x1280 (16x88x160 latents, 56,320 tokens)", "lora": "rank 8, FA+CA q/v, 28 blocks",
        "commands": commands,
        "steps_logged": [int(r["step"]) for r in rows],
        "s_per_step_median": statistics.median(float(r["s_per_step"]) for r in steady),
        "samples_per_s_median": statistics.median(float(r["samples_per_s"]) for r in steady),
        "gpu_peak_GB_rank0": max(float(r["gpu_mem_gb"]) for r in rows),
        "loss": [float(r["loss"]) for r in rows],
        "wall_seconds": {"first_launch": round(first_s, 1), "resume_launch": resume_s and round(resume_s, 1)},
        "latest": json.loads((run_dir / "latest.json").read_text()),
        "adapter_bytes": (run_dir / json.loads((run_dir / "latest.json").read_text())["adapter"]).stat().st_size,
    }
    if evals:  # the step-0 pass also reads and encodes the clips once per run: the later ones are the cost
        later = [float(r["s_per_eval"]) for r in evals if int(r["step"]) > 0] or [float(evals[0]["s_per_eval"])]
        report["eval"] = {"held_out_clips": args.eval_clips, "steps": [int(r["step"]) for r in evals],
                          "s_per_eval": [float(r["s_per_eval"]) for r in evals],
                          "eval_loss": [float(r["eval_loss"]) for r in evals if r.get("eval_loss")],
                          "s_per_clip": statistics.median(later) / args.eval_clips,
                          "training_steps_per_clip": statistics.median(later) / args.eval_clips / report["s_per_step_median"]}
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
