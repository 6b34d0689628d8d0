"""How long listing and help commands take as whole processes: interpreter start, imports, output.

Each command runs `repeats` times after one warm-up run (which writes the .pyc files); the median
wall and CPU (user + system) times are reported, with `python -c pass` and `python -c "import torch"`
beside them for scale. `runs` lists 50 finished run folders made here and `runs show` reads one;
`download --dry-run` talks to a hub address where nothing listens, so it measures everything but
the network round trips (it ends in its one-line "Could not reach" error).

    PYTHONPATH=src python benchmarks/cli_startup.py --out benchmarks/results/cli_startup.json
"""

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [
    ["--help"], ["runs"], ["runs", "--json"], ["runs", "show", "bench"], ["runs", "--help"], ["runs", "show", "--help"],
    ["download", "--dry-run"], ["download", "--help"], ["prepare", "--help"], ["embed", "--help"],
    ["posttrain", "--help"], ["infer", "--help"], ["export", "--help"], ["merge", "--help"], ["demo", "--help"],
]
UNREACHABLE_HUB = "http://127.0.0.1:9"
RUNS = 50  # run folders `runs` lists: a user's outputs after a few weeks of experiments


def write_run(runs_dir: Path, name: str) -> None:
    """A finished 10-step run folder: config.yaml, metrics.csv, status.json, as the trainer writes them."""
    from cosmos_lora.config import load_preset, resolved, save_config
    from cosmos_lora.train.metrics import COLUMNS
    from cosmos_lora.train.status import write_status

    config = load_preset("tiny_lora")
    config.job.name, config.job.dataset, config.job.run_dir = name, "demo/shapes", str(runs_dir / name)
    save_config(resolved(config), runs_dir / name / "config.yaml")
    with open(runs_dir / name / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({"step": s, "loss": 1 / s, "loss_smoothed": 1 / s, "lr": 1e-4, "s_per_step": 0.5} for s in (5, 10))
    write_status(runs_dir / name, "finished", 10)


def seconds(argv: list[str], env: dict, repeats: int) -> dict[str, list[float]]:
    """Wall and CPU (user + system) seconds of each run; CPU time barely moves when others share the cores."""
    subprocess.run(argv, env=env, capture_output=True)  # warm-up: .pyc files, page cache
    times = {"wall": [], "cpu": []}
    for _ in range(repeats):
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True)
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
        times["wall"].append(round(wall, 3))
        times["cpu"].append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3))
    return times


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    load_at_start = os.getloadavg()  # other processes on the same cores stretch the wall times
    with tempfile.TemporaryDirectory() as root:
        env = os.environ | {"COSMOS_LORA_CHECKPOINTS": f"{root}/checkpoints", "COSMOS_LORA_DATASETS": f"{root}/datasets",
                            "COSMOS_LORA_OUTPUTS": f"{root}/outputs", "HF_ENDPOINT": UNREACHABLE_HUB}
        for k in range(RUNS):
            write_run(Path(root, "outputs", "runs"), "bench" if k == 0 else f"bench{k:02d}")
        rows = [("python -c pass", seconds([sys.executable, "-c", "pass"], env, args.repeats)),
                ("python -c 'import torch'", seconds([sys.executable, "-c", "import torch"], env, args.repeats))]
        rows += [(f"cosmos-lora {' '.join(c)}", seconds([sys.executable, "-m", "cosmos_lora", *c], env, args.repeats))
                 for c in COMMANDS]
    report = {
        "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(), "repeats": args.repeats,
        "seconds": {name: {f"{kind}_median": statistics.median(values) for kind, values in times.items()} | times
                    for name, times in rows},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"| command | wall s | CPU s |  (medians of {args.repeats} runs)\n|---|---|---|")
    for name, times in rows:
        print(f"| `{name}` | {statistics.median(times['wall']):.2f} | {statistics.median(times['cpu']):.2f} |")


if __name__ == "__main__":
    main()
