"""Time and host memory of `cosmos-lora merge` on a 7B-size checkpoint (issue 7).

Writes a random official 7B `model.pt` (bf16, 14.5 GB, as `fake_world.write_random_dit`) and a random
rank-16 adapter on all 28 blocks (FA+CA q/v), then runs each merge in a fresh process and records wall
time, peak RSS (VmHWM, reset just before the merge through /proc/self/clear_refs) and anonymous memory:

    stream   cosmos_lora.model.merge.merge_checkpoint (what `cosmos-lora merge` runs)
    naive    torch.load + W += scale * B @ A + torch.save, for comparison (--naive; needs ~30 GB RAM)

Then checks the streamed result: every untouched tensor byte-identical to the base, a sample of merged
ones equal to W + scale * B @ A. Needs ~45 GB of disk under --workdir (base + outputs).

    PYTHONPATH=src python benchmarks/merge_7b.py --workdir /tmp/bench --out merge_7b.json [--naive]
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from cosmos_lora.model.checkpoint import diffusers_to_official
from cosmos_lora.model.lora import save_adapter, spec_for

sys.path.insert(0, str(Path(__file__).parent))
from fake_world import write_random_dit  # noqa: E402

MEASURE = """
import re, sys, time, torch
from pathlib import Path
from cosmos_lora.model.lora import read_adapter
from cosmos_lora.model.merge import WeightedLora, lora_deltas, merge_checkpoint

def status(key):
    return int(re.search(key + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

mode, base, adapter, out = sys.argv[1:]
state, spec, _ = read_adapter(Path(adapter))
lora = WeightedLora(state, spec)
Path("/proc/self/clear_refs").write_text("5")
before, started = status("VmRSS"), time.perf_counter()
if mode == "stream":
    merge_checkpoint(Path(base), [lora], Path(out))
else:
    sd = torch.load(base, weights_only=True)
    for key, deltas in lora_deltas([lora]).items():
        w = sd[key].float()
        for up, down, factor in deltas:
            w.addmm_(up, down, alpha=factor)
        sd[key] = w.to(sd[key].dtype)
    torch.save(sd, out)
print(f"{time.perf_counter() - started} {status('VmHWM')} {before} {status('RssAnon')}")
"""


def measure(mode: str, base: Path, adapter: Path, out: Path) -> dict:
    subprocess.run(["sync"], check=False)
    done = subprocess.run([sys.executable, "-c", MEASURE, mode, str(base), str(adapter), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    seconds, peak, before, anon = (float(v) for v in done.stdout.split()[-4:])
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2),
            "rss_before_gb": round(before / 1e9, 2), "peak_growth_gb": round((peak - before) / 1e9, 2),
            "rss_anon_after_gb": round(anon / 1e9, 2), "out_gb": round(out.stat().st_size / 1e9, 2)}


def check(base: Path, adapter: Path, out: Path, samples: int = 6) -> dict:
    from cosmos_lora.model.lora import read_adapter
    from cosmos_lora.model.merge import WeightedLora, lora_deltas

    state, spec, _ = read_adapter(adapter)
    deltas = lora_deltas([WeightedLora(state, spec)])
    a = torch.load(base, mmap=True, weights_only=True)
    b = torch.load(out, mmap=True, weights_only=True)
    untouched = all(torch.equal(a[k], b[k]) for k in a if k not in deltas)
    worst = 0.0
    for key in list(deltas)[:samples]:
        (up, down, factor), = deltas[key]
        expected = (a[key].float() + factor * up @ down).to(a[key].dtype)
        worst = max(worst, (b[key].float() - expected.float()).abs().max().item())
    return {"keys_equal": list(a) == list(b), "untouched_identical": untouched, "merged_max_abs_diff": worst,
            "tensors_changed": len(deltas)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("merge_7b.json"))
    parser.add_argument("--size", default="7b", help="7b, or tiny for a quick check of the script")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--naive", action="store_true", help="also measure torch.load + torch.save")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base, adapter = args.workdir / f"base_{args.size}.pt", args.workdir / f"adapter_{args.size}_r{args.rank}.safetensors"
    started = time.perf_counter()
    if not base.is_file():
        write_random_dit(base, args.size)
    shapes = {k: v.shape for k, v in torch.load(base, map_location="meta", weights_only=True).items()}
    layers = 1 + max(int(k.split(".")[2].removeprefix("block")) for k in shapes if k.startswith("net.blocks.block"))
    spec = spec_for(layers, rank=args.rank, scale=2.0)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for module in spec.module_names():
        out_features, in_features = shapes[diffusers_to_official(f"{module}.weight")]
        state[f"{module}.lora_A.weight"] = torch.randn(args.rank, in_features, generator=generator) / args.rank
        state[f"{module}.lora_B.weight"] = torch.randn(out_features, args.rank, generator=generator) * 0.01
    save_adapter(adapter, state, spec)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s: base {base.stat().st_size / 1e9:.2f} GB")

    report = {
        "what": "cosmos-lora merge (streaming) vs torch.load + torch.save", "date": datetime.date.today().isoformat(),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "mem_total_gb": round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1e6, 1)},
        "size": args.size, "rank": args.rank, "base_gb": round(base.stat().st_size / 1e9, 2),
        "command": " ".join(sys.argv),
    }
    report["stream"] = measure("stream", base, adapter, args.workdir / "merged_stream.pt")
    report["stream_check"] = check(base, adapter, args.workdir / "merged_stream.pt")
    if args.naive:
        report["naive"] = measure("naive", base, adapter, args.workdir / "merged_naive.pt")
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
