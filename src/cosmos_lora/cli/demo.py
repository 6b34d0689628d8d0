"""`cosmos-lora demo`: the whole workflow on the tiny model, no downloads, minutes on a CPU.

Every step calls the function its real subcommand calls: tiny checkpoints in the official formats,
a synthetic captioned clip set in prepare's layout, T5 embeddings, a LoRA trained through a real
torchrun launch, and base-vs-LoRA videos with a side-by-side comparison. It ends with the LoRA's
eval loss on clips held out of training against the base model's on the same clips: the number that
says whether training did anything (the tiny videos are blocky colour fields either way). With `--v2w`
the model is the tiny Video2World one and the videos continue the first frame of a demo clip
(`infer --image`).
"""

import shutil

import typer

from cosmos_lora.cli.output import examples, guarded, note, result

DEMO_DATASET = "demo/shapes"
DEMO_RUN = "demo"
DEMO_RUN_V2W = "demo-v2w"
DEMO_CLIPS = 24
DEMO_EVAL_FRACTION = 0.15  # 4 of 24 clips
DEMO_PROMPTS = ["a red square moves from left to right on a dark blue background",
                "a yellow circle moves from top to bottom on a black background"]


def demo(
    ctx: typer.Context,
    clips: int = typer.Option(DEMO_CLIPS, help="Synthetic clips (DEMO_EVAL_FRACTION of them held out for the eval loss)."),
    max_iter: int = typer.Option(40, help="Optimizer steps."),
    nproc: int = typer.Option(None, help="Training processes (default: visible GPUs, else 2 CPU processes)."),
    v2w: bool = typer.Option(False, "--v2w", help="Video2World: train the tiny Video2World model; the videos continue an image."),
) -> None:
    """Run download-free: tiny model -> synthetic clips -> embed -> posttrain (torchrun) -> infer --stages both."""
    import torch

    from cosmos_lora.config import load_preset
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.data.embed import embed_dataset
    from cosmos_lora.data.layout import DatasetLayout
    from cosmos_lora.data.synthetic import make_synthetic_dataset
    from cosmos_lora.distributed import Launch, init_distributed, visible_gpus
    from cosmos_lora.infer.adapters import from_run
    from cosmos_lora.infer.plan import save_plan
    from cosmos_lora.infer.prompts import read_prompts
    from cosmos_lora.infer.run import run_plan
    from cosmos_lora.infer.settings import InferSettings, StackedLora
    from cosmos_lora.model.tiny import write_tiny_checkpoints
    from cosmos_lora.train.launch import posttrain
    from cosmos_lora.train.runs import evaluation_rows, read_metrics

    roots = ctx.obj
    note("1/5 tiny checkpoints (official formats) ...")
    paths = write_tiny_checkpoints(roots.checkpoints)

    note(f"2/5 synthetic clips -> {roots.dataset(DEMO_DATASET)} ...")
    preset, run_name = ("tiny_v2w_lora", DEMO_RUN_V2W) if v2w else ("tiny_lora", DEMO_RUN)
    config = load_preset(preset)
    height, width = config.model.resolution
    dataset_dir = roots.dataset(DEMO_DATASET)
    if len(DatasetLayout(dataset_dir).clips()) != clips:  # none yet, or made by a demo of another size
        shutil.rmtree(dataset_dir, ignore_errors=True)
        make_synthetic_dataset(dataset_dir, clips, config.model.num_frames, height, width, fps=24, seed=0)

    note("3/5 caption embeddings with the tiny T5 ...")
    embed_dataset(dataset_dir, paths["text_encoder"], torch.device("cpu"), torch.float32)

    processes = nproc or visible_gpus() or 2
    note(f"4/5 LoRA post-training: {max_iter} steps on {processes} process(es) through torchrun ...")
    shape = Launch(processes)
    options = {"trainer.max_iter": max_iter, "trainer.evaluation.fraction": DEMO_EVAL_FRACTION}
    experiment = build_experiment(preset, roots, DEMO_DATASET, options, [], run_name, shape)
    shutil.rmtree(experiment.job.run_dir, ignore_errors=True)  # the demo's own run, remade each time
    run, message, _ = posttrain(experiment, shape, resume_command="cosmos-lora demo")
    note(message)

    out_dir = roots.outputs / "infer" / run_name
    note(f"5/5 base vs LoRA videos -> {out_dir} ...")
    shutil.rmtree(out_dir, ignore_errors=True)
    given = {"input_file": _first_frame(dataset_dir, out_dir / "input.png"), "input_kind": "image"} if v2w else {}
    settings = InferSettings(
        out_dir=out_dir, dit=paths["dit_v2w" if v2w else "dit"], tokenizer=paths["tokenizer"],
        text_encoder=paths["text_encoder"], pixel_chunk_duration=config.model.pixel_chunk_duration, stages="both",
        height=height, width=width, frames=config.model.num_frames, precision=config.model.precision,
        adapters=[StackedLora(from_run(run).source)], **given,
    )
    plan = save_plan(settings, read_prompts(DEMO_PROMPTS, None, None), num_videos=1, seed=0)
    _, index = run_plan(plan, init_distributed())

    note("Done.")
    note(f"  dataset:     {dataset_dir}")
    note(f"  run:         {run.path}  (adapters/, metrics.csv, config.yaml)")
    note(f"  videos:      {out_dir}/original, {out_dir}/lora")
    note(f"  comparisons: {out_dir}/compare  (open {index} in a browser)")
    evaluations = evaluation_rows(read_metrics(run.path))
    if len(evaluations) >= 2:
        base, lora = evaluations[0], evaluations[-1]
        change = 100 * (lora["eval_loss"] - base["eval_loss"]) / abs(base["eval_loss"])
        note(f"  eval loss on {len(experiment.trainer.evaluation.clips)} held-out clips (lower is better): base model "
             f"{base['eval_loss']:.4f}, LoRA after {lora['step']} steps {lora['eval_loss']:.4f} ({change:+.1f}%)")
    result(str(out_dir))


def _first_frame(dataset_dir, path):
    """The first frame of the demo's first clip as a PNG: the image the Video2World videos continue."""
    from PIL import Image

    from cosmos_lora.data.video import read_video

    clip = sorted((dataset_dir / "videos").glob("*.mp4"))[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(read_video(clip, max_frames=1)[0][0]).save(path)
    return path


def register(app: typer.Typer) -> None:
    app.command(epilog=examples("cosmos-lora demo", "cosmos-lora demo --max-iter 100 --nproc 1", "cosmos-lora demo --v2w"))(guarded(demo))
