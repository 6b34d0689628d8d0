"""Training metrics: `metrics.csv`, TensorBoard events, and what the user sees (rank 0 only).

On a terminal a rich progress bar shows step/total, smoothed loss, lr, s/step, ETA and GPU
memory; otherwise (logs, CI, `nohup`) one plain line per logged step. Diffusion losses fall
slowly and the official uncertainty term makes them negative at times: both are normal.

An evaluation (`train.evaluation`) is a row of its own, with only `step` and the `eval_*` columns
filled (TensorBoard: `eval/...`), and one line comparing it with the first one, the base model's.
"""

import csv
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cosmos_lora.run_folder import RunFolder

COLUMNS = ["step", "loss", "loss_smoothed", "lr", "grad_norm", "s_per_step", "samples_per_s", "gpu_mem_gb"]


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool, eval_columns: list[str] = ()):
        self.enabled = enabled
        self.smoothed: float | None = None
        self.columns = COLUMNS + list(eval_columns)
        self.evaluated: dict[int, float] = {}  # step -> eval_loss of the rows kept
        if not enabled:
            return
        run = RunFolder(run_dir)
        self.csv_path = run.metrics_file
        self._truncate_after(start_step)
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run.tensorboard_dir), purge_step=start_step + 1)
        self.console = Console(stderr=True)
        self.progress = None
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]posttrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, status="")
            self.progress.start()
        self.total_steps = total_steps

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the rows it will log again and smooths on from the last one kept."""
        rows = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        smoothed = [r["loss_smoothed"] for r in rows if r.get("loss_smoothed")]
        if smoothed:
            self.smoothed = float(smoothed[-1])
        self.evaluated = {int(r["step"]): float(r["eval_loss"]) for r in rows if r.get("eval_loss")}
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.smoothed = values["loss"] if self.smoothed is None else 0.9 * self.smoothed + 0.1 * values["loss"]
        row = {"step": step, "loss_smoothed": self.smoothed, **values}
        self._append(row)
        for key, value in row.items():
            if key != "step" and value is not None:
                self.tensorboard.add_scalar(f"train/{key}", value, step)
        status = (
            f"loss {self.smoothed:.4f}  lr {values['lr']:.2e}  {values['s_per_step']:.2f} s/step"
            + (f"  {values['gpu_mem_gb']:.1f} GB" if values.get("gpu_mem_gb") else "")
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=status)
        else:
            print(f"step {step}/{self.total_steps}  {status}", file=sys.stderr, flush=True)

    def log_evaluation(self, step: int, values: dict[str, float], seconds: float) -> None:
        """An evaluation row, and a line comparing it with the base model's (the first evaluation)."""
        if not self.enabled:
            return
        self._append({"step": step, **values, "s_per_eval": seconds})
        for key, value in values.items():
            self.tensorboard.add_scalar(f"eval/{key.removeprefix('eval_')}", value, step)
        self.tensorboard.add_scalar("eval/seconds", seconds, step)
        self.evaluated[step] = values["eval_loss"]
        base_step = min(self.evaluated)
        line = f"step {step}: eval loss {values['eval_loss']:.5f}"
        if step != base_step:
            change = values["eval_loss"] - self.evaluated[base_step]
            line += f" ({change:+.5f} vs the base model's {self.evaluated[base_step]:.5f} at step {base_step})"
        if "eval_loss_ema" in values:
            line += f", EMA {values['eval_loss_ema']:.5f}"
        self.message(f"{line} ({seconds:.1f} s)")

    def has_evaluation(self, step: int) -> bool:
        return step in self.evaluated

    def _append(self, row: dict) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _fmt(row.get(k), exact=k.startswith("eval_"))
                                                                 for k in self.columns})

    def message(self, text: str) -> None:
        if self.enabled:
            (self.console.print(text) if self.progress is None else self.progress.console.print(text))

    def close(self) -> None:
        if self.enabled:
            if self.progress is not None:
                self.progress.stop()
            self.tensorboard.close()


def _fmt(value, exact: bool = False) -> str:
    """6 significant digits; `exact`: every digit (the eval loss is deterministic: reruns compare bit for bit)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.6g}"
    return str(value)
