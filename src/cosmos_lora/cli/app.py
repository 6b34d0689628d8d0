"""The `cosmos-lora` command: global options, then one subcommand per stage (each in its own module)."""

from pathlib import Path

import typer

from cosmos_lora.cli import demo, download, embed, export, infer, merge, posttrain, prepare, runs
from cosmos_lora.cli.flags import Cli
from cosmos_lora.cli.output import guarded
from cosmos_lora.paths import Roots
from cosmos_lora.quick_exit import exit_now
from cosmos_lora.torch_version import check_torch

app = Cli(
    name="cosmos-lora",
    help="LoRA post-training and inference for NVIDIA Cosmos-Predict1-7B-Text2World.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold tokens
    add_completion=False,
)


@app.callback()
@guarded
def roots(
    ctx: typer.Context,
    checkpoints_dir: Path = typer.Option(None, envvar="COSMOS_LORA_CHECKPOINTS", help="Model weights root (default: ./checkpoints)."),
    datasets_dir: Path = typer.Option(None, envvar="COSMOS_LORA_DATASETS", help="Datasets root (default: ./datasets)."),
    outputs_dir: Path = typer.Option(None, envvar="COSMOS_LORA_OUTPUTS", help="Runs and videos root (default: ./outputs)."),
) -> None:
    check_torch()  # before any command starts work it could not finish
    ctx.obj = Roots.from_env(checkpoints_dir, datasets_dir, outputs_dir)


for module in (download, prepare, embed, posttrain, infer, export, merge, runs, demo):
    module.register(app)


def main() -> None:
    """The console command (`cosmos-lora`, `python -m cosmos_lora`); tests call `app` itself."""
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code
    exit_now(code)  # the command is done, its files written: skip the interpreter's teardown of torch


if __name__ == "__main__":
    main()
