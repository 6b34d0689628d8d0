"""Base vs LoRA generation: models loaded once, every (prompt, seed) job run through every stage.

Order of work in one process:
  1. check inputs and plan the jobs (skipping finished ones);
  2. T5 embeds every prompt once, then leaves the device;
  3. the DiT (with the LoRA layers, switched per stage) samples each job's latents;
  4. the tokenizer decodes them; videos, `prompt.txt`, `meta.json` and the comparison are written.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cosmos_lora.data.embeddings import pad_embedding
from cosmos_lora.data.video import side_by_side, write_video
from cosmos_lora.errors import UserError
from cosmos_lora.infer.adapters import Adapter, from_file
from cosmos_lora.infer.html import write_index
from cosmos_lora.infer.prompts import STAGES, Job
from cosmos_lora.model.checkpoint import load_official_dit
from cosmos_lora.model.edm import SIGMA_DATA
from cosmos_lora.model.lora import LoraSpec, add_lora, load_lora_state
from cosmos_lora.model.sampler import sample_latents
from cosmos_lora.model.text_encoder import T5TextEncoder
from cosmos_lora.model.tokenizer import VideoTokenizer, latent_frames, video_to_uint8
from cosmos_lora.paths import atomic_path

STAGE_LABELS = {"original": "original", "lora": "LoRA"}


@dataclass
class InferSettings:
    out_dir: Path
    dit: Path
    tokenizer: Path
    text_encoder: Path
    pixel_chunk_duration: int = 121
    stages: str = "both"
    steps: int = 35
    guidance: float = 7.0
    fps: float = 24.0
    height: int = 704
    width: int = 1280
    frames: int = 121
    precision: str = "bf16"
    overwrite: bool = False
    adapter_file: Path | None = None  # ours, or an official checkpoint with LoRA tensors
    official_lora_scale: float | None = None  # official files do not store their scale
    lora_scale: float = 1.0  # multiplies the adapter's trained scale
    extra_meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict) -> "InferSettings":
        paths = {"out_dir", "dit", "tokenizer", "text_encoder", "adapter_file"}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in raw.items()})


def check_settings(settings: InferSettings) -> None:
    if settings.height % 16 or settings.width % 16:
        raise UserError(f"Resolution {settings.height}x{settings.width} is not a multiple of 16.", "use e.g. 704 1280.")
    if (settings.frames - 1) % 8:
        raise UserError(f"{settings.frames} frames is not 1+8k.", "use e.g. 121, 57 or 17 frames.")
    if "lora" in STAGES[settings.stages] and settings.adapter_file is None:
        raise UserError(f"--stages {settings.stages} needs a LoRA.", "pass --run NAME or --lora FILE, or use --stages original.")


def video_path(out_dir: Path, stage: str, job: Job) -> Path:
    return out_dir / stage / job.prompt.name / f"seed_{job.seed}.mp4"


def compare_path(out_dir: Path, job: Job) -> Path:
    return out_dir / "compare" / job.prompt.name / f"seed_{job.seed}.mp4"


def job_done(settings: InferSettings, job: Job) -> bool:
    paths = [video_path(settings.out_dir, s, job) for s in STAGES[settings.stages]]
    if settings.stages == "both":
        paths.append(compare_path(settings.out_dir, job))
    return all(p.is_file() for p in paths)


class Text2WorldGenerator:
    """The DiT and tokenizer, loaded once; the LoRA (if any) is switched on and off per stage."""

    def __init__(self, settings: InferSettings, device: torch.device):
        self.settings, self.device = settings, device
        self.dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
        self.net, _ = load_official_dit(settings.dit, device=device, dtype=self.dtype)
        self.net.eval()
        self.adapter = None
        if settings.adapter_file is not None:
            self.adapter = from_file(settings.adapter_file, settings.official_lora_scale)
            self._attach(self.adapter)
        self.tokenizer = VideoTokenizer(settings.tokenizer, device, self.dtype, settings.pixel_chunk_duration)

    def _attach(self, adapter: Adapter) -> None:
        spec = adapter.spec
        if spec.blocks and max(spec.blocks) >= len(self.net.transformer_blocks):
            raise UserError(
                f"{adapter.source} has LoRA for block {max(spec.blocks)}, the model has {len(self.net.transformer_blocks)} blocks.",
                "use the base model the adapter was trained on.",
            )
        scaled = LoraSpec(spec.rank, spec.scale * self.settings.lora_scale, spec.blocks, spec.targets)
        add_lora(self.net, scaled)
        try:
            load_lora_state(self.net, adapter.state)
        except RuntimeError as error:  # shape mismatch: another base model
            raise UserError(f"{adapter.source} does not fit this base model: {error}.", "use the base it was trained on.")
        for name, param in self.net.named_parameters():
            if ".lora_" in name:
                param.data = param.data.to(self.dtype)
                param.requires_grad_(False)

    def set_stage(self, stage: str) -> None:
        if self.adapter is None:
            return
        (self.net.enable_adapters if stage == "lora" else self.net.disable_adapters)()

    def generate(self, text: torch.Tensor, negative: torch.Tensor, seed: int, on_step=None) -> np.ndarray:
        s = self.settings
        shape = (1, 16, latent_frames(s.frames), s.height // 8, s.width // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        cond = {"crossattn_emb": text.to(self.device, self.dtype)[None], "fps": float(s.fps)}
        uncond = {**cond, "crossattn_emb": negative.to(self.device, self.dtype)[None]}
        latents = sample_latents(self.net, noise, cond, uncond, s.steps, s.guidance, on_step=on_step)
        video = self.tokenizer.decode((latents / SIGMA_DATA).to(self.dtype))
        return video_to_uint8(video[0]).numpy()


def embed_prompts(settings: InferSettings, jobs: list[Job], device: torch.device) -> dict[str, torch.Tensor]:
    """Every distinct prompt and negative prompt through T5 once; T5 is freed afterwards."""
    texts = sorted({j.prompt.text for j in jobs} | {j.prompt.negative for j in jobs})
    if not texts:
        return {}
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    encoder = T5TextEncoder(settings.text_encoder, device, dtype)
    embeddings = {text: pad_embedding(emb)[0] for text, emb in zip(texts, encoder.encode(texts))}
    del encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeddings


def run_jobs(settings: InferSettings, jobs: list[Job], device: torch.device, show_progress: bool = True) -> list[Path]:
    """Generates this process's jobs; returns the videos written."""
    check_settings(settings)
    todo = jobs if settings.overwrite else [j for j in jobs if not job_done(settings, j)]
    if not todo:
        return []
    embeddings = embed_prompts(settings, todo, device)
    generator = Text2WorldGenerator(settings, device)
    stages = STAGES[settings.stages]
    written = []
    with _progress(show_progress) as progress:
        videos_task = progress.add_task("videos", total=len(todo) * len(stages))
        steps_task = progress.add_task("steps", total=settings.steps)
        for job in todo:
            outputs = {}
            for stage in stages:
                progress.reset(steps_task, description=f"{stage}: {job.prompt.name} seed {job.seed}")
                started = time.perf_counter()
                generator.set_stage(stage)
                outputs[stage] = generator.generate(
                    embeddings[job.prompt.text], embeddings[job.prompt.negative], job.seed,
                    on_step=lambda i, x0, x: progress.advance(steps_task),
                )
                seconds = time.perf_counter() - started
                written.append(_write_stage(settings, job, stage, outputs[stage], seconds, generator.adapter))
                progress.advance(videos_task)
            if len(stages) == 2:
                frames = side_by_side([outputs[s] for s in stages], [STAGE_LABELS[s] for s in stages])
                write_video(compare_path(settings.out_dir, job), frames, settings.fps)
    return written


def _write_stage(settings: InferSettings, job: Job, stage: str, frames: np.ndarray, seconds: float, adapter) -> Path:
    path = video_path(settings.out_dir, stage, job)
    write_video(path, frames, settings.fps)
    (path.parent / "prompt.txt").write_text(job.prompt.text + "\n", encoding="utf-8")
    meta = {
        "prompt": job.prompt.text, "negative_prompt": job.prompt.negative, "seed": job.seed, "stage": stage,
        "steps": settings.steps, "guidance": settings.guidance, "fps": settings.fps,
        "height": settings.height, "width": settings.width, "frames": settings.frames, "precision": settings.precision,
        "dit": str(settings.dit), "seconds": round(seconds, 3),
        **(adapter.describe(settings.lora_scale) if stage == "lora" and adapter else {}),
        **settings.extra_meta,
    }
    meta_path = path.with_suffix(".json")
    tmp = atomic_path(meta_path)
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)
    return path


def finish(settings: InferSettings, jobs: list[Job]) -> Path | None:
    """The browsable index of every comparison (main process, after all processes are done)."""
    if settings.stages != "both":
        return None
    return write_index(settings.out_dir, [(j, compare_path(settings.out_dir, j)) for j in jobs])


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
    )
