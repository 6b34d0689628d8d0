"""`cosmos-lora runs`: the runs under <outputs>/runs, one line each; `runs show NAME` for one run;
`runs compare RUN...` for their eval curves side by side."""

from pathlib import Path

import typer

from cosmos_lora.cli.flags import Cli
from cosmos_lora.cli.output import examples, guarded, note, result, result_json

runs_app = Cli(help="List runs (state, progress, loss, size); `runs show NAME` for one run.", no_args_is_help=False)
COLUMNS = ("NAME", "DATASET", "RANK", "SCALE", "LR", "STEPS", "LOSS", "BEST_EVAL", "VS_BASE", "STATE", "SIZE")


def runs(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="One JSON object for scripts.")) -> None:
    """One line per run: dataset, rank/scale/lr, steps done/total, smoothed loss, the step of the best eval
    loss and its change from the base model's (step 0; negative: the LoRA does better), state, size on disk.

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
        f"{s.loss_smoothed:.4f}" if s.loss_smoothed is not None else "-",
        "-" if s.eval_best_step is None else str(s.eval_best_step), _vs_base(s.eval_improvement_pct),
        s.state, _size(s.size_bytes),
    )


def _vs_base(improvement_pct: float | None) -> str:
    """The eval loss's change from the base model's, in percent (an improvement is a negative change)."""
    return "-" if improvement_pct is None else f"{-improvement_pct:+.1f}%"


def compare(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Runs (names in <outputs>/runs, or folders)."),
    plot: Path = typer.Option(None, help="Also draw the eval curves to this PNG."),
    json_: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
) -> None:
    """Eval loss curves of several runs side by side (* marks each run's best step), and the settings that differ."""
    from cosmos_lora.run_folder import RunFolder
    from cosmos_lora.train.comparison import compare_runs, write_comparison_plot

    comparison = compare_runs([RunFolder.resolve(name, ctx.obj.runs) for name in names])
    if plot is not None:
        write_comparison_plot(comparison, plot)
        note(f"Eval curves: {plot}")
    if not comparison["comparable"]:
        note("Note: these runs were evaluated on different clips or noise levels: their eval losses do not compare.")
    if json_:
        result_json(comparison)
        return
    entries = comparison["runs"]
    result("  ".join(["STEP".ljust(6)] + [e["name"].ljust(14) for e in entries]).rstrip())
    values = {(e["name"], p["step"]): p["eval_loss"] for e in entries for p in e["curve"]}
    for step in sorted({step for _, step in values}):
        cells = [_curve_cell(values.get((e["name"], step)), step == e["eval_best_step"]).ljust(14) for e in entries]
        result("  ".join([str(step).ljust(6)] + cells).rstrip())
    result("")
    for e in entries:
        result(f"{e['name']}: best step {e['eval_best_step']}, eval loss {e['eval_best']:.5f} "
               f"({_vs_base(e['eval_improvement_pct'])} vs the base model's {e['eval_base']:.5f})")
    for key, per_run in comparison["differing"].items():
        result(f"differs: {key}: " + " | ".join(_short(v) for v in per_run))
    if not comparison["differing"]:
        result("differs: nothing (the same settings)")


def _curve_cell(value: float | None, best: bool) -> str:
    return "-" if value is None else f"{value:.5f}" + ("*" if best else "")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    runs_app.command(epilog=examples(
        "cosmos-lora runs compare <run-a> <run-b>", "cosmos-lora runs compare <run-a> <run-b> --plot eval.png",
        "cosmos-lora runs compare <run-a> <run-b> --json",
    ))(guarded(compare))
    app.add_typer(runs_app, name="runs")
