"""What one evaluation pass costs, per held-out clip, as a fraction of one training step: through the real CLI.

    PYTHONPATH=src python benchmarks/evaluation_cost.py --root /tmp/evalcost --out evalcost.json [--model tiny]

Makes (once) a 24-clip synthetic dataset beside the tiny checkpoints, trains 30 steps on one process with
6 clips held out (--eval-fraction 0.25), an evaluation every 10 steps without EMA, and reads metrics.csv:
the median s/step of the training rows and the median s/eval of the evaluations after step 0 (the first
one also reads and encodes the clips, once per run).
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cosmos_lora.paths import Roots

HELD_OUT, SIGMAS = 6, 8


def make_world(roots: Roots) -> None:
    from cosmos_lora.data.embed import embed_dataset
    from cosmos_lora.data.synthetic import make_synthetic_dataset
    from cosmos_lora.model.tiny import TINY_T5, write_tiny_checkpoints

    write_tiny_checkpoints(roots.checkpoints)
    dataset = roots.dataset("bench/shapes24")
    if not (dataset / "videos").is_dir():
        make_synthetic_dataset(dataset, num_clips=24, num_frames=17, height=64, width=64, fps=24, seed=0)
        embed_dataset(dataset, roots.checkpoints / TINY_T5, torch.device("cpu"), torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    roots = Roots(args.root / "checkpoints", args.root / "datasets", args.root / "outputs")
    make_world(roots)
    env = os.environ | {"COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
                        "COSMOS_LORA_OUTPUTS": str(roots.outputs)}
    repeats = []
    for repeat in range(args.repeats):
        name = f"evalcost_{int(time.time())}_{repeat}"
        subprocess.run([sys.executable, "-m", "cosmos_lora", "posttrain", "--model", "tiny", "-d", "bench/shapes24",
                        "--nproc", "1", "--name", name, "--max-iter", "30", "--eval-every", "10", "--eval-fraction", "0.25",
                        "--", "trainer.log_every=1", "trainer.evaluation.ema=false"], env=env, check=True)
        with open(roots.runs / name / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        step_s = statistics.median(float(r["s_per_step"]) for r in rows if r["s_per_step"])
        eval_s = statistics.median(float(r["s_per_eval"]) for r in rows if r["s_per_eval"] and int(r["step"]) > 0)
        repeats.append({"s_per_step": step_s, "s_per_eval": eval_s,
                        "steps_per_clip": eval_s / HELD_OUT / step_s})
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "model": "tiny (fp32, CPU, 17x64x64)", "held_out_clips": HELD_OUT,
              "sigmas": SIGMAS, "repeats": repeats,
              "steps_per_clip_median": statistics.median(r["steps_per_clip"] for r in repeats)}
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
