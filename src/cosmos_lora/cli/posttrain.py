"""`cosmos-lora posttrain`: build the experiment, check the inputs, launch torchrun.

Under `srun` (several tasks) or an existing `torchrun`, every task runs this command and trains
in its own process; task 0 checks the inputs and writes the run folder.
"""

from pathlib import Path

import typer

from cosmos_lora.cli.output import examples, guarded, note, result

MODEL_PRESETS = {
    "7b": "text2world_7b_lora", "14b": "text2world_14b_lora", "tiny": "tiny_lora",
    "7b-v2w": "video2world_7b_lora", "tiny-v2w": "tiny_v2w_lora",  # Video2World: continues an image or 9 frames
}


def posttrain(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset COLLECTION/DOMAIN inside the datasets root."),
    config: str = typer.Option(None, help="Preset name or config file (.py, or a run's config.yaml)."),
    model: str = typer.Option("7b", help="7b, 14b, tiny, 7b-v2w or tiny-v2w (Video2World): picks the preset when --config is not given."),
    rank: int = typer.Option(None, help="LoRA rank (preset: 8)."),
    scale: float = typer.Option(None, help="LoRA multiplier, official semantics: delta = scale * up(down(x)) (preset: 1)."),
    alpha: float = typer.Option(None, help="Alternative to --scale in peft terms: scale = alpha / rank."),
    extra_targets: list[str] = typer.Option(None, "--target", help="Extra LoRA targets besides q/v: k, out, mlp (repeatable)."),
    first_blocks: int = typer.Option(None, help="LoRA on the first N blocks only (default: all)."),
    lr: float = typer.Option(None, help="Learning rate (preset: 1e-4)."),
    max_iter: int = typer.Option(None, help="Optimizer steps (not micro-batches)."),
    epochs: float = typer.Option(None, help="Alternative to --max-iter: passes over the dataset."),
    batch_size: int = typer.Option(None, help="Clips per GPU per micro-step (preset: 1)."),
    grad_accum: int = typer.Option(None, help="Micro-steps per optimizer step (preset: 1)."),
    seed: int = typer.Option(None, help="Seed for LoRA init, data order and noise (preset: 0)."),
    save_every: int = typer.Option(None, help="Save adapters and state every N steps (preset: 100)."),
    validate_every: int = typer.Option(
        None, help="Write sample videos of the LoRA every N steps to <run>/samples/ (preset: 0, off)."
    ),
    validation_prompts: Path = typer.Option(
        None, help="Prompts for the samples: a .txt file, one per line (preset: trainer.validation.prompts)."
    ),
    eval_every: int = typer.Option(
        None, help="Eval loss on held-out clips every N steps, at step 0 (the base model) and at the end (preset: 200; tiny 10; 0: off)."
    ),
    eval_fraction: float = typer.Option(
        None, help="Share of the clips held out of training for the eval loss, chosen by clip name (preset: 0.05, at least 2 clips; 0: none)."
    ),
    eval_dataset: str = typer.Option(None, help="Compute the eval loss on this dataset COLLECTION/DOMAIN instead (nothing held out)."),
    name: str = typer.Option(None, help="Run name (default: derived from the hyper-parameters)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest saved state."),
    nproc: int = typer.Option(None, help="Processes per node (default: visible GPUs, 1 on CPU)."),
    nnodes: int = typer.Option(1, help="Nodes (multi-node needs --node-rank and --rdzv-endpoint)."),
    node_rank: int = typer.Option(0, help="This node's index."),
    rdzv_endpoint: str = typer.Option(None, help="host:port of the rendezvous (node 0)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and torchrun command; start nothing."),
) -> None:
    """Train a LoRA on a dataset with the official recipe, on every GPU of this machine (DDP).

    Anything in the config can be changed after `--`: `-- trainer.max_iter=200 optimizer.lr=5e-5`.
    The run folder holds config.yaml (rerun with --config), adapters/, state/, metrics.csv, samples/.
    The eval loss (metrics.csv's eval_* rows) compares steps and runs: `cosmos-lora runs compare`.
    Under `srun` with several tasks or under `torchrun`, each task trains in its own process.
    """
    from cosmos_lora.config.build import build_experiment
    from cosmos_lora.config.experiment import to_yaml
    from cosmos_lora.config.settings import OPTION_KEYS
    from cosmos_lora.distributed import Launch, adopt_slurm_environment, default_nproc, external_launch
    from cosmos_lora.errors import Problems, UserError
    from cosmos_lora.run_folder import RunFolder
    from cosmos_lora.train import launch as launcher
    from cosmos_lora.train.checks import check_inputs, check_launch, read_validation_prompts

    if model not in MODEL_PRESETS:
        raise UserError(f"Unknown --model {model!r}.", f"use one of {', '.join(MODEL_PRESETS)}.")
    problems = Problems()  # every mistake in this command, reported together
    if scale is not None and alpha is not None:
        problems.add("--scale and --alpha set the same thing.", "give only one of them.")
    if max_iter is not None and epochs is not None:
        problems.add("--max-iter and --epochs both set the training length.", "give only one of them.")
    if eval_fraction is not None and eval_dataset is not None:
        problems.add("--eval-fraction and --eval-dataset both choose the eval clips.", "give only one of them.")
    if nnodes > 1 and not rdzv_endpoint:
        problems.add("Multi-node training needs a rendezvous address.", "pass --rdzv-endpoint HOST:PORT (node 0).")
    check_launch(nproc, nnodes, node_rank, problems)
    values = {"rank": rank, "scale": scale, "first_blocks": first_blocks, "lr": lr, "max_iter": max_iter, "epochs": epochs,
              "batch_size": batch_size, "grad_accum": grad_accum, "seed": seed, "save_every": save_every,
              "validate_every": validate_every, "eval_every": eval_every, "eval_fraction": eval_fraction,
              "eval_dataset": eval_dataset}
    options = {OPTION_KEYS[k]: v for k, v in values.items() if v is not None}
    if extra_targets:
        options["model.lora.extra_targets"] = list(extra_targets)
    if validation_prompts is not None:
        with problems.check():
            options["trainer.validation.prompts"] = read_validation_prompts(validation_prompts)
    adopt_slurm_environment()
    launched = external_launch()  # srun or torchrun started this process: it is one of the workers
    processes = nproc if nproc is not None and nproc > 0 else default_nproc()
    shape = Launch(launched.world_size) if launched else Launch(processes, max(nnodes, 1), node_rank, rdzv_endpoint)
    experiment = build_experiment(config or MODEL_PRESETS[model], ctx.obj, dataset, options, list(ctx.args), name, shape,
                                  alpha, problems)
    if validation_prompts is not None and not experiment.trainer.validate_every:
        problems.add("--validation-prompts has no effect without validation.", "add --validate-every N.")
    if dry_run:  # the same checks as a launch, all of them, and nothing written
        if not problems:  # a valid config is shown even when the machine or data checks below find problems
            result(to_yaml(experiment))
        check_inputs(experiment, resume, shape, problems)
        result(launcher.describe_command(RunFolder(Path(experiment.job.run_dir)), shape))
        return
    run, message, outcome = launcher.posttrain(experiment, shape, resume, launched, announce=note, problems=problems)
    if message is None:  # another task of srun/torchrun: task 0 reports for all
        raise typer.Exit(outcome.code)
    note(message)
    result(str(run.path))


def register(app: typer.Typer) -> None:
    app.command(
        context_settings={"allow_extra_args": True},
        epilog=examples(
            "cosmos-lora posttrain --dataset vript/sports --rank 16 --scale 2 --lr 1e-4 --grad-accum 4 --epochs 3",
            "cosmos-lora posttrain --dataset vript/sports --dry-run -- trainer.max_iter=200 model.activation_checkpointing=0.5",
            "cosmos-lora posttrain --config outputs/runs/<run>/config.yaml --resume",
            "cosmos-lora posttrain --model 14b --dataset vript/sports --grad-accum 4 --dry-run",
            "cosmos-lora posttrain --model tiny --dataset demo/shapes --nproc 2",
            "cosmos-lora posttrain --dataset vript/sports --validate-every 200 --validation-prompts prompts.txt",
            "cosmos-lora posttrain --dataset vript/sports --eval-every 100 --eval-fraction 0.1",
            "cosmos-lora posttrain --dataset vript/sports --eval-dataset vript/sports-heldout",
            "srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 cosmos-lora posttrain --dataset vript/sports",
        ),
    )(guarded(posttrain))
