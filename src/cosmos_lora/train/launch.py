"""From a built experiment to a finished run: check the inputs, write the run folder, launch the workers.

`posttrain` is the one path the `posttrain` and `demo` commands take. Under srun or an existing
torchrun every task runs it: task 0 checks the inputs and writes the run folder, the others wait
for its note of this launch.
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cosmos_lora.config import LazyDict, load_preset, save_config
from cosmos_lora.config.experiment import changed_keys
from cosmos_lora.distributed import ExternalLaunch, Launch, Outcome, launch, torchrun_command
from cosmos_lora.errors import Problems, Stopped, UserError
from cosmos_lora.files import atomic_write, require_writable
from cosmos_lora.run_folder import RunFolder
from cosmos_lora.train.checks import check_inputs, check_run_folder

WORKER = "cosmos_lora.train.worker"

# Seconds torchrun waits after forwarding a SIGTERM before it SIGKILLs the workers. Its default,
# 30 s, is shorter than one 7B step at 121x704x1280 with accumulation: they could not finish and save.
SHUTDOWN_TIMEOUT_S = "600"
# Under an external launcher (srun, torchrun) only task 0 checks the inputs and writes the run folder;
# the other tasks wait this long for it. Checking a large dataset takes a few minutes.
LAUNCH_WAIT_S = 900.0


def posttrain(experiment: LazyDict, shape: Launch, resume: bool = False, launched: ExternalLaunch | None = None,
              announce: Callable[[str], None] = lambda text: None, resume_command: str | None = None,
              problems: Problems | None = None) -> tuple[RunFolder, str | None, Outcome]:
    """Checks the inputs, writes the run folder, trains; returns (run, one-line outcome, outcome).

    `problems`: those found while building the experiment; they are reported with the inputs' own.

    Where this process reports (no srun/torchrun around it, or its task 0), a run that did not
    finish raises: `Stopped` naming the command that resumes it (`resume_command`, default the
    posttrain command in the same launch shape), or `UserError` with the reason. The other tasks
    return quietly with no message: task 0 reports for all (an error only their rank saw is printed).
    """
    run = RunFolder(prepare(experiment, resume, launched, shape, problems))
    reporting = launched is None or launched.is_main
    if reporting:
        announce(f"Run folder: {run.path}")
    outcome = start_training(run, shape)
    status = run.read_status() or {}
    if not reporting:
        if outcome.error is not None and str(outcome.error) != status.get("message"):
            print(f"Error (rank {outcome.error_rank}): {outcome.error}", file=sys.stderr)
        return run, None, outcome
    return run, outcome_message(run, outcome, status, resume_command or resume_hint(run, shape, launched is not None)), outcome


def start_training(run: RunFolder, shape: Launch) -> Outcome:
    """Runs the workers (through torchrun, or in this process when already under a launcher)."""
    return launch(WORKER, [str(run.config_file)], shape, alone_in_process=False,
                  env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": SHUTDOWN_TIMEOUT_S})


def outcome_message(run: RunFolder, outcome: Outcome, status: dict, resume_hint: str) -> str:
    """The finished run's one line; raises `Stopped` or `UserError` for one that did not finish."""
    state, step = status.get("state"), status.get("step", 0)
    if outcome.state == "finished" and state == "finished":
        return f"Finished {step} steps. Adapters: {run.adapters_dir}"
    if state == "interrupted" or outcome.state == "stopped":
        raise Stopped(f"Interrupted after step {step}; the state is saved. Resume with: {resume_hint}")
    reason = status.get("message") if state == "failed" else None
    if reason is None and outcome.error is not None:
        reason = f"{outcome.error} (rank {outcome.error_rank})"
    if reason:
        raise UserError(f"Training failed: {reason} Run folder: {run.path}")
    raise UserError(f"Training failed (exit code {outcome.code}) at step {step}; see the messages above. Run folder: {run.path}")


def resume_hint(run: RunFolder, shape: Launch, external: bool) -> str:
    """The command that continues this run, in the same launch shape."""
    command = f"cosmos-lora posttrain --config {run.config_file} --resume"
    if external:  # srun or torchrun started the tasks: they must again
        return f"{command} (in {shape.world_size} tasks, started as before)"
    command += f" --nproc {shape.nproc}"
    if shape.nnodes > 1:
        command += f" --nnodes {shape.nnodes} --node-rank {shape.node_rank} --rdzv-endpoint {shape.rdzv_endpoint}"
    return command


def describe_command(run: RunFolder, shape: Launch) -> str:
    return " ".join(torchrun_command(WORKER, [str(run.config_file)], shape))


# -- the run folder, and the tasks of an srun/torchrun launch ----------------------------------------


def prepare(config: LazyDict, resume: bool, launched: ExternalLaunch | None, shape: Launch | None = None,
            problems: Problems | None = None) -> Path:
    """Checks the inputs and writes the run folder. Under srun or torchrun only task 0 does; it then
    leaves a note for this launch beside the run folder, and the other tasks wait for that note.

    `shape`: the launch, whose process count a resume must match; `problems`: those found earlier."""
    if launched is not None and not launched.is_main:
        if problems:  # every task built the same experiment: each reports what it found
            problems.raise_any()
        return wait_for_run_dir(config, launched)
    try:
        if config.job.get("run_dir"):
            require_writable(Path(config.job.run_dir), "the run")
        check_inputs(config, resume, shape, problems)
        run_dir = prepare_run_dir(config, resume)
    except UserError as error:
        if launched is not None and config.job.get("run_dir"):  # the other tasks stop at once with task 0's reason
            _write_launch_note(config, launched, {"failed": str(error)})
        raise
    if launched is not None:
        _write_launch_note(config, launched, {})
    return run_dir


def wait_for_run_dir(config: LazyDict, launched: ExternalLaunch, timeout_s: float = LAUNCH_WAIT_S) -> Path:
    """Waits (tasks other than 0) until task 0 has prepared the run folder for this launch."""
    run = RunFolder(Path(config.job.run_dir))
    deadline = time.monotonic() + timeout_s
    while (note := _read_launch_note(run, launched)) is None:
        if time.monotonic() > deadline:
            raise UserError(
                f"Task {launched.rank}: task 0 did not prepare {run.path} for this launch within {timeout_s:.0f} s.",
                "read task 0's output for what stopped it, fix that and start every task again.",
            )
        time.sleep(0.2)
    if "failed" in note:
        raise UserError(f"Task {launched.rank}: task 0 stopped before training: {note['failed']}")
    changed = changed_keys(load_preset(run.config_file), config)
    if changed:
        raise UserError(
            f"Task {launched.rank} was started with other values than task 0 for {', '.join(changed)}.",
            "start every task with the same command and environment.",
        )
    return run.path


def _write_launch_note(config: LazyDict, launched: ExternalLaunch, content: dict) -> None:
    note = {"launch_id": launched.launch_id, "world_size": launched.world_size, **content}
    atomic_write(RunFolder(Path(config.job.run_dir)).launch_note, json.dumps(note))


def _read_launch_note(run: RunFolder, launched: ExternalLaunch) -> dict | None:
    """Task 0's note for this launch; None while there is none (a note of an earlier launch does not count)."""
    try:
        note = json.loads(run.launch_note.read_text())
    except (OSError, ValueError):
        return None
    return note if note.get("launch_id") == launched.launch_id else None


def prepare_run_dir(config: LazyDict, resume: bool) -> Path:
    """Creates the run folder with its config.yaml; refuses to reuse one unless resuming (`check_run_folder`).

    A resume saves the new config when it differs from the old one only in what a resume may change
    (e.g. a longer `trainer.max_iter`), so the workers train with what the user asked for.
    """
    check_run_folder(config, resume)
    run = RunFolder(Path(config.job.run_dir))
    if not resume or changed_keys(load_preset(run.config_file), config):
        save_config(config, run.config_file)
    return run.path
