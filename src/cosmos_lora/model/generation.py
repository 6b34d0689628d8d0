"""One video from a prompt's embeddings and a seed: the initial noise, the guided sampling loop, decoding.

The initial noise of seed k is `torch.randn` from a CPU generator seeded with k, whatever the device:
`infer --seed k` and training's validation sample of seed k start from the same noise everywhere.
Video2World's condition-frame noise of seed k is the official one: numpy's RandomState(k).

A Video2World video continues its `VideoInput` (an image, or the last 9 frames of a video): the
frames are resized to the generation size, scaled as the official inference does (x/128 - 1), padded
with zero frames to the clip length and encoded; their latent frames condition the sampler
(`sampler.FrameCondition`). The decoded video holds the (regenerated) condition frames first.
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cosmos_lora.model.edm import SIGMA_DATA
from cosmos_lora.model.sampler import FrameCondition, augment_noise, sample_latents
from cosmos_lora.model.tokenizer import LATENT_CHANNELS, VideoTokenizer, latent_frames, video_to_uint8


@dataclass(frozen=True)
class VideoSettings:
    frames: int
    height: int
    width: int
    fps: float  # conditions the model
    steps: int
    guidance: float


INPUT_FRAME_CHOICES = (1, 9)  # official `--num_input_frames`: 1 or 2 condition latent frames
DEFAULT_AUGMENT_SIGMA = 0.001  # official inference_utils.DEFAULT_AUGMENT_SIGMA


@dataclass(frozen=True)
class VideoInput:
    """Video2World's condition: `frames` uint8 `[N, H, W, 3]` (N = 1 or 9), at any size."""

    frames: np.ndarray
    augment_sigma: float = DEFAULT_AUGMENT_SIGMA

    @property
    def latent_frames(self) -> int:
        return latent_frames(len(self.frames))

    def pixels(self, video: VideoSettings) -> torch.Tensor:
        """`[1, 3, video.frames, H, W]` in [-1, 1]: the frames resized (bicubic, antialiased: the official
        torchvision resize, no crop) to the generation size, then zero frames (official padding)."""
        frames = torch.from_numpy(np.ascontiguousarray(self.frames)).permute(3, 0, 1, 2).float() / 128 - 1  # [3, N, h, w]
        resized = F.interpolate(frames.transpose(0, 1), size=(video.height, video.width), mode="bicubic", antialias=True)
        pad = resized.new_zeros(video.frames - len(self.frames), 3, video.height, video.width)
        return torch.cat([resized, pad]).transpose(0, 1)[None]


def frame_condition(tokenizer: VideoTokenizer, given: VideoInput, seed: int, video: VideoSettings,
                    device: torch.device, dtype: torch.dtype) -> FrameCondition:
    """The sampler's condition: the encoded input (x sigma_data) and the official augment noise of `seed`."""
    latent = tokenizer.encode(given.pixels(video).to(device, dtype)).float() * SIGMA_DATA
    noise = augment_noise(seed, latent.shape).to(device)
    return FrameCondition(latent, given.latent_frames, given.augment_sigma, noise)


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
    given: VideoInput | None = None,  # Video2World: the frames the video continues
) -> tuple[np.ndarray | None, torch.Tensor, dict]:
    """uint8 `[T, H, W, 3]` frames (None without `decode`), the sampled latents, and the seconds spent
    sampling and decoding."""
    noise = initial_noise(seed, video).to(device)
    condition = None
    if given is not None:
        with decoding():  # where the tokenizer works (with offload, the DiT waits on the host meanwhile)
            condition = frame_condition(tokenizer, given, seed, video, device, dtype)
    cond = {"crossattn_emb": text.to(device, dtype)[None], "fps": float(video.fps)}
    uncond = {**cond, "crossattn_emb": negative.to(device, dtype)[None]}
    mixed = torch.autocast(device.type, dtype=dtype) if autocast and dtype != torch.float32 else nullcontext()
    started = time.perf_counter()
    with mixed:
        latents = sample_latents(net, noise, cond, uncond, video.steps, video.guidance, on_step=on_step, cfg=cfg,
                                 condition=condition)
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
