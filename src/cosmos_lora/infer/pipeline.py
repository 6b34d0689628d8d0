"""Base vs LoRA generation: models loaded once, every (prompt, seed) job run through every stage.

Order of work in one process:
  1. check inputs and plan the jobs (skipping finished ones);
  2. T5 embeds every prompt once, then leaves the device;
  3. the DiT (with the LoRA layers, switched per stage) samples each job's latents;
  4. the tokenizer decodes them; videos, `prompt.txt`, `seed_<k>.json` and the comparison are written.
"""

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cosmos_lora.data.embeddings import pad_embedding
from cosmos_lora.data.video import side_by_side, write_video
from cosmos_lora.errors import UserError
from cosmos_lora.infer.adapters import Adapter, check_fits, from_file
from cosmos_lora.infer.html import write_index
from cosmos_lora.infer.prompts import STAGES, Job
from cosmos_lora.model.checkpoint import load_official_dit, read_official_checkpoint, split_official_state, unwrap_container
from cosmos_lora.model.dit import configure_blocks, size_from_state_dict
from cosmos_lora.model.edm import SIGMA_DATA
from cosmos_lora.model.fp8 import use_fp8_linears
from cosmos_lora.model.lora import LoraSpec, add_lora, load_lora_state
from cosmos_lora.model.sampler import sample_latents
from cosmos_lora.model.text_encoder import T5TextEncoder
from cosmos_lora.model.tokenizer import VideoTokenizer, check_tokenizer_folder, latent_frames, video_to_uint8
from cosmos_lora.files import atomic_write
from cosmos_lora.progress import progress_bar

STAGE_LABELS = {"original": "original", "lora": "LoRA"}
T5_BATCH = 16  # prompts per T5 forward, so a long prompts file is not one huge batch


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
    adapter_file: Path | None = None  # any file `adapters.from_file` reads
    official_lora_scale: float | None = None  # official files do not store their scale
    lora_scale: float = 1.0  # multiplies the adapter's trained scale
    attention_backend: str = "cudnn"  # cudnn: fused cuDNN attention on GPUs; default: torch's choice
    compile: bool = True  # regional torch.compile of the DiT blocks on GPUs (see benchmarks/RESULTS.md)
    fp8: bool = False  # FP8 matmuls for the frozen attention/MLP linears (model/fp8.py)
    offload: bool = False  # keep only the model of the current phase on the GPU (sampling: DiT, decoding: tokenizer)
    extra_meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict) -> "InferSettings":
        paths = {"out_dir", "dit", "tokenizer", "text_encoder", "adapter_file"}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in raw.items()})


def check_settings(settings: InferSettings) -> None:
    """What the settings alone can tell (no file is read)."""
    if settings.attention_backend not in ("cudnn", "default"):
        raise UserError(f"Unknown --attention {settings.attention_backend!r}.", "use cudnn or default.")
    height, width, frames = settings.height, settings.width, settings.frames
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise UserError(f"Resolution {height}x{width} is not a multiple of 16.", "use e.g. --resolution 704 1280.")
    if frames < 1 or (frames - 1) % 8:
        raise UserError(f"{frames} frames is not 1+8k.", "use e.g. --frames 121, 57 or 17.")
    if frames > settings.pixel_chunk_duration:
        raise UserError(
            f"{frames} frames is more than the tokenizer's {settings.pixel_chunk_duration}-frame chunk.",
            f"use at most --frames {settings.pixel_chunk_duration}.",
        )
    if settings.steps < 1:
        raise UserError(f"--steps {settings.steps} is not a number of denoising steps.", "use e.g. --steps 35.")
    if "lora" in STAGES[settings.stages] and settings.adapter_file is None:
        raise UserError(f"--stages {settings.stages} needs a LoRA.", "pass --run NAME or --lora FILE, or use --stages original.")


def check_model(settings: InferSettings, adapter: Adapter | None) -> None:
    """What only the checkpoints can tell, before anything is loaded or written: the size fits the DiT,
    the text encoder's width is the DiT's, and the adapter fits the DiT (tensors are memory-mapped)."""
    state = unwrap_container(read_official_checkpoint(settings.dit))
    try:
        size = size_from_state_dict(state)
    except (KeyError, IndexError, ValueError):
        raise UserError(f"{settings.dit} is not a Cosmos-Predict1 DiT checkpoint.", "point the model at an official model.pt.") from None
    latent = (latent_frames(settings.frames), settings.height // 8, settings.width // 8)
    if any(ours > most for ours, most in zip(latent, size.max_size)):
        t, h, w = size.max_size
        raise UserError(
            f"{settings.frames} frames of {settings.height}x{settings.width} are more than the DiT at {settings.dit} "
            f"generates (at most {1 + 8 * (t - 1)} frames of {8 * h}x{8 * w}).",
            "lower --frames or --resolution.",
        )
    check_tokenizer_folder(settings.tokenizer)
    t5_config = settings.text_encoder / "config.json"
    if not t5_config.is_file():
        raise UserError(f"No T5 text encoder at {settings.text_encoder} (config.json missing).", "run `cosmos-lora download`.")
    t5_width = json.loads(t5_config.read_text()).get("d_model")
    if t5_width != size.text_embed_dim:
        raise UserError(
            f"The text encoder at {settings.text_encoder} gives {t5_width}-d embeddings, the DiT at {settings.dit} "
            f"takes {size.text_embed_dim}-d.",
            "use the T5 that goes with the model (google-t5/t5-11b for Cosmos-Predict1).",
        )
    if adapter is not None and "lora" in STAGES[settings.stages]:
        network, _, _, _ = split_official_state(state)
        check_fits(adapter, {k: v.shape for k, v in network.items()}, settings.dit)


def video_path(out_dir: Path, stage: str, job: Job) -> Path:
    return out_dir / stage / job.prompt.name / f"seed_{job.seed}.mp4"


def compare_path(out_dir: Path, job: Job) -> Path:
    return out_dir / "compare" / job.prompt.name / f"seed_{job.seed}.mp4"


def job_done(settings: InferSettings, job: Job) -> bool:
    """Every stage's video with its sidecar (written last), and the comparison for `both`."""
    videos = [video_path(settings.out_dir, s, job) for s in STAGES[settings.stages]]
    paths = videos + [v.with_suffix(".json") for v in videos]
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
        configure_blocks(
            self.net, compile_blocks=settings.compile and device.type == "cuda",
            prefer_cudnn=settings.attention_backend == "cudnn",
        )
        self.adapter = None
        if settings.adapter_file is not None and "lora" in STAGES[settings.stages]:
            self.adapter = from_file(settings.adapter_file, settings.official_lora_scale)
            self._attach(self.adapter)
        if settings.fp8:
            use_fp8_linears(self.net)  # after the LoRA: it wraps the FP8 base like the bf16 one
        home = "cpu" if settings.offload else device
        self.tokenizer = VideoTokenizer(settings.tokenizer, home, self.dtype, settings.pixel_chunk_duration)

    def _attach(self, adapter: Adapter) -> None:
        """LoRA layers built from the adapter's own spec, its scale times --lora-scale, then its weights."""
        check_fits(adapter, {k: v.shape for k, v in self.net.state_dict().items()}, self.settings.dit)
        spec = adapter.spec
        add_lora(self.net, LoraSpec(spec.rank, spec.scale * self.settings.lora_scale, spec.blocks, spec.targets))
        load_lora_state(self.net, adapter.state)
        for name, param in self.net.named_parameters():
            if ".lora_" in name:
                param.data = param.data.to(self.dtype)
                param.requires_grad_(False)

    def set_stage(self, stage: str) -> None:
        if self.adapter is None:
            return
        (self.net.enable_adapters if stage == "lora" else self.net.disable_adapters)()

    def generate(self, text: torch.Tensor, negative: torch.Tensor, seed: int, on_step=None) -> tuple[np.ndarray, dict]:
        """uint8 `[T, H, W, 3]` frames and where the time went (sampling, decoding, peak GPU memory)."""
        s = self.settings
        shape = (1, 16, latent_frames(s.frames), s.height // 8, s.width // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        cond = {"crossattn_emb": text.to(self.device, self.dtype)[None], "fps": float(s.fps)}
        uncond = {**cond, "crossattn_emb": negative.to(self.device, self.dtype)[None]}
        started = time.perf_counter()
        latents = sample_latents(self.net, noise, cond, uncond, s.steps, s.guidance, on_step=on_step)
        sampled = time.perf_counter()
        with self._decoding_phase():
            video = self.tokenizer.decode((latents / SIGMA_DATA).to(self.dtype))
            frames = video_to_uint8(video[0]).numpy()  # the copy to the host waits for the GPU
        timings = {
            "sample_seconds": round(sampled - started, 3),
            "seconds_per_step": round((sampled - started) / s.steps, 4),
            "decode_seconds": round(time.perf_counter() - sampled, 3),
        }
        if self.device.type == "cuda":
            timings["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2)
        return frames, timings


    @contextlib.contextmanager
    def _decoding_phase(self):
        """With offload, the DiT waits on the host while the tokenizer decodes on the GPU."""
        if not self.settings.offload:
            yield
            return
        torch.nn.Module.to(self.net, "cpu")
        self.tokenizer.to(self.device)
        try:
            yield
        finally:
            self.tokenizer.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            torch.nn.Module.to(self.net, self.device)


def embed_prompts(settings: InferSettings, jobs: list[Job], device: torch.device) -> dict[str, torch.Tensor]:
    """Every distinct prompt and negative prompt through T5 once; T5 is freed afterwards."""
    texts = sorted({j.prompt.text for j in jobs} | {j.prompt.negative for j in jobs})
    if not texts:
        return {}
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    encoder = T5TextEncoder(settings.text_encoder, device, dtype)
    embeddings = {}
    for start in range(0, len(texts), T5_BATCH):
        batch = texts[start : start + T5_BATCH]
        embeddings.update({text: pad_embedding(emb)[0] for text, emb in zip(batch, encoder.encode(batch))})
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
    with progress_bar(show_progress) as progress:
        videos_task = progress.add_task("videos", total=len(todo) * len(stages))
        steps_task = progress.add_task("steps", total=settings.steps)
        for job in todo:
            outputs = {}
            for stage in stages:
                progress.reset(steps_task, description=f"{stage}: {job.prompt.name} seed {job.seed}")
                started = time.perf_counter()
                generator.set_stage(stage)
                outputs[stage], timings = generator.generate(
                    embeddings[job.prompt.text], embeddings[job.prompt.negative], job.seed,
                    on_step=lambda i, x0, x: progress.advance(steps_task),
                )
                timings["seconds"] = round(time.perf_counter() - started, 3)
                written.append(_write_stage(settings, job, stage, outputs[stage], timings, generator.adapter))
                progress.advance(videos_task)
                progress.note(f"video {len(written)}/{len(todo) * len(stages)} ({timings['seconds']:.0f} s): {written[-1]}")
            if len(stages) == 2:
                frames = side_by_side([outputs[s] for s in stages], [STAGE_LABELS[s] for s in stages])
                write_video(compare_path(settings.out_dir, job), frames, settings.fps)
    return written


def _write_stage(settings: InferSettings, job: Job, stage: str, frames: np.ndarray, timings: dict, adapter) -> Path:
    """The video, then `prompt.txt`, then the sidecar: a video without its sidecar counts as unfinished."""
    path = video_path(settings.out_dir, stage, job)
    write_video(path, frames, settings.fps)
    _write_text(path.parent / "prompt.txt", job.prompt.text + "\n")
    meta = {
        "prompt": job.prompt.text, "negative_prompt": job.prompt.negative, "prompt_name": job.prompt.name,
        "seed": job.seed, "stage": stage, "steps": settings.steps, "guidance": settings.guidance, "fps": settings.fps,
        "height": settings.height, "width": settings.width, "frames": settings.frames, "precision": settings.precision,
        "dit": str(settings.dit), "tokenizer": str(settings.tokenizer), "text_encoder": str(settings.text_encoder),
        **timings,
        **(adapter.describe(settings.lora_scale) if stage == "lora" and adapter else {}),
        **settings.extra_meta,
    }
    _write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return path


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def finish(settings: InferSettings, jobs: list[Job]) -> Path | None:
    """The browsable index of every comparison (main process, after all processes are done)."""
    if settings.stages != "both":
        return None
    return write_index(settings.out_dir, [(j, compare_path(settings.out_dir, j)) for j in jobs])
