"""`cosmos-lora runs`: the runs under <outputs>/runs, one line each; `runs show NAME` for one run."""

from pathlib import Path

import typer

from cosmos_lora.cli.flags import Cli
from cosmos_lora.cli.output import examples, guarded, note, result, result_json

runs_app = Cli(help="List runs (state, progress, loss, size); `runs show NAME` for one run.", no_args_is_help=False)
COLUMNS = ("NAME", "DATASET", "RANK", "SCALE", "LR", "STEPS", "LOSS", "STATE", "SIZE")


def runs(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="One JSON object for scripts.")) -> None:
    """One line per run: dataset, rank/scale/lr, steps done/total, smoothed loss, state, size on disk.

    A run whose status says running but that wrote nothing for a long time, with no trainer process
    on this machine, is shown as stale (it was probably killed).
    """
    if ctx.invoked_subcommand is not None:
        return
    from cosmos_lora.train.runs import list_runs

    runs_dir = ctx.obj.runs
    summaries = list_runs(runs_dir)
    if json_:
        result_json({"runs_dir": str(runs_dir), "runs": [s.to_dict() for s in summaries]})
        return
    if not summaries:
        note(f"No runs in {runs_dir}. Start one with `cosmos-lora posttrain`.")
        return
    table = [COLUMNS] + [_row(s) for s in summaries]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        result("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for s in summaries:
        if s.state in ("stale", "failed", "unreadable") and s.message:
            note(f"{s.name}: {s.message}")


def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Run name (in <outputs>/runs) or folder."),
    plot: Path = typer.Option(None, help="Also write the loss curve to this PNG."),
    json_: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
) -> None:
    """The run's resolved config, its state and a summary of its metrics."""
    from omegaconf import OmegaConf

    from cosmos_lora.run_folder import RunFolder
    from cosmos_lora.train.runs import metrics_summary, read_metrics, summarize, write_loss_plot

    run = RunFolder.resolve(name, ctx.obj.runs)
    summary, rows = summarize(run.path), read_metrics(run.path)
    metrics = metrics_summary(rows, summary.steps_total, summary.state)
    if plot is not None:
        write_loss_plot(rows, plot, summary.name)
        note(f"Loss curve: {plot}")
    if json_:
        config = OmegaConf.to_container(OmegaConf.load(run.config_file))
        result_json({"run": summary.to_dict(), "metrics": metrics, "config": config})
        return
    result(run.config_file.read_text().rstrip())
    result("")
    result(f"run       {summary.path}")
    result(f"state     {summary.state}" + (f" ({summary.message})" if summary.message else ""))
    result(f"steps     {summary.steps_done}/{summary.steps_total}, latest save {summary.latest_save}, {_size(summary.size_bytes)}")
    for key, value in metrics.items():
        if value is not None:
            result(f"{key:<20}{_number(value)}")


def _row(s) -> tuple[str, ...]:
    return (
        s.name, s.dataset or "-", "-" if s.rank is None else str(s.rank), "-" if s.scale is None else f"{s.scale:g}",
        "-" if s.lr is None else f"{s.lr:.3g}", f"{s.steps_done}/{'?' if s.steps_total is None else s.steps_total}",
        f"{s.loss_smoothed:.4f}" if s.loss_smoothed is not None else "-", s.state, _size(s.size_bytes),
    )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    runs_app.callback(invoke_without_command=True, epilog=examples(
        "cosmos-lora runs", "cosmos-lora runs --json | jq '.runs[] | select(.state == \"running\")'",
    ))(guarded(runs))
    runs_app.command(epilog=examples(
        "cosmos-lora runs show <run>", "cosmos-lora runs show <run> --plot loss.png", "cosmos-lora runs show <run> --json",
    ))(guarded(show))
    app.add_typer(runs_app, name="runs")
