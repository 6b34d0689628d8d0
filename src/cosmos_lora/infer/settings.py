"""What one inference run is, and what can be told before any model loads: the settings, their checks
against the checkpoints (memory-mapped: nothing is loaded), where each video goes and whether it is done.

The CLI runs all of this in its own process before it starts the workers (which generate: `pipeline.py`),
so nothing here imports diffusers, peft or transformers (tests/test_cli_fast.py checks it).
"""

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cosmos_lora.errors import UserError
from cosmos_lora.infer.prompts import STAGES, Job
from cosmos_lora.infer.video_input import file_sha256, read_input
from cosmos_lora.model.adapter_files import Adapter, check_fits, from_file
from cosmos_lora.model.checkpoint import (
    LORA_MARKER, base_fingerprint, read_official_checkpoint, split_official_state, unwrap_container,
)
from cosmos_lora.model.generation import DEFAULT_AUGMENT_SIGMA
from cosmos_lora.model.sizes import DiTSize, size_from_state_dict
from cosmos_lora.model.tokenizer import check_tokenizer_folder, latent_frames

MAX_STEPS, MAX_FPS = 1000, 1000.0
# settings that do not decide what a video looks like: a rerun into the same folder may change them
RERUN_MAY_CHANGE = {"out_dir", "stages", "overwrite", "offload", "extra_meta", "gpus_per_video", "cfg_parallel", "save_latents"}
# settings a LoRA video's sidecar records through `Adapter.describe` (each file, its hash, the scale used)
ADAPTER_SETTINGS = {"adapters", "lora_scale"}


@dataclass(frozen=True)
class StackedLora:
    """One adapter of the LoRA stage (`--lora FILE[:WEIGHT]`, or a run's): every one is applied at once."""

    file: Path  # any file `adapter_files.from_file` reads
    weight: float = 1.0  # multiplies its scale, as `merge -a FILE:WEIGHT` does
    stated_scale: float | None = None  # the scale of a file that records none (`from_file`'s `scale`)

    def read(self, lora_scale: float = 1.0) -> Adapter:
        """The adapter at weight x `lora_scale` times its own scale."""
        return from_file(self.file, self.stated_scale).scaled(self.weight * lora_scale)


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
    adapters: list[StackedLora] = field(default_factory=list)  # the LoRA stage's adapters, stacked
    lora_scale: float = 1.0  # multiplies every adapter's scale
    attention_backend: str = "cudnn"  # cudnn: fused cuDNN attention on GPUs; default: torch's choice
    compile: bool = True  # regional torch.compile of the DiT blocks on GPUs (see benchmarks/RESULTS.md)
    fp8: bool = False  # FP8 matmuls for the frozen attention/MLP linears (model/fp8.py)
    offload: bool = False  # keep only the model of the current phase on the GPU (sampling: DiT, decoding: tokenizer)
    gpus_per_video: int = 1  # processes that make one video together (model/parallel.py)
    cfg_parallel: bool = True  # with an even gpus_per_video: the two CFG branches on two halves of them
    save_latents: bool = False  # also write seed_<k>.latents.safetensors (the sampled latents, float32)
    input_file: Path | None = None  # Video2World: the image or video the videos continue
    input_kind: str | None = None  # image or video
    num_input_frames: int = 1  # the last 1 or 9 frames of the input
    augment_sigma: float = DEFAULT_AUGMENT_SIGMA  # noise on the condition frames (official 0.001)
    extra_meta: dict = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))  # paths as text

    @classmethod
    def from_json(cls, raw: dict) -> "InferSettings":
        paths = {"out_dir", "dit", "tokenizer", "text_encoder", "input_file"}
        settings = cls(**{k: Path(v) if k in paths and v is not None else v for k, v in raw.items()})
        settings.adapters = [StackedLora(Path(a["file"]), a["weight"], a["stated_scale"]) for a in raw.get("adapters", [])]
        return settings


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
    if not 1 <= settings.steps <= MAX_STEPS:
        raise UserError(f"--steps {settings.steps} is not a number of denoising steps (1 to {MAX_STEPS}).", "use e.g. --steps 35.")
    if not (math.isfinite(settings.guidance) and settings.guidance >= 0):
        raise UserError(f"--guidance {settings.guidance} is not a guidance strength (a finite number >= 0).", "use e.g. --guidance 7.")
    if not (math.isfinite(settings.fps) and 0 < settings.fps <= MAX_FPS):
        raise UserError(f"--fps {settings.fps} is not a frame rate (above 0, at most {MAX_FPS:g}).", "use e.g. --fps 24.")
    for option, value in (("--lora-scale", settings.lora_scale), *((f"--lora {a.file}'s weight", a.weight) for a in settings.adapters)):
        if not math.isfinite(value):
            raise UserError(f"{option} {value} is not a finite number.", "use e.g. --lora-scale 1 or --lora FILE:0.5.")
    if not (math.isfinite(settings.augment_sigma) and settings.augment_sigma >= 0):
        raise UserError(f"--augment-sigma {settings.augment_sigma} is not a noise level (a finite number >= 0).",
                        "use the official 0.001.")
    if "lora" in STAGES[settings.stages] and not settings.adapters:
        raise UserError(f"--stages {settings.stages} needs a LoRA.", "pass --run NAME or --lora FILE, or use --stages original.")


def read_dit(dit: Path) -> tuple[dict[str, torch.Tensor], DiTSize]:
    """The DiT checkpoint's tensors (memory-mapped: nothing is read yet) and its size, read off them."""
    state = unwrap_container(read_official_checkpoint(dit))
    try:
        size = size_from_state_dict(state)
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"{dit} is not a Cosmos-Predict1 DiT checkpoint.", "pass an official-format model.pt (--dit), or drop --dit.",
        ) from None
    if lora := [k for k in state if LORA_MARKER in k]:  # the network would be the base alone, its LoRA left out
        raise UserError(
            f"{dit} holds LoRA tensors ({lora[0]}): it is a LoRA post-trained checkpoint, not a DiT to sample.",
            "pass it as --lora FILE and its base model as --dit (or merge them: `cosmos-lora merge`).",
        )
    return state, size


def check_model(settings: InferSettings, adapters: list[Adapter]) -> DiTSize:
    """What only the checkpoints can tell, before anything is loaded or written: the size fits the DiT,
    the text encoder's width is the DiT's, and every adapter fits the DiT (tensors are memory-mapped).
    Returns the DiT's size."""
    state, size = read_dit(settings.dit)
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
    check_input_fits(settings, size)
    if adapters and "lora" in STAGES[settings.stages]:
        network, _, _, _ = split_official_state(state)
        fix = "pass --dit with the checkpoint it was trained on (a --run's own is the default), or leave this LoRA out."
        for adapter in adapters:
            check_fits(adapter, {k: v.shape for k, v in network.items()}, settings.dit, fix)
    return size


def check_input_fits(settings: InferSettings, size: DiTSize) -> None:
    """A Video2World checkpoint continues an input, a Text2World one starts from text alone; the input
    is readable and long enough (read here, before any model loads)."""
    if size.video2world and settings.input_file is None:
        raise UserError(f"{settings.dit} is a Video2World model: it continues an image or a video.",
                        "pass --image FILE or --video FILE (with --num-input-frames 1 or 9), or use a Text2World model.")
    if not size.video2world and settings.input_file is not None:
        raise UserError(f"--{settings.input_kind} needs a Video2World model; {settings.dit} is Text2World.",
                        "use --model 7b-v2w (or a run trained on it), or drop the input.")
    if settings.input_file is not None:
        read_input(settings.input_file, settings.input_kind, settings.num_input_frames)
        if settings.num_input_frames > settings.frames:
            raise UserError(f"--num-input-frames {settings.num_input_frames} is more than the {settings.frames} frames generated.",
                            "generate more --frames, or use --num-input-frames 1.")


def video_tokens(settings: InferSettings) -> int:
    """The DiT's tokens for one video (patches of 1x2x2 latents)."""
    return latent_frames(settings.frames) * (settings.height // 16) * (settings.width // 16)


def video_path(out_dir: Path, stage: str, job: Job) -> Path:
    return out_dir / stage / job.prompt.name / f"seed_{job.seed}.mp4"


def latents_path(video: Path) -> Path:
    return video.with_suffix(".latents.safetensors")


def compare_path(out_dir: Path, job: Job) -> Path:
    return out_dir / "compare" / job.prompt.name / f"seed_{job.seed}.mp4"


def made_of(settings: InferSettings, job: Job, stage: str) -> dict:
    """Everything that decides what a stage's video looks like, as its sidecar records it: the prompt, its
    negative, the seed, every setting a rerun may not change, the DiT checkpoint (path, fingerprint and
    modification time: a file rewritten in place, e.g. by `merge`, may keep the sampled fingerprint) and,
    for the LoRA stage, every adapter (file, sha256, weight, scale). `job_done` counts a video only when
    these match."""
    recorded = {k: v for k, v in settings.to_json().items() if k not in RERUN_MAY_CHANGE | ADAPTER_SETTINGS}
    meta = {
        "prompt": job.prompt.text, "negative_prompt": job.prompt.negative, "prompt_name": job.prompt.name,
        "seed": job.seed, "stage": stage, **recorded, "dit_fingerprint": dit_fingerprint(settings.dit),
        "dit_modified_ns": _stamp(settings.dit)[1],
    }
    if settings.input_file is not None:
        meta["input_sha256"] = file_sha256(settings.input_file)
    if stage == "lora":
        meta["adapters"] = [
            _adapter_description(a.file, a.stated_scale, a.weight, settings.lora_scale, *_stamp(a.file)) for a in settings.adapters
        ]
    return json.loads(json.dumps(meta))  # as read back from the sidecar


def job_done(settings: InferSettings, job: Job) -> bool:
    """Every stage's video with its sidecar written after it and recording what this job would make
    (`made_of`), and for `both` the comparison written after them. Anything else is redone."""
    made = 0
    for stage in STAGES[settings.stages]:
        video = video_path(settings.out_dir, stage, job)
        sidecar = video.with_suffix(".json")
        if not (video.is_file() and sidecar.is_file()) or sidecar.stat().st_mtime_ns < video.stat().st_mtime_ns:
            return False
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        if any(recorded.get(key) != value for key, value in made_of(settings, job, stage).items()):
            return False
        if settings.save_latents and not latents_path(video).is_file():
            return False
        made = max(made, sidecar.stat().st_mtime_ns)
    compare = compare_path(settings.out_dir, job)
    return settings.stages != "both" or (compare.is_file() and compare.stat().st_mtime_ns >= made)


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime): a changed file is read again by the caches below."""
    info = Path(path).stat()
    return info.st_size, info.st_mtime_ns


def dit_fingerprint(dit: Path) -> str:
    """`base_fingerprint` of the DiT checkpoint, computed once per version of the file."""
    return _fingerprint(dit, *_stamp(dit))


@functools.lru_cache(maxsize=8)
def _fingerprint(path: Path, size: int, mtime: int) -> str:
    return base_fingerprint(Path(path))


@functools.lru_cache(maxsize=32)
def _adapter_description(path: Path, stated_scale: float | None, weight: float, lora_scale: float, size: int, mtime: int) -> dict:
    return {"weight": weight, **from_file(path, stated_scale).describe(weight * lora_scale)}
