"""Stops and damaged saves through the CLI: `infer` stopped by SIGTERM ends with one line and a rerun
finishes it, its output to a file or pipe shows each finished video as it comes, and a run's saves survive
a full disk, a read-only outputs folder, a damaged `latest.json` or a damaged newest state.

The subprocess tests wait for files and lines, never for a fixed time: they hold on a busy machine.
"""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from cosmos_lora.model.prompts import prompt_folder
from cosmos_lora.cli.app import app
from cosmos_lora.distributed import Distributed
from cosmos_lora.errors import EXIT_STOPPED, UserError
from cosmos_lora.model.lora import spec_for
from cosmos_lora.model.tiny import TINY_TOKENIZER
from cosmos_lora.progress import JobProgress
from cosmos_lora.run_folder import RunFolder
from cosmos_lora.train import checkpointer as checkpointer_module
from cosmos_lora.train.checkpointer import Checkpointer

CPU = Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
PROMPTS = [a for i in range(6) for a in ("-p", f"prompt {i}")]


def infer_command(name: str, nproc: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cosmos_lora", "infer", "--model", "tiny", "--stages", "original", *PROMPTS,
            "--steps", "20", "--nproc", str(nproc), "--name", name, *extra]


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def stop_after_first_video(command: list[str], out: Path, signals: int = 1) -> tuple[int, str]:
    """Starts `command`, SIGTERMs it once its first video exists (`signals` times, as an impatient user
    or a scheduler does); (exit code, stderr)."""
    cli = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(out.glob("original/*/seed_0.mp4")):
        assert cli.poll() is None and time.monotonic() < deadline, "the run ended or hung before its first video"
        time.sleep(0.05)
    for _ in range(signals):
        if cli.poll() is None:
            cli.send_signal(signal.SIGTERM)
            time.sleep(0.1)
    return cli.wait(timeout=120), cli.communicate()[1]


# -- infer: stops and plain progress lines ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl-c-to-the-process-group"])
def test_infer_output_to_a_pipe_shows_each_video_while_it_runs_and_a_stop_ends_with_one_line(cli_env, ctrl_c):
    """One process (no torchrun): a plain line per finished video reaches a pipe at once, and a stop sent on
    reading the first of them (SIGTERM to the CLI, or SIGINT to its whole process group as a terminal's
    Ctrl-C, ffmpeg included) ends the run (it had not ended) with one `Error:` line and no temporaries."""
    out = cli_env.outputs / "infer" / "piped"
    cli = subprocess.Popen(infer_command("piped", 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=ctrl_c)
    seen = []
    for line in cli.stderr:
        seen.append(line)
        if line.startswith("video 1/6"):
            break
    assert seen and seen[-1].startswith("video 1/6"), "".join(seen)
    assert f"original/{prompt_folder('prompt 0')}/seed_0.mp4" in seen[-1]  # names the finished video
    if ctrl_c:
        os.killpg(cli.pid, signal.SIGINT)
    else:
        cli.send_signal(signal.SIGTERM)
    stderr = "".join(seen) + cli.stderr.read()
    assert cli.wait(timeout=120) == EXIT_STOPPED, stderr  # it was still running: the line came before the end
    assert errors_in(stderr) == ["Error: Stopped before every video was made."], stderr
    assert "Traceback" not in stderr and "\x1b[" not in stderr  # plain lines, no terminal codes
    made = sorted(out.glob("original/*/seed_0.mp4"))
    assert 1 <= len(made) < 6 and not temporaries(out)


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_infer_with_two_processes_stopped_by_sigterm_prints_one_line_and_a_rerun_finishes(cli_env, signals):
    """The Ctrl-C / SIGTERM of a 2-process run: a one-line outcome, no half-written file, a rerun completes.
    Each worker gets every stop twice (from the CLI and from torchrun); a second stop while the first
    unwinds must not end a worker with a traceback."""
    out = cli_env.outputs / "infer" / "two"
    command = infer_command("two", 2)
    code, stderr = stop_after_first_video(command, out, signals)
    assert code == EXIT_STOPPED, stderr
    assert errors_in(stderr) == ["Error: Stopped before every video was made."], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    made = sorted(out.glob("original/*/seed_0.mp4"))
    assert 1 <= len(made) < 6 and not temporaries(out)
    if signals == 1:  # what a stop leaves is the same after one stop or two: rerun once
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert len(list(out.glob("original/*/seed_0.mp4"))) == 6


def stop_this_process(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler runs at the next bytecode: well within this


@pytest.mark.parametrize("when", ["while the process group forms", "again while the first stop unwinds"])
def test_a_worker_stopped_at_any_moment_exits_stopped_without_a_traceback(monkeypatch, when):
    from cosmos_lora import distributed

    def work(dist_info):
        stop_this_process()

    if when == "while the process group forms":
        monkeypatch.setattr(distributed, "init_distributed", stop_this_process)
    else:
        monkeypatch.setattr(distributed, "close_distributed", stop_this_process)
    before = signal.getsignal(signal.SIGTERM)
    assert distributed.run_worker(work, process_group=False) == EXIT_STOPPED
    assert signal.getsignal(signal.SIGTERM) == before


def test_progress_writes_plain_lines_at_its_interval_and_at_the_end_when_not_on_a_terminal():
    log = io.StringIO()
    with JobProgress(console=Console(file=log), plain_every_s=0) as progress:
        task = progress.add_task("videos", total=3)
        progress.advance(task)
        progress.note("video 1/3: a.mp4")
        progress.advance(task, 2)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("videos: 1/3, 0:00:00 elapsed") and lines[1] == "video 1/3: a.mp4"
    assert lines[2].startswith("videos: 3/3") and lines[-1] == lines[2] and len(lines) == 4  # the end: once more
    quiet = io.StringIO()
    with JobProgress(console=Console(file=quiet), plain_every_s=3600) as progress:
        progress.advance(progress.add_task("videos", total=3))
    assert [line.split(",")[0] for line in quiet.getvalue().splitlines()] == ["videos: 1/3"]  # only the last line


# -- the tokenizer, checked before anything starts ------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a whole archive"], ids=["empty", "damaged"])
def test_an_empty_or_damaged_decoder_is_one_line_before_launch(cli_env, tmp_path, monkeypatch, content):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(cli_env.checkpoints, checkpoints)
    decoder = checkpoints / TINY_TOKENIZER / "decoder.jit"
    decoder.write_bytes(content)
    monkeypatch.setenv("COSMOS_LORA_CHECKPOINTS", str(checkpoints))
    result = CliRunner().invoke(app, ["infer", "--model", "tiny", "--stages", "original", "-p", "a red square", "--steps", "2", "--name", "t"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(errors_in(result.stderr)) == 1 and str(decoder) in result.stderr, result.stderr
    assert "cosmos-lora download" in result.stderr and "Traceback" not in result.output
    assert not (cli_env.outputs / "infer" / "t").exists()  # nothing written


# -- saves: full disk, damaged latest.json, damaged newest state -----------------------------------------


def tiny_checkpointer(run_dir: Path, keep_states: int = 3) -> Checkpointer:
    return Checkpointer(run_dir, CPU, spec_for(2, rank=2, scale=1.0), keep_states=keep_states, metadata={})


def save_step(checkpointer: Checkpointer, step: int) -> None:
    lora = {"net.blocks.0.q.lora_A.weight": torch.full((2, 4), float(step))}
    checkpointer.save(step, lora, None, train_state={"step": step, "world_size": 1}, rng_state={"step": step})


def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    checkpointer = tiny_checkpointer(run.path)
    save_step(checkpointer, 1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpointer_module, "save_adapter", disk_full)
    with pytest.raises(UserError) as raised:
        save_step(checkpointer, 2)
    assert "\n" not in str(raised.value) and "step 2" in raised.value.problem
    assert "No space left on device" in raised.value.problem and raised.value.fix
    assert sorted(p.name for p in run.states_dir.iterdir()) == ["step_000001"]  # no .step_000002.tmp left
    assert run.read_latest()["step"] == 1


def test_a_damaged_latest_json_falls_back_to_the_newest_save_and_says_so(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    checkpointer = tiny_checkpointer(run.path)
    for step in (1, 2):
        save_step(checkpointer, step)
    run.latest_file.write_text('{"step": 2, "sta')  # cut off
    state, rng = checkpointer.load_latest()
    assert state["step"] == 2 and rng == {"step": 2}
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and str(run.latest_file) in notes[0] and "step 2" in notes[0], notes


def test_a_damaged_newest_state_falls_back_to_the_one_before_and_says_so(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    checkpointer = tiny_checkpointer(run.path)
    for step in (1, 2):
        save_step(checkpointer, step)
    damaged = next(run.state(2).glob("train_state*"))
    damaged.write_bytes(damaged.read_bytes()[:20])
    state, rng = checkpointer.load_latest()
    assert state["step"] == 1 and rng == {"step": 1}
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and str(run.state(2)) in notes[0] and "step 1" in notes[0], notes


def test_no_readable_save_is_one_line(tmp_path):
    run = RunFolder(tmp_path / "run")
    checkpointer = tiny_checkpointer(run.path)
    save_step(checkpointer, 1)
    next(run.state(1).glob("train_state*")).write_bytes(b"")
    with pytest.raises(UserError) as raised:
        checkpointer.load_latest()
    assert str(run.state(1)) in raised.value.problem and "--name NEW" in raised.value.fix


# -- through posttrain: a read-only outputs folder, a failed resume ---------------------------------------

TRAIN = ["posttrain", "--model", "tiny", "-d", "demo/shapes", "--nproc", "1"]


def can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind -o ro / / 2>/dev/null || mount --bind -o ro /tmp /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount_read_only(), reason="needs `unshare -rm` and bind mounts (user namespaces)")
@pytest.mark.parametrize("command", ["posttrain", "infer"])
def test_a_read_only_outputs_folder_is_one_line_before_launch(cli_env, command):
    """The outputs folder bind-mounted read-only in a private mount namespace: a real EROFS, as for root too."""
    outputs = cli_env.outputs
    outputs.mkdir(parents=True)
    args = TRAIN + ["--name", "ro", "--max-iter", "1"] if command == "posttrain" else \
        ["infer", "--model", "tiny", "-p", "a red square", "--steps", "2", "--stages", "original"]
    script = f'mount --bind -o ro "{outputs}" "{outputs}" && exec "$@"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "cosmos_lora", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors_in(done.stderr)) == 1 and str(outputs) in done.stderr, done.stderr[-3000:]
    assert "read-only" in done.stderr.lower() and "Traceback" not in done.stderr
    assert "torchrun" not in done.stderr.lower()


@pytest.mark.slow
def test_a_failed_resume_keeps_a_finished_runs_status(cli_env, saved_every_step):
    shutil.copytree(saved_every_step.outputs / "runs" / "A", cli_env.outputs / "runs" / "A")  # finished at step 4
    run = RunFolder(cli_env.outputs / "runs" / "A")
    finished = run.status_file.read_text()
    assert json.loads(finished)["state"] == "finished"

    for state in run.states_dir.glob("step_*"):  # every save unreadable: the resume fails in the worker
        for file in state.iterdir():
            file.write_bytes(b"")
    command = [sys.executable, "-m", "cosmos_lora", "posttrain", "--config", str(run.config_file), "--resume",
               "--nproc", "1", "--", "trainer.max_iter=5"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert len(errors_in(failed.stderr)) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert str(run.states_dir) in errors_in(failed.stderr)[0], failed.stderr[-3000:]  # failed for that reason
    assert run.status_file.read_text() == finished  # the run is still the finished one
