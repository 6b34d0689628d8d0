"""`cosmos-lora posttrain` on the 7B architecture at 121x704x1280 over N GPUs: steps, a save, a resume.

Builds the fake 7B world (`fake_world.py`: random official-format weights, real size), trains
`--max-iter A` steps, then resumes the same run to `B` steps, and reports s/step, samples/s and
peak GPU memory from the run's metrics.csv.

    python benchmarks/posttrain_7b.py --root /tmp/world --nproc 2 --first 4 --total 8 --out result.json [--variant v2w]

`--variant v2w`: the 7B Video2World recipe (`--model 7b-v2w`) on a 7B Video2World DiT.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--nproc", type=int, default=torch.cuda.device_count())
    parser.add_argument("--first", type=int, default=4)
    parser.add_argument("--total", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--variant", choices=["t2w", "v2w"], default="t2w")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(Path(__file__).with_name("fake_world.py")), "--root", str(args.root),
                    "--clips", str(args.clips), "--variant", args.variant], check=True)
    suffix, model = ("_v2w", "7b-v2w") if args.variant == "v2w" else ("", "7b")
    common = ["--model", model, "--dataset", "bench/clips", "--name", f"bench_{args.nproc}gpu{suffix}", "--nproc", str(args.nproc),
              "--grad-accum", str(args.grad_accum), "--save-every", str(args.first)]
    first, first_s = posttrain(args.root, *common, "--max-iter", str(args.first), "--", "trainer.log_every=1")
    run_dir = args.root / "outputs" / "runs" / f"bench_{args.nproc}gpu{suffix}"
    resume, resume_s = posttrain(args.root, "--config", str(run_dir / "config.yaml"), "--resume", "--nproc", str(args.nproc),
                                 "--", f"trainer.max_iter={args.total}")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    steady = [r for r in rows if int(r["step"]) not in (1, args.first + 1)]  # drop each launch's warm-up step
    report = {
        "gpu": torch.cuda.get_device_name(), "gpus": args.nproc, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "size": "121x704x1280 (16x88x160 latents, 56,320 tokens)", "lora": "rank 8, FA+CA q/v, 28 blocks",
        "commands": [" ".join(first), " ".join(resume)],
        "steps_logged": [int(r["step"]) for r in rows],
        "s_per_step_median": statistics.median(float(r["s_per_step"]) for r in steady),
        "samples_per_s_median": statistics.median(float(r["samples_per_s"]) for r in steady),
        "gpu_peak_GB_rank0": max(float(r["gpu_mem_gb"]) for r in rows),
        "loss": [float(r["loss"]) for r in rows],
        "wall_seconds": {"first_launch": round(first_s, 1), "resume_launch": round(resume_s, 1)},
        "latest": json.loads((run_dir / "latest.json").read_text()),
        "adapter_bytes": (run_dir / json.loads((run_dir / "latest.json").read_text())["adapter"]).stat().st_size,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
