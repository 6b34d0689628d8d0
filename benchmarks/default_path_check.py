"""The default GPU path end to end on the 7B architecture: posttrain (compiled blocks, kept
self-attention, validation samples) and infer (compiled blocks, --offload), through the real CLI.

    python benchmarks/default_path_check.py --root /tmp/world --out check.json
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def cli(root: Path, *args: str) -> float:
    env = os.environ | {"COSMOS_LORA_CHECKPOINTS": str(root / "checkpoints"), "COSMOS_LORA_DATASETS": str(root / "datasets"),
                        "COSMOS_LORA_OUTPUTS": str(root / "outputs"), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cosmos_lora", *args], env=env, check=True)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(Path(__file__).with_name("fake_world.py")), "--root", str(args.root), "--clips", "4"],
                   check=True)
    report = {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "date": time.strftime("%Y-%m-%d")}
    report["posttrain_seconds"] = cli(args.root, "posttrain", "--dataset", "bench/clips", "--name", "check", "--nproc", "1",
                                      "--max-iter", "3", "--save-every", "3", "--validate-every", "3",
                                      "--", "trainer.log_every=1", "trainer.validation.steps=2",
                                      "trainer.validation.prompts=[a car on a road]")
    run = args.root / "outputs" / "runs" / "check"
    report["metrics"] = list(csv.DictReader(open(run / "metrics.csv")))
    report["samples"] = sorted(str(p.relative_to(run)) for p in (run / "samples").rglob("*.mp4"))
    report["infer_seconds"] = cli(args.root, "infer", "--run", "check", "-p", "a car on a road", "--steps", "4",
                                  "--stages", "both", "--offload", "--name", "check")
    report["infer_sidecars"] = [json.loads(p.read_text()) for p in sorted((args.root / "outputs" / "infer" / "check").rglob("seed_0.json"))]
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
