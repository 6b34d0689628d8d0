"""Seconds the `infer` command spends importing before it launches the workers (issue 17), on this host.

    python benchmarks/cli_imports.py --out cli_imports.json [--repeats 3]

Each measurement is a fresh interpreter: `before` imports what the CLI imported until 2026-11-28 (the
whole inference pipeline: diffusers, peft, transformers, torch._dynamo), `now` the modules its checks
and plan import today (tests/test_cli_fast.py checks that they load none of those four), `worker`
what each worker imports, `torch` is `import torch` alone for scale. The figure is the median wall
time of the import statement.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

SETS = {
    "torch": ["torch"],
    "before": ["cosmos_lora.cli.infer", "cosmos_lora.infer.pipeline", "cosmos_lora.infer.run", "cosmos_lora.model.parallel",
               "cosmos_lora.model.adapter_files", "cosmos_lora.model.lora_formats", "cosmos_lora.infer.adapters",
               "cosmos_lora.config", "cosmos_lora.distributed"],
    "now": ["cosmos_lora.cli.infer", "cosmos_lora.infer.settings", "cosmos_lora.infer.plan", "cosmos_lora.model.parallel",
            "cosmos_lora.model.adapter_files", "cosmos_lora.model.lora_formats", "cosmos_lora.infer.adapters",
            "cosmos_lora.config", "cosmos_lora.distributed", "cosmos_lora.infer.video_input"],
    "worker": ["cosmos_lora.infer.run"],  # what each torchrun worker imports (all of the stack, by design)
}
HEAVY = ("diffusers", "peft", "transformers", "torch._dynamo")


def measure(modules: list[str]) -> dict:
    code = (f"import sys, time, json; t = time.perf_counter(); import {', '.join(modules)}; "
            f"print(json.dumps([time.perf_counter() - t, [m for m in {HEAVY!r} if m in sys.modules]]))")
    seconds, heavy = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return {"seconds": seconds, "heavy": heavy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    measure(SETS["before"])  # bytecode written and files in the page cache, as on a machine in use
    report = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]}
    for name, modules in SETS.items():
        runs = [measure(modules) for _ in range(args.repeats)]
        report[name] = {"median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                        "runs": [round(r["seconds"], 2) for r in runs], "heavy_modules_loaded": runs[0]["heavy"]}
    print(json.dumps(report, indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
