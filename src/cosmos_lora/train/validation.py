"""Validation samples: short generations with the LoRA being trained, every `trainer.validate_every` steps.

    <run>/samples/step_000200/<prompt-slug>_seed<k>.mp4       the raw LoRA weights of that step
    <run>/samples/step_000200/<prompt-slug>_seed<k>_ema.mp4   their EMA (with trainer.validation.ema)
    <run>/samples/step_000200/<prompt-slug>_seed<k>[_ema].json prompt, seed, weights and the video's
                                                              flicker and motion (data/video_metrics.py)
    <run>/samples/step_000200/prompts.txt                     "<prompt-slug><TAB><prompt>" per line

Rank 0 samples while the other ranks wait at a barrier. The prompts (and the official negative
prompt) go through T5 once, when training starts, and T5 is freed straight away: the 11B encoder
never stays beside the DiT. Sampling is `cosmos-lora infer`'s at the run's size and fps, with
fewer steps: the initial noise of seed k is the one `infer --seed k` uses.

A Video2World run's samples continue an image, as `infer --image` does: prompt i continues the first
frame of held-out clip i (the clips the eval loss uses, never trained on; sorted by name, one per
prompt). Without a held-out split (a small dataset, --eval-fraction 0, --eval-dataset) they are the
dataset's own clips, also trained on.

Validation changes nothing that training depends on: the network runs under no_grad in eval mode
(activation-checkpointed blocks then simply run forward), the noise comes from a generator of its
own, the global CPU/CUDA RNG states are restored afterwards, and EMA weights swapped in for sampling
are swapped out bit for bit. A run with validation ends with exactly the LoRA of the same run
without it (tests/test_validation.py).
"""

import json
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cosmos_lora.config import LazyDict
from cosmos_lora.data import video_metrics
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.data.split import excluded_from_training
from cosmos_lora.data.video import read_video, write_video
from cosmos_lora.distributed import Distributed
from cosmos_lora.files import atomic_write
from cosmos_lora.model.generation import VideoInput, VideoSettings, generate_video
from cosmos_lora.model.prompts import Prompt, named_prompts
from cosmos_lora.model.text_encoder import embed_texts
from cosmos_lora.model.tokenizer import VideoTokenizer
from cosmos_lora.run_folder import RunFolder, step_name

# How long the other ranks wait for rank 0 (loading T5, sampling). They wait on a gloo group of
# their own, so NCCL's 10-minute watchdog never sees the wait; if rank 0 dies, the wait ends at once.
WAIT_TIMEOUT = timedelta(hours=3)


class Validator:
    def __init__(self, config: LazyDict, dist_info: Distributed, dtype: torch.dtype):
        settings = config.trainer.validation
        self.every, self.dist, self.device, self.dtype = config.trainer.validate_every, dist_info, dist_info.device, dtype
        self.prompts: list[Prompt] = named_prompts([{"prompt": text} for text in settings.prompts])  # unique names
        self.seeds = [int(s) for s in settings.seeds]
        self.with_ema = bool(settings.ema and config.trainer.ema.enabled)  # no EMA is kept otherwise
        (height, width), self.fps = config.model.resolution, config.model.fps
        self.video = VideoSettings(config.model.num_frames, height, width, self.fps, settings.steps, settings.guidance)
        self.out_dir = RunFolder(config.job.run_dir).samples_dir
        self.group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT) if dist_info.enabled else None
        self.embeddings: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, np.ndarray] = {}  # Video2World: the frame each prompt's samples continue
        if dist_info.is_main and config.model.get("video2world") is not None:
            self.inputs = first_frames(Path(config.dataloader_train.dataset.root), [p.name for p in self.prompts],
                                       sorted(excluded_from_training(config.trainer.get("evaluation"))))
        if dist_info.is_main:
            text_encoder = Path(config.model.checkpoints_dir) / config.model.text_encoder
            texts = [p.text for p in self.prompts] + [p.negative for p in self.prompts]
            with rng_untouched(self.device):
                self.embeddings = embed_texts(text_encoder, texts, self.device, dtype)  # [512, D] float32, a few MB
        self._wait()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @property
    def videos_per_run(self) -> int:
        return len(self.prompts) * len(self.seeds) * (2 if self.with_ema else 1)

    def run(self, step: int, net: torch.nn.Module, tokenizer: VideoTokenizer, params: dict, ema) -> Path:
        """Writes this step's samples (rank 0) while the other ranks wait; returns the folder."""
        folder = self.out_dir / step_name(step)
        if self.dist.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            modes = {module: module.training for module in net.modules()}
            net.eval()
            try:
                with rng_untouched(self.device), torch.no_grad():
                    self._write_videos(folder, net, tokenizer, params, ema)
            finally:
                for module, mode in modes.items():
                    module.training = mode
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # the sampler's activations are not training's: give them back
            _write_text(folder / "prompts.txt", "".join(f"{p.name}\t{p.text}\n" for p in self.prompts))
        self._wait()
        return folder

    def _write_videos(self, folder: Path, net: torch.nn.Module, tokenizer: VideoTokenizer, params: dict, ema) -> None:
        variants = [("", nullcontext())]
        if self.with_ema:
            variants.append(("_ema", swapped_in(params, ema.state_dict())))
        for suffix, weights in variants:
            with weights:
                for prompt in self.prompts:
                    for seed in self.seeds:
                        frames = self.sample(net, tokenizer, prompt, seed)
                        video = folder / f"{prompt.name}_seed{seed}{suffix}.mp4"
                        write_video(video, frames, self.fps)
                        sidecar = {"prompt": prompt.text, "seed": seed, "ema": bool(suffix), "metrics": video_metrics.measure(frames)}
                        _write_text(video.with_suffix(".json"), json.dumps(sidecar, indent=1))

    @torch.no_grad()
    def sample(self, net: torch.nn.Module, tokenizer: VideoTokenizer, prompt: Prompt, seed: int) -> np.ndarray:
        """uint8 `[T, H, W, 3]` frames for one prompt and seed, as `cosmos-lora infer` makes them (under
        autocast, as in training: bf16 base, fp32 LoRA weights)."""
        text, negative = self.embeddings[prompt.text], self.embeddings[prompt.negative]
        given = VideoInput(self.inputs[prompt.name]) if prompt.name in self.inputs else None
        return generate_video(net, tokenizer, text, negative, seed, self.video, self.device, self.dtype, autocast=True,
                              given=given)[0]

    def _wait(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)


def first_frames(dataset: Path, names: list[str], prefer: list[str] = ()) -> dict[str, np.ndarray]:
    """name -> uint8 `[1, H, W, 3]`: the first frame of the i-th clip for the i-th name (cycling), from the
    `prefer`red (held-out) clips when there are any, else from all of the dataset's."""
    clips = list(prefer) or DatasetLayout(dataset).clips()
    return {name: read_video(DatasetLayout(dataset).video(clips[i % len(clips)]), max_frames=1)[0]
            for i, name in enumerate(names)} if clips else {}


@contextmanager
def rng_untouched(device: torch.device):
    """The global CPU (and this GPU's) RNG states as they were before, whatever ran inside."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@contextmanager
def swapped_in(params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]):
    """`weights` in the parameters for the duration; the parameters' own values restored exactly."""
    own = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(own[name])


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)
