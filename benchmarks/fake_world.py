"""A stand-in for the users' server at full size, for GPU benchmarks without the real weights.

    <root>/checkpoints/Cosmos-Predict1-7B-Text2World/model.pt    random 7B DiT, official flat format, bf16 (14.5 GB)
    <root>/checkpoints/Cosmos-Predict1-14B-Text2World/model.pt   the same for the 14B with --size 14b (28.5 GB)
    <root>/checkpoints/Cosmos-Predict1-7B-Video2World/model.pt   the 7B Video2World (72-wide input layer) with --variant v2w
    <root>/checkpoints/Cosmos-Tokenize1-CV8x8x8-720p/             TorchScript stand-in, official calling convention
    <root>/checkpoints/google-t5/t5-11b/                          2-layer T5 encoder with T5-11B's 1024-d output
    <root>/datasets/bench/clips/                                  synthetic 121-frame 704x1280 clips, embedded

The DiT is the real architecture at the real size, so step times and memory are the real ones;
the tokenizer and T5 stand-ins are cheap, so their cost is not measured here. The weights are drawn
on the GPU and written once; a later call with the same root and size returns at once.

    python benchmarks/fake_world.py --root /tmp/world --clips 16 [--size 14b | --variant v2w]
"""

import argparse
import time
from pathlib import Path

import torch

from cosmos_lora.data.embed import embed_dataset
from cosmos_lora.data.synthetic import make_synthetic_dataset
from cosmos_lora.model.checkpoint import official_state_dict
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead
from cosmos_lora.model.tiny import write_tiny_t5, write_tiny_tokenizer

DIT_FOLDERS = {
    "7b": "Cosmos-Predict1-7B-Text2World", "14b": "Cosmos-Predict1-14B-Text2World", "7b-v2w": "Cosmos-Predict1-7B-Video2World",
}


def dit_path(root: Path, size: str) -> Path:
    return root / "checkpoints" / DIT_FOLDERS[size] / "model.pt"


def write_random_dit(path: Path, size: str = "7b") -> None:
    """Random bf16 weights in the official flat format: drawn on the GPU, copied to the host, saved once."""
    meta = official_state_dict(build_dit(size, device="meta"), LogVarHead())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    state = {
        key: (torch.randn(t.shape, generator=generator, device=device, dtype=torch.bfloat16) * 0.02).cpu()
        if t.device.type == "meta" else t
        for key, t in meta.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a killed run leaves no truncated model.pt behind
    torch.save(state, partial)
    partial.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--size", choices=["7b", "14b"], default="7b")
    parser.add_argument("--variant", choices=["t2w", "v2w"], default="t2w", help="v2w: Video2World (7B only)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--resolution", type=int, nargs=2, default=(704, 1280))
    args = parser.parse_args()
    if args.variant == "v2w":
        if args.size != "7b":
            parser.error("--variant v2w exists for the 7B only (the official 14B Video2World is not supported here)")
        args.size = "7b-v2w"
    checkpoints, started = args.root / "checkpoints", time.perf_counter()
    ready = args.root / f"READY.{args.size}"
    if ready.is_file():  # built whole by an earlier call; parallel benchmark phases must not rewrite it
        return
    if not dit_path(args.root, args.size).is_file():
        write_random_dit(dit_path(args.root, args.size), args.size)
    write_tiny_tokenizer(checkpoints / "Cosmos-Tokenize1-CV8x8x8-720p")
    write_tiny_t5(checkpoints / "google-t5" / "t5-11b", d_model=1024)
    dataset = args.root / "datasets" / "bench" / "clips"
    if not (dataset / "videos").is_dir():
        make_synthetic_dataset(dataset, args.clips, args.frames, *args.resolution, fps=24, seed=0)
    embed_dataset(dataset, checkpoints / "google-t5" / "t5-11b", torch.device("cpu"), torch.float32)
    ready.touch()
    print(f"fake {args.size} world ready in {time.perf_counter() - started:.0f} s: {args.root}")


if __name__ == "__main__":
    main()
