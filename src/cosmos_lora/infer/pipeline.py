"""Base vs LoRA generation: models loaded once, every (prompt, seed) job run through every stage.

Order of work in one process:
  1. check inputs and plan the jobs (skipping finished ones);
  2. T5 embeds every prompt once, then leaves the device;
  3. the DiT (with the LoRA layers, switched per stage) samples each job's latents;
  4. the tokenizer decodes them; videos, `prompt.txt`, `seed_<k>.json` and the comparison are written.

A Video2World checkpoint (read off its weights) continues an input image or video (`input_file`,
read once per process by `video_input.read_input`); its comparison shows the input beside the stages.
"""

import contextlib
import functools
import json
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from cosmos_lora.data import video_metrics
from cosmos_lora.data.video import VideoWriter, side_by_side, write_video
from cosmos_lora.errors import UserError
from cosmos_lora.files import atomic_write
from cosmos_lora.infer.html import write_index
from cosmos_lora.infer.prompts import STAGES, Job
from cosmos_lora.infer.video_input import file_sha256, input_panel, read_input
from cosmos_lora.model.adapter_files import Adapter, check_fits, from_file
from cosmos_lora.model.checkpoint import (
    LORA_MARKER, base_fingerprint, read_official_checkpoint, split_official_state, unwrap_container,
)
from cosmos_lora.model.dit import DiTSize, size_from_state_dict
from cosmos_lora.model.generation import DEFAULT_AUGMENT_SIGMA, VideoInput, VideoSettings, generate_video
from cosmos_lora.model.network import BlockSettings, build_network
from cosmos_lora.model.lora import AdapterSwitch
from cosmos_lora.model.text_encoder import embed_texts
from cosmos_lora.model.tokenizer import VideoTokenizer, check_tokenizer_folder, latent_frames
from cosmos_lora.model.parallel import VideoGroups, cfg_split, from_leader, parallelize
from cosmos_lora.progress import progress_bar

STAGE_LABELS = {"original": "original", "lora": "LoRA"}
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


def describe_models(settings: InferSettings) -> tuple[str, str]:
    """What the original and the LoRA stage sample with, in words (the gallery's captions)."""
    original = f"DiT {settings.dit} (fingerprint {dit_fingerprint(settings.dit)})"
    scale = "" if settings.lora_scale == 1 else f", --lora-scale {settings.lora_scale:g}"
    loras = " + ".join(f"{a.file} x {a.weight:g}" for a in settings.adapters)
    return original, f"{original} with LoRA {loras}{scale}"


class NonFinite(Exception):
    """A sample went NaN or inf: its video would be black."""


class Text2WorldGenerator:
    """The DiT and tokenizer, loaded once; the LoRA (if any) is switched on and off per stage.

    With `groups`, this process is one of a video group: it samples its share (model/parallel.py) and
    only the group's first process decodes.
    """

    def __init__(self, settings: InferSettings, device: torch.device, groups: VideoGroups | None = None):
        self.settings, self.device, self.groups = settings, device, groups
        self.dtype = settings.dtype
        self.adapters = [a.read(settings.lora_scale) for a in settings.adapters] if "lora" in STAGES[settings.stages] else []
        self.net = build_network(
            settings.dit, device, self.dtype, lora=self.adapters,
            fp8=settings.fp8, blocks=BlockSettings(compile=settings.compile, prefer_cudnn=settings.attention_backend == "cudnn"),
        ).net.eval()
        parallelize(self.net, groups)  # last: it splits the tokens of the network as assembled
        self.switch_adapters = AdapterSwitch(self.net) if self.adapters else None
        home = "cpu" if settings.offload else device
        self.tokenizer = VideoTokenizer(settings.tokenizer, home, self.dtype, settings.pixel_chunk_duration)
        self.video = VideoSettings(settings.frames, settings.height, settings.width, settings.fps, settings.steps, settings.guidance)
        self.input_frames = None
        if settings.input_file is not None:
            self.input_frames = read_input(settings.input_file, settings.input_kind, settings.num_input_frames)

    def set_stage(self, stage: str) -> None:
        if self.switch_adapters is not None:
            self.switch_adapters(stage == "lora")

    @property
    def writes(self) -> bool:
        """This process decodes and writes the videos it samples (the first of its video group)."""
        return self.groups is None or self.groups.leads_video

    def generate(self, text: torch.Tensor, negative: torch.Tensor, seed: int,
                 on_step=None) -> tuple[np.ndarray | None, torch.Tensor, dict]:
        """uint8 `[T, H, W, 3]` frames (None where another process writes them), the latents, and where
        the time went (sampling, decoding, peak GPU memory)."""
        given = None if self.input_frames is None else VideoInput(self.input_frames, self.settings.augment_sigma)
        frames, latents, timings = generate_video(
            self.net, self.tokenizer, text, negative, seed, self.video, self.device, self.dtype,
            on_step=on_step, decoding=self._decoding_phase, cfg=cfg_split(self.groups), decode=self.writes, given=given,
        )
        if not self.writes:
            return None, latents, timings
        if self.device.type == "cuda":
            timings["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2)
        return frames, latents, timings

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


def embed_prompts(settings: InferSettings, jobs: list[Job], device: torch.device,
                  groups: VideoGroups | None = None) -> dict[str, torch.Tensor]:
    """Every distinct prompt and negative prompt through T5 once; T5 is freed afterwards. In a video group
    (whose processes share its jobs) only the leader loads T5 (22 GB for T5-11B) and sends the rest the
    embeddings."""
    texts = sorted({j.prompt.text for j in jobs} | {j.prompt.negative for j in jobs})
    if groups is None or groups.members is None:
        return embed_texts(settings.text_encoder, texts, device, settings.dtype)
    mine = embed_texts(settings.text_encoder, texts, device, settings.dtype) if groups.leads_video else None
    stacked = from_leader(groups, torch.stack([mine[t] for t in texts]) if mine else None, device)
    return {text: row.cpu() for text, row in zip(texts, stacked)}


def run_jobs(settings: InferSettings, jobs: list[Job], device: torch.device, show_progress: bool = True,
             groups: VideoGroups | None = None) -> list[Path]:
    """Generates this process's (or video group's) jobs; returns the videos this process wrote."""
    check_settings(settings)
    todo = jobs if settings.overwrite else [j for j in jobs if not job_done(settings, j)]
    if not todo:
        return []
    started = time.perf_counter()
    embeddings = embed_prompts(settings, todo, device, groups)
    embedded = time.perf_counter()
    generator = Text2WorldGenerator(settings, device, groups)
    if show_progress:  # where start-up time goes (benchmarks/RESULTS.md uses these lines)
        print(f"ready to sample: text encoder {embedded - started:.1f} s, DiT and tokenizer "
              f"{time.perf_counter() - embedded:.1f} s", file=sys.stderr)
    stages = STAGES[settings.stages]
    written, failed = [], []
    # two lanes: the last stage's video and the comparison are encoded at once (each ffmpeg takes seconds)
    with progress_bar(show_progress) as progress, BackgroundWrites() as writes, BackgroundWrites() as comparisons:
        videos_task = progress.add_task("videos", total=len(todo) * len(stages))
        steps_task = progress.add_task("steps", total=settings.steps)

        def on_step(i: int, x0: torch.Tensor, x: torch.Tensor) -> None:
            if not torch.isfinite(x).all():  # a NaN/inf sample decodes to a black video
                raise NonFinite(i)
            progress.advance(steps_task)

        for job in todo:
            outputs = {}
            for stage in stages:
                progress.reset(steps_task, description=f"{stage}: {job.prompt.name} seed {job.seed}")
                started = time.perf_counter()
                generator.set_stage(stage)
                try:
                    outputs[stage], latents, timings = generator.generate(
                        embeddings[job.prompt.text], embeddings[job.prompt.negative], job.seed,
                        on_step=on_step,
                    )
                except NonFinite as stop:
                    print(f"{stage} video of {job.prompt.name} seed {job.seed}: the sample went NaN/inf at step "
                          f"{stop.args[0] + 1}; no video written.", file=sys.stderr)
                    failed.append(job)
                    break
                timings["seconds"] = round(time.perf_counter() - started, 3)
                progress.advance(videos_task)
                if generator.writes:
                    base = outputs.get("original") if stage == "lora" else None  # drift: same seed, base model
                    kept = latents.float().cpu() if settings.save_latents else None
                    written.append(video_path(settings.out_dir, stage, job))
                    note = f"video {len(written)}/{len(todo) * len(stages)} ({timings['seconds']:.0f} s): {written[-1]}"
                    last_write = writes.submit(_write_stage, settings, job, stage, outputs[stage], kept, timings, base,
                                               done=lambda note=note: progress.note(note))
            if len(stages) == 2 and len(outputs) == 2 and generator.writes:
                comparisons.submit(_write_comparison, settings, job, generator.input_frames, stages, outputs, last_write,
                                   done=lambda job=job: progress.note(f"comparison: {compare_path(settings.out_dir, job)}"))
    if failed:
        raise UserError(
            f"{len(failed)} of {len(todo)} jobs went NaN/inf while sampling (listed above); their videos were not written.",
            "lower --guidance or --lora-scale, or use an earlier adapter (--step); finished videos are kept.",
        )
    return written


class BackgroundWrites:
    """Finished videos are encoded, measured and written on a thread while the GPUs sample the next
    (5-14 s of CPU per 121x704x1280 video, mostly ffmpeg and the video metrics), in the order given.
    Leaving waits for every write and raises the first one that failed; leaving on an error or a stop
    (Ctrl-C, SIGTERM) lets the write in progress finish (each file is published whole) and drops the
    ones not started."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-writes")
        self.pending: list[Future] = []

    def submit(self, write, *args, done=None) -> Future:
        def run():
            write(*args)
            if done is not None:
                done()

        self.pending.append(self.pool.submit(run))
        return self.pending[-1]

    def __enter__(self) -> "BackgroundWrites":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)
        if kind is None:
            for future in self.pending:
                future.result()


def _write_comparison(settings: InferSettings, job: Job, input_frames: np.ndarray | None, stages, outputs: dict,
                      last_stage_write: Future) -> None:
    """The stages side by side; a Video2World comparison starts with the input it continues. Encoded while
    the last stage's video is written, published after it (`job_done` counts a comparison older than a
    sidecar as unfinished); not at all if that write failed."""
    videos, labels = [outputs[s] for s in stages], [STAGE_LABELS[s] for s in stages]
    if input_frames is not None:
        length, height, width = videos[0].shape[:3]
        videos.insert(0, input_panel(input_frames, length, height, width))
        labels.insert(0, f"input: last {settings.num_input_frames} frame(s)" if settings.input_kind == "video" else "input image")
    frames = side_by_side(videos, labels)
    # a viewing aid twice as wide as a video: encoded 2.6x faster at the same quality (a larger file)
    with VideoWriter(compare_path(settings.out_dir, job), frames.shape[1], frames.shape[2], settings.fps, preset="veryfast") as writer:
        writer.write(frames)
        last_stage_write.result()  # raises (and the comparison is dropped) if that write failed


def _write_stage(settings: InferSettings, job: Job, stage: str, frames: np.ndarray, latents: torch.Tensor | None,
                 timings: dict, base: np.ndarray | None) -> None:
    """The video (and latents), then `prompt.txt`, then the sidecar (what made the video, timings, and its
    `video_metrics`, with the drift from `base`): a video without its sidecar, or with an older one, counts
    as unfinished."""
    path = video_path(settings.out_dir, stage, job)
    with ThreadPoolExecutor(max_workers=1) as beside:  # the metrics while ffmpeg encodes: both take seconds
        metrics = beside.submit(video_metrics.measure, frames, base)
        write_video(path, frames, settings.fps)
    if latents is not None:  # --save-latents
        atomic_write(latents_path(path), safetensors.torch.save({"latents": latents.contiguous()}))
    _write_text(path.parent / "prompt.txt", job.prompt.text + "\n")
    meta = made_of(settings, job, stage) | timings | {"metrics": metrics.result()} | settings.extra_meta
    _write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def finish(settings: InferSettings, jobs: list[Job]) -> Path | None:
    """The video metrics summed up on stderr, and the browsable index of every comparison with each
    one's metrics (main process, after all processes are done)."""
    metrics = [recorded_metrics(settings, job) for job in jobs]
    by_stage = {STAGE_LABELS[s]: [m[s] for m in metrics if s in m] for s in STAGES[settings.stages]}
    for line in video_metrics.summarise(by_stage):
        print(line, file=sys.stderr)
    if settings.stages != "both":
        return None
    notes = [[f"{STAGE_LABELS[s]}: {video_metrics.describe(m[s])}" for s in STAGES[settings.stages] if s in m] for m in metrics]
    original, lora = describe_models(settings)
    return write_index(settings.out_dir, [(j, compare_path(settings.out_dir, j), n) for j, n in zip(jobs, notes)], original, lora)


def recorded_metrics(settings: InferSettings, job: Job) -> dict[str, dict]:
    """Stage -> the `metrics` its sidecar records (stages without a readable one are left out)."""
    found = {}
    for stage in STAGES[settings.stages]:
        sidecar = video_path(settings.out_dir, stage, job).with_suffix(".json")
        try:
            found[stage] = json.loads(sidecar.read_text(encoding="utf-8"))["metrics"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
            continue  # not made (a failed job) or made before metrics were recorded
    return found
