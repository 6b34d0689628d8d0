"""`cosmos-lora infer` on the 7B architecture: one 121x704x1280 video, 35 steps, CFG 7, one GPU.

Builds the fake 7B world (`fake_world.py`), runs the real CLI end to end (T5 stand-in, DiT
sampling, tokenizer stand-in decode, mp4 writing) and reports the video's sidecar timings: total
seconds, sampling seconds per CFG step (one batch-2 forward), decode seconds, peak GPU memory.

    python benchmarks/infer_7b.py --root /tmp/world --out result.json [--fp8] [--variant v2w]

`--variant v2w`: the 7B Video2World (72-wide input layer) continuing an image (`infer --image`).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPT = "A red sports car drives along a coastal road at sunset, the camera tracking alongside."


def _input_image(path: Path) -> Path:
    """A 1280x720 gradient: what the Video2World video continues (resized to 704x1280 as official)."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 1280, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (720, 1)), np.full((720, 1280), 96, np.uint8), np.tile(ramp[::-1], (720, 1))], -1)).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--fp8", action="store_true", help="infer --fp8: FP8 matmuls for the DiT's linears")
    parser.add_argument("--variant", choices=["t2w", "v2w"], default="t2w")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    name = ("bench_fp8" if args.fp8 else "bench") + ("_v2w" if args.variant == "v2w" else "")
    subprocess.run([sys.executable, str(Path(__file__).with_name("fake_world.py")), "--root", str(args.root), "--clips", "1",
                    "--variant", args.variant], check=True)
    env = os.environ | {"COSMOS_LORA_CHECKPOINTS": str(args.root / "checkpoints"), "COSMOS_LORA_OUTPUTS": str(args.root / "outputs")}
    command = ["cosmos-lora", "infer", "--prompt", PROMPT, "--stages", "original", "--steps", str(args.steps), "--name", name]
    command += ["--fp8"] if args.fp8 else []
    if args.variant == "v2w":
        command += ["--model", "7b-v2w", "--image", str(_input_image(args.root / "input.png"))]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cosmos_lora", *command[1:]], env=env, check=True)
    wall = time.perf_counter() - started
    sidecar = next((args.root / "outputs" / "infer" / name / "original").glob("*/seed_0.json"))
    meta = json.loads(sidecar.read_text())
    report = {
        "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "command": " ".join(command), "size": f"{meta['frames']}x{meta['height']}x{meta['width']}",
        "steps": meta["steps"], "guidance": meta["guidance"],
        "video_seconds": meta["seconds"], "sample_seconds": meta["sample_seconds"],
        "seconds_per_cfg_step": meta["seconds_per_step"], "decode_seconds": meta["decode_seconds"],
        "gpu_peak_gb": meta.get("gpu_peak_gb"), "cli_wall_seconds_incl_loading": round(wall, 1), "variant": args.variant,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
