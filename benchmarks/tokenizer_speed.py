"""Video tokenizer cost at 121x704x1280 on one GPU: what `embed --latents` pays once per clip and
what every training step saves by reading the cache.

The official Cosmos-Tokenize1-CV8x8x8-720p weights cannot be downloaded here, so the same
architecture stands in: diffusers' `AutoencoderKLCosmos` at its defaults (CV8x8x8: 8x temporal
and 8x spatial compression, 16 latent channels) with random weights, bf16. Encode and decode are
timed with CUDA events after a warm-up (median of 3).

    python benchmarks/tokenizer_speed.py --out tokenizer_speed.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLCosmos
from gpu_timing import timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    vae = AutoencoderKLCosmos().to("cuda", torch.bfloat16).eval()
    video = torch.rand(1, 3, 121, 704, 1280, device="cuda", dtype=torch.bfloat16) * 2 - 1
    with torch.no_grad():
        latent = vae.encode(video).latent_dist.mode()
        encode, _ = timed(lambda: vae.encode(video))
        torch.cuda.reset_peak_memory_stats()
        vae.encode(video)
        encode_peak = torch.cuda.max_memory_allocated() / 1e9
        decode, _ = timed(lambda: vae.decode(latent))
    report = {
        "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "model": "diffusers AutoencoderKLCosmos defaults (CV8x8x8), random weights, bf16",
        "latent_shape": list(latent.shape), "encode_seconds": round(encode, 3), "clips_per_second": round(1 / encode, 3),
        "encode_peak_gb": round(encode_peak, 1), "decode_seconds": round(decode, 3),
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
