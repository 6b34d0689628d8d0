"""Loading the official 7B checkpoint: time, peak host RAM and GPU memory (issue 3), plus one CFG step.

Writes a random-weight Cosmos-Predict1-7B-Text2World `model.pt` in the official flat format
(bf16, 574 keys), then, in a fresh process, loads it with `load_official_dit` (meta-device build,
mmap, assign) onto the GPU and times one classifier-free-guidance forward (batch 2) at
121x704x1280 with CUDA events (1 warm-up, median of 3).

    python benchmarks/load_official_7b.py --workdir /tmp/bench --out results.json
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from cosmos_lora.model.checkpoint import official_state_dict
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead


def write_random_checkpoint(path: Path) -> dict:
    started = time.perf_counter()
    meta = official_state_dict(build_dit("7b", device="meta"), LogVarHead())
    generator = torch.Generator(device="cuda").manual_seed(0)
    state = {}
    for key, tensor in meta.items():
        if tensor.device.type == "meta":
            state[key] = (torch.randn(tensor.shape, generator=generator, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()
        else:
            state[key] = tensor.cpu()
    torch.save(state, path)
    return {"write_seconds": round(time.perf_counter() - started, 1), "bytes": path.stat().st_size, "keys": len(state)}


def proc_status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key + "_GB"] = round(int(value.split()[0]) / 1e6, 2)
    return fields


def measure_load(path: str) -> dict:
    from cosmos_lora.model.checkpoint import load_official_dit

    before = proc_status()
    started = time.perf_counter()
    net, logvar = load_official_dit(Path(path), device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        "load_seconds": round(seconds, 1), "host_before": before, "host_after": proc_status(),
        "gpu_allocated_GB": round(torch.cuda.memory_allocated() / 1e9, 2),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    x = torch.randn(2, 16, 16, 88, 160, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
    t = torch.full((2,), 0.5, device="cuda", dtype=torch.bfloat16)
    times = []
    with torch.no_grad():
        for i in range(4):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = net(x=x, timesteps=t, crossattn_emb=text, fps=24.0)
            end.record()
            torch.cuda.synchronize()
            if i:
                times.append(start.elapsed_time(end) / 1000)
    result["cfg_step_seconds_median"] = round(sorted(times)[1], 3)
    result["cfg_step_seconds"] = [round(s, 3) for s in times]
    result["output_finite"] = bool(torch.isfinite(out).all())
    result["gpu_peak_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "model.pt"
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    report["write"] = write_random_checkpoint(path)
    measured = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--out", "-", "--measure", str(path)],
                              capture_output=True, text=True, check=True)
    report["load"] = json.loads(measured.stdout.strip().splitlines()[-1])
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
