"""`cosmos-lora infer`: videos from the base model and the LoRA, side by side."""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result
from cosmos_lora.cli.posttrain import MODEL_PRESETS
from cosmos_lora.errors import UserError


def infer(
    ctx: typer.Context,
    run: str = typer.Option(None, help="Run name (in <outputs>/runs) or folder: its adapter, model and size."),
    step: int = typer.Option(None, help="The run's adapter at this step (default: latest)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the run saved them."),
    lora: list[str] = typer.Option(
        None, "--lora",
        help="FILE[:WEIGHT] (repeatable; with --run, added to its adapter): ours, diffusers/PEFT (file or save_pretrained "
        "folder), ComfyUI (.safetensors) or an official .pt. Several are applied together, each at WEIGHT x its scale, "
        "as `merge` adds them (default weight 1; for a file that records no scale, WEIGHT is the scale)."),
    lora_scale: float = typer.Option(
        None, help="Multiplies every adapter's scale (default 1); for a file that records no scale, it is the scale."),
    dit: Path = typer.Option(
        None, help="The DiT checkpoint (official format): a model.pt or its folder, as a path or under the checkpoints root "
        "(e.g. Cosmos-Predict1-7B-Text2World_post-trained, or a `merge` result). The original stage samples it and the "
        "LoRAs go on it; its size picks the tokenizer and text encoder (default: the run's, else --model's)."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompts_file: Path = typer.Option(None, help=".txt (one per line) or .jsonl (prompt, negative_prompt, seed, name)."),
    negative_prompt: str = typer.Option(None, help="Unconditional branch (default: the official negative prompt)."),
    num_videos: int = typer.Option(1, help="Videos per prompt (seeds seed..seed+K-1)."),
    seed: int = typer.Option(0, help="First seed."),
    stages: str = typer.Option("both", help="original, lora or both."),
    steps: int = typer.Option(35, help="Denoising steps."),
    guidance: float = typer.Option(7.0, help="Classifier-free guidance."),
    fps: float = typer.Option(24.0, help="Frame rate (conditions the model and the mp4)."),
    resolution: tuple[int, int] | None = typer.Option(None, metavar="H W", help="Height and width (default: the run's, else 704 1280)."),
    frames: int = typer.Option(None, help="Frames, 1+8k (default: the run's, else 121)."),
    model: str = typer.Option(None, help="7b, 14b, tiny, 7b-v2w or tiny-v2w (Video2World): the preset's checkpoint when no --run gives it (default: 7b); the size is read from the checkpoint."),
    image: Path = typer.Option(None, help="Video2World: the image (PNG/JPEG) the videos continue."),
    video: Path = typer.Option(None, help="Video2World: the video whose last --num-input-frames frames the videos continue."),
    num_input_frames: int = typer.Option(1, help="Video2World: continue the last 1 or 9 frames of --video (official default 1)."),
    augment_sigma: float = typer.Option(0.001, help="Video2World: noise on the input frames (official 0.001)."),
    name: str = typer.Option(None, help="Output folder name under <outputs>/infer (default: the run and LoRA names, '-on-' the --dit's)."),
    nproc: int = typer.Option(None, help="Processes (one per GPU) (default: visible GPUs, 1 on CPU)."),
    gpus_per_video: int = typer.Option(
        None, help="Processes that make one video together (default: as many as keep every process busy: "
        "few videos get many GPUs each, many videos one each)."),
    cfg_parallel: bool = typer.Option(
        True, "--cfg-parallel/--no-cfg-parallel",
        help="With an even --gpus-per-video, the guidance's two branches on two halves of the video's GPUs."),
    save_latents: bool = typer.Option(False, "--save-latents", help="Also write seed_<k>.latents.safetensors (latents before decoding)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos that exist already."),
    attention: str = typer.Option("cudnn", help="cudnn (fused cuDNN attention on GPUs, fastest on Hopper) or default."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the DiT blocks on GPUs (faster steps)."),
    fp8: bool = typer.Option(False, "--fp8", help="FP8 matmuls for the DiT's attention/MLP (Hopper/Ada GPUs; faster, slightly different videos)."),
    offload: bool = typer.Option(False, "--offload", help="Small GPUs: only the current phase's model on the GPU."),
) -> None:
    """Generate every prompt x seed with the base model and/or the LoRAs, models loaded once.

    Writes <outputs>/infer/<name>/{original,lora,compare}/<prompt>/seed_<k>.mp4 with prompt.txt and
    seed_<k>.json (the DiT checkpoint and every adapter, with their hashes) beside them, and index.html
    showing every comparison.
    """
    from cosmos_lora.cli.lora_option import parse_weighted
    from cosmos_lora.distributed import Launch, default_nproc, external_launch, launch
    from cosmos_lora.infer.plan import save_plan
    from cosmos_lora.infer.prompts import STAGES, plan_jobs, read_prompts
    from cosmos_lora.infer.settings import InferSettings, StackedLora, check_model, check_settings, job_done, video_tokens
    from cosmos_lora.model.parallel import choose_layout
    from cosmos_lora.model import lora_formats
    from cosmos_lora.model.checkpoint import locate_dit
    from cosmos_lora.model.sizes import size_name

    _check_options(stages, run, dit, step, model, num_videos, seed, nproc, name, gpus_per_video)
    input_kind, input_file = _video2world_input(image, video, num_input_frames)
    roots = ctx.obj
    weighted = [parse_weighted(item, "--lora") for item in lora or []]
    dit_file = locate_dit(dit, roots.checkpoints) if dit else None
    config, adapters = _model_and_adapters(roots, run, step, ema, model, dit_file, weighted, lora_scale)
    m = config.model
    height, width = resolution or m.resolution
    settings = InferSettings(
        out_dir=roots.outputs / "infer" / (name or _default_name(run, [path for path, _ in weighted], dit_file)),
        dit=dit_file or roots.checkpoints / m.dit,
        tokenizer=roots.checkpoints / m.tokenizer, text_encoder=roots.checkpoints / m.text_encoder,
        pixel_chunk_duration=m.pixel_chunk_duration, stages=stages, steps=steps, guidance=guidance, fps=fps,
        height=height, width=width, frames=frames or m.num_frames, precision=m.precision, overwrite=overwrite,
        attention_backend=attention, compile=compile, fp8=fp8, offload=offload,
        adapters=[
            StackedLora(a.source, weight, 1.0 if a.scale_origin == lora_formats.STATED else None) for a, weight in adapters
        ],
        lora_scale=1.0 if lora_scale is None else lora_scale, cfg_parallel=cfg_parallel, save_latents=save_latents,
        input_file=input_file, input_kind=input_kind, num_input_frames=num_input_frames, augment_sigma=augment_sigma,
    )
    check_settings(settings)
    prompts = read_prompts(prompt or [], prompts_file, negative_prompt)
    size = check_model(settings, [a for a, _ in adapters])  # nothing is written before this passes
    processes = external.world_size if (external := external_launch()) else nproc or default_nproc()
    todo = [job for job in plan_jobs(prompts, num_videos, seed) if overwrite or not job_done(settings, job)]
    layout = choose_layout(processes, len(todo), size.num_attention_heads, video_tokens(settings), gpus_per_video, cfg_parallel)
    settings.gpus_per_video = layout.per_video
    if layout.per_video > 1:
        note(layout.describe())
    note(f"DiT: {settings.dit} ({size_name(size) or 'a size of its own'})")
    for adapter, weight in adapters if "lora" in STAGES[stages] else []:
        note(f"LoRA x {weight:g}: {adapter.summary()}; scale from {adapter.scale_origin}")
        if adapter.format == "official":
            note("  official checkpoints do not store the LoRA scale: 1 is assumed (official LoRA inference applies 1); "
                 "the weight and --lora-scale multiply it.")
    plan = save_plan(settings, prompts, num_videos, seed)
    outcome = launch("cosmos_lora.infer.run", [str(plan)], Launch(processes))
    outcome.raise_unless_finished("every video was made", "rerun the same command: finished videos are kept.")
    result(str(settings.out_dir))


def _video2world_input(image: Path | None, video: Path | None, num_input_frames: int) -> tuple[str | None, Path | None]:
    """(kind, path) of the input a Video2World model continues, or (None, None)."""
    from cosmos_lora.infer.video_input import check_request

    if image is not None and video is not None:
        raise UserError("--image and --video both give the input.", "give only one of them.")
    kind, path = ("image", image) if image is not None else ("video", video) if video is not None else (None, None)
    if kind is None:
        if num_input_frames != 1:
            raise UserError("--num-input-frames picks frames of --video.", "add --video FILE, or drop --num-input-frames.")
        return None, None
    check_request(kind, num_input_frames)
    return kind, path


def _check_options(stages, run, dit, step, model, num_videos, seed, nproc, name, gpus_per_video) -> None:
    """Option combinations, before anything is read."""
    from cosmos_lora.infer.prompts import STAGES

    if stages not in STAGES:
        raise UserError(f"Unknown --stages {stages!r}.", "use original, lora or both.")
    if dit and model:
        raise UserError("--dit names the checkpoint (its size picks the rest), --model a preset's.", "give only one of them.")
    if step is not None and not run:
        raise UserError("--step picks one of a run's adapters.", "use it with --run NAME.")
    if run and model:
        raise UserError("--run sets the model (the one it was trained on).", "drop --model.")
    if model is not None and model not in MODEL_PRESETS:
        raise UserError(f"Unknown --model {model!r}.", f"use one of {', '.join(MODEL_PRESETS)}.")
    for option, value in (("--num-videos", num_videos), ("--nproc", nproc), ("--gpus-per-video", gpus_per_video)):
        if value is None:
            continue
        if value < 1:
            raise UserError(f"{option} {value} is less than 1.", f"use {option} 1 or more.")
    if seed < 0:
        raise UserError(f"--seed {seed} is negative.", "use a seed >= 0.")
    if name is not None and (Path(name).name != name or name in (".", "..")):
        raise UserError(f"--name {name!r} is not a folder name.", "give a name without '/' (it goes under <outputs>/infer).")


def _model_and_adapters(roots, run, step, ema, model, dit_file, weighted, lora_scale) -> tuple:
    """The model config (the run's; else --model's, or the preset for the --dit's size) and every adapter
    of the LoRA stage with the weight it goes in with (the run's at 1, then each --lora)."""
    from cosmos_lora.config import load_preset
    from cosmos_lora.infer.adapters import from_run
    from cosmos_lora.infer.settings import read_dit
    from cosmos_lora.model.adapter_files import from_file
    from cosmos_lora.model.sizes import size_name
    from cosmos_lora.run_folder import RunFolder

    adapters = []
    if run:
        run_folder = RunFolder.resolve(run, roots.runs)
        adapters.append((from_run(run_folder, step, ema), 1.0))
        config = load_preset(run_folder.config_file)
    else:
        config = load_preset(MODEL_PRESETS[model or (_preset_of(size_name(read_dit(dit_file)[1])) if dit_file else "7b")])
    for path, weight in weighted:
        # a file that records no scale is taken at 1 x WEIGHT x --lora-scale only when one of them is given
        stated = weight is not None or lora_scale is not None
        adapters.append((from_file(path, 1.0 if stated else None), 1.0 if weight is None else weight))
    return config, adapters


def _preset_of(size: str | None) -> str:
    """The model preset (tokenizer, text encoder, video size) for a DiT of a known size; the 7B's otherwise."""
    return {"14b": "14b", "tiny": "tiny", "tiny14b": "tiny", "7b-v2w": "7b-v2w", "tiny-v2w": "tiny-v2w"}.get(size, "7b")


def _default_name(run: str | None, loras: list[Path], dit: Path | None) -> str:
    """'<run>+<lora>-on-<dit>': what the videos come from; a checkpoint called model.pt is named by its folder."""
    adapters = "+".join(([Path(run).name] if run else []) + [path.stem for path in loras])
    checkpoint = (dit.parent.name if dit.name == "model.pt" else dit.stem) if dit else ""
    return "-on-".join(part for part in (adapters, checkpoint) if part) or "base"


def register(app: typer.Typer) -> None:
    app.command(epilog=examples(
        'cosmos-lora infer --run vript-sports_r16_iter1000_bs1_accum4_scale2_lr1e-04_seed0 --prompt "A surfer rides a wave" --stages both',
        "cosmos-lora infer --run <run> --prompts-file prompts.txt --num-videos 4 --step 500 --no-ema",
        "cosmos-lora infer --lora iter_000001000_model.pt --lora-scale 1.5 --prompts-file prompts.jsonl --stages lora",
        'cosmos-lora infer --lora sports.safetensors --lora night.safetensors:0.5 --prompt "A surfer rides a wave"   # stacked',
        'cosmos-lora infer --dit Cosmos-Predict1-7B-Text2World_post-trained --stages original --prompt "A surfer rides a wave"',
        'cosmos-lora infer --run <run> --dit merged/model.pt --prompt "A surfer rides a wave"   # the run\'s LoRA on another base',
        'cosmos-lora infer --model 14b --stages original --prompt "A surfer rides a wave"',
        'cosmos-lora infer --model tiny --stages original --prompt "a red square" --steps 5',
        'cosmos-lora infer --model 7b-v2w --image first_frame.jpg --stages original --prompt "The robot arm opens the drawer"',
        'cosmos-lora infer --run <v2w-run> --video clip.mp4 --num-input-frames 9 --prompt "The car turns left" --stages both',
        'cosmos-lora infer --run <run> --prompt "A surfer rides a wave" --nproc 8   # one video on all 8 GPUs',
    ))(guarded(infer))
