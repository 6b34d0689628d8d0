"""One video from a prompt's embeddings and a seed: the initial noise, the guided sampling loop, decoding.

The initial noise of seed k is `torch.randn` from a CPU generator seeded with k, whatever the device:
`infer --seed k` and training's validation sample of seed k start from the same noise everywhere.
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from cosmos_lora.model.edm import SIGMA_DATA
from cosmos_lora.model.sampler import sample_latents
from cosmos_lora.model.tokenizer import LATENT_CHANNELS, VideoTokenizer, latent_frames, video_to_uint8


@dataclass(frozen=True)
class VideoSettings:
    frames: int
    height: int
    width: int
    fps: float  # conditions the model
    steps: int
    guidance: float


def initial_noise(seed: int, video: VideoSettings) -> torch.Tensor:
    shape = (1, LATENT_CHANNELS, latent_frames(video.frames), video.height // 8, video.width // 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate_video(
    net: torch.nn.Module,
    tokenizer: VideoTokenizer,
    text: torch.Tensor,  # [512, D] prompt embedding
    negative: torch.Tensor,  # [512, D] negative prompt embedding (the unconditional branch)
    seed: int,
    video: VideoSettings,
    device: torch.device,
    dtype: torch.dtype,
    autocast: bool = False,  # fp32 LoRA on a lower-precision base (training's): sample under autocast, as it trains
    on_step=None,  # called as on_step(i, x0, x) after every step
    decoding=nullcontext,  # a context manager factory around decoding (e.g. moving the DiT off the GPU)
    cfg=None,  # model.parallel.CfgSplit: this process computes one CFG branch of a video group
    decode: bool = True,  # False: another process of the video group decodes and writes the frames
) -> tuple[np.ndarray | None, torch.Tensor, dict]:
    """uint8 `[T, H, W, 3]` frames (None without `decode`), the sampled latents, and the seconds spent
    sampling and decoding."""
    noise = initial_noise(seed, video).to(device)
    cond = {"crossattn_emb": text.to(device, dtype)[None], "fps": float(video.fps)}
    uncond = {**cond, "crossattn_emb": negative.to(device, dtype)[None]}
    mixed = torch.autocast(device.type, dtype=dtype) if autocast and dtype != torch.float32 else nullcontext()
    started = time.perf_counter()
    with mixed:
        latents = sample_latents(net, noise, cond, uncond, video.steps, video.guidance, on_step=on_step, cfg=cfg)
    sampled = time.perf_counter()
    if not decode:
        return None, latents, {}
    with decoding():
        decoded = tokenizer.decode((latents / SIGMA_DATA).to(dtype))
        frames = video_to_uint8(decoded[0]).numpy()  # the copy to the host waits for the GPU
    timings = {
        "sample_seconds": round(sampled - started, 3),
        "seconds_per_step": round((sampled - started) / video.steps, 4),
        "decode_seconds": round(time.perf_counter() - sampled, 3),
    }
    return frames, latents, timings
