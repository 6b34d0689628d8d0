"""What `cosmos-lora runs` reports: each run folder summarised from the files the trainer writes.

    config.yaml    dataset, rank, scale, lr, total steps        (the resolved experiment)
    status.json    running | finished | interrupted | failed    (rank 0 writes it at start and end)
    metrics.csv    step, loss, loss_smoothed, lr, s_per_step...  (one row per logged step)
                   step, eval_loss, eval_loss_ema, eval_loss[_ema]_sigma_*  (one row per evaluation; step 0: the base model)
    latest.json    the newest complete save

A run killed without warning (SIGKILL, the OOM killer, a lost node) leaves status.json at "running"
for ever. It is shown as "stale" when no trainer process for it runs on this machine and the run has
written nothing for STALE_AFTER_S or five logging intervals, whichever is longer. A run never started
(config only) is "new".
"""

import csv
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cosmos_lora.errors import UserError
from cosmos_lora.files import publishing
from cosmos_lora.run_folder import CONFIG, RunFolder

STALE_AFTER_S = 30 * 60  # a 7B step is ~20 s and rows come every log_every steps; saves take seconds
WORKER_MODULE = "cosmos_lora.train.worker"


@dataclass
class RunSummary:
    name: str
    path: str
    dataset: str | None
    rank: int | None
    scale: float | None
    lr: float | None
    steps_done: int
    steps_total: int | None
    loss_smoothed: float | None  # last logged, 0.9-EMA of the loss
    state: str  # new, running, stale, finished, interrupted, failed (unreadable: a damaged folder)
    size_bytes: int
    last_write: str | None  # ISO time of the newest config/status/metrics/save write
    quiet_s: float | None  # seconds since then
    latest_save: int | None
    message: str | None  # why it failed, or why it is stale
    eval_best_step: int | None = None  # the step of the lowest eval loss (the held-out clips' official loss)
    eval_best: float | None = None
    eval_base: float | None = None  # at step 0: the base model (the LoRA starts as a no-op)
    eval_improvement_pct: float | None = None  # 100 * (base - best) / |base|: > 0 when the LoRA does better

    def to_dict(self) -> dict:
        return asdict(self)


def list_runs(runs_dir: Path, now: float | None = None) -> list[RunSummary]:
    """Every folder of `runs_dir` holding a config.yaml, newest activity first."""
    alive = _trainer_configs()
    summaries = [_summarize_or_report(run.path, now, alive) for run in RunFolder.all_in(runs_dir)]
    return sorted(summaries, key=lambda s: s.last_write or "", reverse=True)


def _summarize_or_report(run_dir: Path, now: float | None, alive: set[Path]) -> RunSummary:
    """One damaged run folder (a hand-edited config, a truncated JSON) must not hide the others."""
    try:
        return summarize(run_dir, now, alive)
    except Exception as error:  # noqa: BLE001 - reported in the listing instead
        return RunSummary(run_dir.name, str(run_dir), None, None, None, None, 0, None, None, "unreadable",
                          disk_usage(run_dir), None, None, None, " ".join(f"{type(error).__name__}: {error}".split()))


def summarize(run_dir: Path, now: float | None = None, alive: set[Path] | None = None) -> RunSummary:
    run = RunFolder(run_dir)
    now = time.time() if now is None else now
    config = _read_config(run.config_file)
    rows = read_metrics(run.path)
    status, latest = run.read_status() or {}, run.read_latest() or {}
    last = max((p.stat().st_mtime for p in _activity_files(run)), default=None)
    trained = training_rows(rows)
    steps_done = max([status.get("step", 0), latest.get("step", 0)] + [r["step"] for r in rows[-1:]])
    state, message = status.get("state", "new"), status.get("message")
    if state == "running" and last is not None:
        alive = _trainer_configs() if alive is None else alive
        limit = max(STALE_AFTER_S, 5 * _log_interval_s(config, rows))
        if run.config_file.resolve() not in alive and now - last > limit:
            state = "stale"
            message = (f"status.json says running, but nothing was written for {_duration(now - last)} and no trainer "
                       "process for it runs on this machine: it was probably killed. Resume it with "
                       f"`cosmos-lora posttrain --config {run.config_file} --resume`.")
    return RunSummary(
        name=run.name, path=str(run.path), dataset=_field(config, "job.dataset"),
        rank=_field(config, "model.lora.rank", int), scale=_field(config, "model.lora.scale", float),
        lr=_field(config, "optimizer.lr", float), steps_done=steps_done,
        steps_total=_field(config, "trainer.max_iter", int),
        loss_smoothed=trained[-1]["loss_smoothed"] if trained else None, state=state, size_bytes=disk_usage(run.path),
        last_write=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last)) if last else None,
        quiet_s=round(now - last, 1) if last else None, latest_save=latest.get("step"), message=message,
        **eval_summary(rows),
    )


def training_rows(rows: list[dict]) -> list[dict]:
    """The rows of logged training steps (not evaluations)."""
    return [r for r in rows if r.get("loss") is not None]


def evaluation_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("eval_loss") is not None]


def eval_summary(rows: list[dict]) -> dict:
    """The best evaluation and how it compares with the first one (step 0: the base model); {} without any."""
    evaluations = evaluation_rows(rows)
    if not evaluations:
        return {}
    base, best = evaluations[0], min(evaluations, key=lambda r: r["eval_loss"])  # the earliest of equal ones
    change = base["eval_loss"] - best["eval_loss"]
    return {"eval_best_step": best["step"], "eval_best": best["eval_loss"], "eval_base": base["eval_loss"],
            "eval_improvement_pct": 100 * change / abs(base["eval_loss"]) if base["eval_loss"] else None}


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv rows as numbers (empty cells -> None)."""
    path = RunFolder(run_dir).metrics_file
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) if v not in ("", None) else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def metrics_summary(rows: list[dict], steps_total: int | None, state: str) -> dict:
    """What `runs show` prints under the config: loss so far, speed and time left, the best evaluation."""
    evaluations = eval_summary(rows)
    rows = training_rows(rows)
    if not rows:
        return {"logged_rows": 0}
    s_per_step = _recent_s_per_step(rows)
    last = rows[-1]
    summary = {
        "logged_rows": len(rows), "first_step": rows[0]["step"], "last_step": last["step"],
        "loss_smoothed_first": rows[0]["loss_smoothed"], "loss_smoothed_last": last["loss_smoothed"],
        "loss_smoothed_min": min(r["loss_smoothed"] for r in rows), "loss_last": last["loss"],
        "lr": last.get("lr"), "grad_norm": last.get("grad_norm"), "s_per_step": s_per_step,
        "samples_per_s": last.get("samples_per_s"), "gpu_mem_gb": last.get("gpu_mem_gb"),
    }
    if state == "running" and steps_total and s_per_step:
        summary["eta_s"] = round((steps_total - last["step"]) * s_per_step)
    return summary | evaluations


def disk_usage(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while we walk (a save pruning an old state)
                pass
    return total


def _activity_files(run: RunFolder) -> list[Path]:
    files = [run.config_file, run.status_file, run.metrics_file, run.latest_file]
    files += list(run.tensorboard_dir.glob("events.*"))
    return [p for p in files if p.is_file()]


def _recent_s_per_step(rows: list[dict]) -> float | None:
    speeds = [r["s_per_step"] for r in rows[-20:] if r.get("s_per_step") is not None]
    return statistics.median(speeds) if speeds else None


def _log_interval_s(config, rows: list[dict]) -> float:
    """Seconds between metrics rows, from the logged s/step (0 before the first row)."""
    return (_field(config, "trainer.log_every", int) or 1) * (_recent_s_per_step(rows) or 0.0)


def _read_config(path: Path) -> dict:
    """config.yaml as plain data. Not OmegaConf.load: building its node tree costs ten times the parse,
    which a listing of many runs pays once per run; the file is resolved, so there is nothing to interpolate."""
    with open(path, encoding="utf-8") as f:
        config = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(config, dict):
        raise ValueError(f"{path.name} is not a mapping of sections")
    return config


def _field(config: dict, dotted: str, kind: type | None = None):
    """config["a"]["b"] for "a.b", or None where a section or key is missing; `kind` converts a
    hand-edited "1e-4" (YAML reads it as text, OmegaConf as a number) the way OmegaConf would."""
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return kind(value) if kind is not None and value is not None else value


def _trainer_configs() -> set[Path]:
    """config.yaml paths of the trainer processes running on this machine (empty where /proc is not readable)."""
    found = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if not any(WORKER_MODULE in a for a in args):
                continue
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:  # gone meanwhile, or another user's
            continue
        found.update((cwd / a).resolve() for a in args if a.endswith(CONFIG))
    return found


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def write_loss_plot(rows: list[dict], path: Path, title: str) -> None:
    """The loss curve as a PNG (raw loss light, smoothed dark), drawn with PIL; written atomically."""
    rows = training_rows(rows)
    if len(rows) < 2:
        raise UserError(f"{title} has {len(rows)} logged step(s): too few for a curve.", "plot again after a few more logging intervals.")
    write_line_plot([
        Series("loss", (158, 202, 225), [(r["step"], r["loss"]) for r in rows if r["loss"] is not None], width=1),
        Series("loss_smoothed", (8, 81, 156),
               [(r["step"], r["loss_smoothed"]) for r in rows if r["loss_smoothed"] is not None]),
    ], path, f"{title}: loss (light) and smoothed loss (dark)", legend=False)


@dataclass
class Series:
    label: str
    colour: tuple[int, int, int]
    points: list[tuple[float, float]]  # (step, value)
    width: int = 2
    mark: tuple[float, float] | None = None  # a point circled on the curve (the best step)


def write_line_plot(series: list[Series], path: Path, title: str, legend: bool = True) -> None:
    """Curves over steps as a PNG drawn with PIL (no plotting library needed); written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 900, 500, 80, 20, 40, 50
    steps = [step for s in series for step, _ in s.points]
    values = [value for s in series for _, value in s.points]
    first, last = min(steps), max(steps)
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - first) / max(last - first, 1) * (width - left - right),
                top + (hi - value) / (hi - lo) * (height - top - bottom))

    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i in range(6):  # grid and tick labels
        value, step = lo + (hi - lo) * i / 5, first + (last - first) * i / 5
        draw.line([(left, xy(first, value)[1]), (width - right, xy(first, value)[1])], fill=(230, 230, 230))
        draw.text((5, xy(first, value)[1] - 6), f"{value:.4g}", fill="black", font=font)
        draw.text((xy(step, lo)[0] - 10, height - bottom + 8), f"{step:.0f}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for index, s in enumerate(series):
        draw.line([xy(*point) for point in s.points], fill=s.colour, width=s.width)
        if s.mark is not None:
            x, y = xy(*s.mark)
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=s.colour, width=2)
        if legend:
            draw.line([(width - right - 230, top + 12 + 14 * index), (width - right - 210, top + 12 + 14 * index)],
                      fill=s.colour, width=3)
            draw.text((width - right - 205, top + 6 + 14 * index), s.label[:34], fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text((width // 2 - 12, height - 20), "step", fill="black", font=font)
    with publishing(Path(path)) as tmp:
        image.save(tmp, format="PNG")
