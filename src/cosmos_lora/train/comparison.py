"""`cosmos-lora runs compare`: several runs' evaluation curves side by side, and what sets the runs apart.

The eval losses of two runs compare only when they were computed on the same clips at the same noise
levels (the same dataset split and sigma settings); `compare` says so when they were not.
"""

from pathlib import Path

from omegaconf import OmegaConf

from cosmos_lora.config.experiment import changed_keys
from cosmos_lora.errors import UserError
from cosmos_lora.run_folder import RunFolder
from cosmos_lora.train.runs import Series, eval_summary, evaluation_rows, read_metrics, write_line_plot

# keys that differ between any two runs without making them different trainings: names and where files are
NOT_HYPER_PARAMETERS = (
    "job.name", "job.run_dir", "job.runs_dir", "model.checkpoints_dir", "dataloader_train.dataset.root",
    "dataloader_train.dataset.latents_dir", "trainer.evaluation.root", "trainer.evaluation.latents_dir",
    "trainer.log_every", "checkpoint.save_every", "checkpoint.keep_states", "dataloader_train.num_workers",
)
# the eval losses of runs that differ in these were measured on different clips or noise levels
EVALUATION_KEYS = ("trainer.evaluation.clips", "trainer.evaluation.sigmas", "trainer.evaluation.dataset",
                   "model.sigma_p_mean", "model.sigma_p_std", "job.dataset")
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def compare_runs(runs: list[RunFolder]) -> dict:
    """{runs: [{name, curve, best...}], differing: {key: [value per run]}, comparable: bool}."""
    if len({run.path.resolve() for run in runs}) < len(runs):
        raise UserError("runs compare got the same run twice.", "name each run once.")
    configs = [OmegaConf.load(run.config_file) for run in runs]
    changed = {key for config in configs[1:] for key in changed_keys(configs[0], config)}
    differing = sorted(changed - set(NOT_HYPER_PARAMETERS))
    entries = []
    for run in runs:
        rows = evaluation_rows(read_metrics(run.path))
        curve = [{key: r.get(key) for key in ("step", "eval_loss", "eval_loss_ema")} for r in rows]
        entries.append({"name": run.name, "path": str(run.path), "curve": curve, **eval_summary(rows)})
    missing = [e["name"] for e in entries if not e["curve"]]
    if missing:
        raise UserError(f"{', '.join(missing)}: no eval loss in metrics.csv (trained without held-out clips).",
                        "compare runs trained with --eval-every N and held-out clips "
                        "(--eval-fraction or --eval-dataset).")
    return {
        "runs": entries,
        "differing": {key: [OmegaConf.select(c, key) for c in configs] for key in differing},
        "comparable": not any(key in EVALUATION_KEYS for key in differing),
    }


def write_comparison_plot(comparison: dict, path: Path) -> None:
    """Each run's eval loss over steps, its best step circled."""
    series = [
        Series(entry["name"], COLOURS[index % len(COLOURS)], [(p["step"], p["eval_loss"]) for p in entry["curve"]],
               mark=(entry["eval_best_step"], entry["eval_best"]))
        for index, entry in enumerate(comparison["runs"])
    ]
    write_line_plot(series, path, "eval loss on held-out clips (circle: best step)")
