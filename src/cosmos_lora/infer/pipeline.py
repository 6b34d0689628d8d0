"""Base vs LoRA generation: models loaded once, every (prompt, seed) job run through every stage.

Order of work in one process:
  1. check inputs and plan the jobs (skipping finished ones: `settings.job_done`);
  2. T5 embeds every prompt once, then leaves the device;
  3. the DiT (with the LoRA layers, switched per stage) samples each job's latents;
  4. the tokenizer decodes them; videos, `prompt.txt`, `seed_<k>.json` and the comparison are written.

A Video2World checkpoint (read off its weights) continues an input image or video (`input_file`,
read once per process by `video_input.read_input`); its comparison shows the input beside the stages.
"""

import contextlib
import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
from cosmos_lora.infer.settings import (
    InferSettings, check_settings, compare_path, dit_fingerprint, job_done, latents_path, made_of, video_path,
)
from cosmos_lora.infer.video_input import input_panel, read_input
from cosmos_lora.model.generation import VideoInput, VideoSettings, generate_video
from cosmos_lora.model.network import BlockSettings, build_network
from cosmos_lora.model.lora import AdapterSwitch
from cosmos_lora.model.text_encoder import embed_texts
from cosmos_lora.model.tokenizer import VideoTokenizer
from cosmos_lora.model.parallel import VideoGroups, cfg_split, from_leader, parallelize
from cosmos_lora.progress import progress_bar

STAGE_LABELS = {"original": "original", "lora": "LoRA"}


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

        future = self.pool.submit(run)
        self.pending.append(future)
        return future

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
