"""`posttrain` under Slurm: srun's task variables become torchrun's, task 0 prepares the run folder.

The end-to-end test starts two `python -m cosmos_lora posttrain` processes itself with the variables
`srun --ntasks 2` gives its tasks (no Slurm needed), on CPU with gloo.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cosmos_lora.config.build import build_experiment
from cosmos_lora.distributed import ExternalLaunch, Launch, expand_hostlist, slurm_environment
from cosmos_lora.errors import UserError
from cosmos_lora.train.launch import prepare, wait_for_run_dir

DATASET = "demo/shapes"


# -- host lists and variables ----------------------------------------------------------------------


@pytest.mark.parametrize("hostlist, hosts", [
    ("localhost", ["localhost"]),
    ("127.0.0.1", ["127.0.0.1"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
    ("gpu-a[1-2],login5,gpu-b[09-10]", ["gpu-a1", "gpu-a2", "login5", "gpu-b09", "gpu-b10"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("dgx[001]", ["dgx001"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["", "node[1-2", "node1-2]", "node[a-b]", "node[1-]"])
def test_expand_hostlist_refuses_what_slurm_does_not_write(hostlist):
    with pytest.raises(ValueError):
        expand_hostlist(hostlist)


SRUN_TASK_1 = {"SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_slurm_variables_become_torchrun_variables():
    assert slurm_environment(SRUN_TASK_1) == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "29500",
    }
    mine = slurm_environment({**SRUN_TASK_1, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})  # the user's win
    assert (mine["MASTER_ADDR"], mine["MASTER_PORT"]) == ("head", "1234")
    # the step's own task count and nodes rather than the allocation's
    step = slurm_environment({**SRUN_TASK_1, "SLURM_STEP_NUM_TASKS": "12", "SLURM_STEP_NODELIST": "gpu[08-09]"})
    assert (step["WORLD_SIZE"], step["MASTER_ADDR"]) == ("12", "gpu08")


@pytest.mark.parametrize("env", [
    {},  # not under Slurm
    {**SRUN_TASK_1, "SLURM_NTASKS": "1"},  # one task: posttrain launches torchrun itself
    {key: value for key, value in SRUN_TASK_1.items() if key != "SLURM_PROCID"},  # salloc shell, not a task
    {**SRUN_TASK_1, "RANK": "3", "WORLD_SIZE": "8"},  # torchrun inside a Slurm job: torchrun's variables hold
])
def test_no_slurm_translation_outside_srun_tasks(env):
    assert slurm_environment(env) == {}


def test_an_unreadable_node_list_asks_for_master_addr():
    with pytest.raises(UserError, match="MASTER_ADDR"):
        slurm_environment({**SRUN_TASK_1, "SLURM_JOB_NODELIST": "gpu[07"})


def test_other_tasks_wait_for_task_0_and_stop_with_its_reason(roots):
    config = build_experiment("tiny_lora", roots, DATASET, {}, [], "waiting", Launch(2))
    run_dir = roots.outputs / "runs" / "waiting"
    task_1 = ExternalLaunch(rank=1, world_size=2, launch_id="job/step")
    started = time.monotonic()
    with pytest.raises(UserError, match="task 0 did not prepare .* within 0 s.*task 0's output"):
        wait_for_run_dir(config, task_1, timeout_s=0.3)  # task 0 never came
    assert time.monotonic() - started < 5

    prepare(config, resume=False, launched=ExternalLaunch(0, 2, "earlier/launch"))
    with pytest.raises(UserError, match="did not prepare"):  # what an earlier launch prepared does not count
        wait_for_run_dir(config, task_1, timeout_s=0.3)

    with pytest.raises(UserError, match="exists already"):  # task 0 refuses to reuse the folder ...
        prepare(config, resume=False, launched=ExternalLaunch(0, 2, "job/step"))
    with pytest.raises(UserError, match="task 0 stopped before training: Run folder .* exists already"):
        wait_for_run_dir(config, task_1, timeout_s=60)  # ... and task 1 stops at once, saying why

    prepare(config, resume=True, launched=ExternalLaunch(0, 2, "job/step"))
    assert wait_for_run_dir(config, task_1, timeout_s=0.3) == run_dir
    other = build_experiment("tiny_lora", roots, DATASET, {"optimizer.lr": 0.5}, [], "waiting", Launch(2))
    with pytest.raises(UserError, match="other values than task 0 for optimizer.lr"):
        wait_for_run_dir(other, task_1, timeout_s=0.3)
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [".waiting.launch.json", "waiting"]


# -- two srun tasks, for real ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_tasks(roots, *args: str, tasks: int = 2, timeout_s: float = 300) -> list[subprocess.CompletedProcess]:
    """What `srun --ntasks N cosmos-lora posttrain ...` runs: N processes that differ only in SLURM_PROCID/LOCALID."""
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in launcher_vars}
    env.update({
        "COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
        "COSMOS_LORA_OUTPUTS": str(roots.outputs),
        "SLURM_NTASKS": str(tasks), "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": str(free_port()),
    })
    command = [sys.executable, "-m", "cosmos_lora", "posttrain", "--model", "tiny", "-d", DATASET, *args]
    processes = [
        subprocess.Popen(command, env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(tasks)
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout_s)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in processes:  # a hung task must not outlive the test
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.slow
def test_two_srun_tasks_train_one_run_and_resume_it(roots):
    run_dir = roots.outputs / "runs" / "slurm"
    first = srun_tasks(roots, "--name", "slurm", "--max-iter", "2", "--", "trainer.log_every=1")
    assert [r.returncode for r in first] == [0, 0], [r.stderr[-3000:] for r in first]
    assert first[0].stdout.strip().splitlines()[-1] == str(run_dir)  # task 0 reports for all
    assert first[1].stdout == "" and "Run folder" not in first[1].stderr
    latest = json.loads((run_dir / "latest.json").read_text())
    assert (latest["step"], latest["world_size"]) == (2, 2)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert "2 process(es)" in first[0].stderr  # one process group of both tasks, not two runs of one

    # a resume is a new launch: task 1 waits for task 0 to save the new max_iter before it starts
    again = srun_tasks(roots, "--name", "slurm", "--max-iter", "3", "--resume", "--", "trainer.log_every=1")
    assert [r.returncode for r in again] == [0, 0], [r.stderr[-3000:] for r in again]
    latest = json.loads((run_dir / "latest.json").read_text())
    assert (latest["step"], latest["world_size"]) == (3, 2)
    assert "resuming at step 2" in again[0].stderr

    # the same command without --resume: task 0 refuses, and task 1 stops at once instead of waiting
    refused = srun_tasks(roots, "--name", "slurm", "--max-iter", "3", timeout_s=60)
    assert [r.returncode for r in refused] == [1, 1]
    assert "exists already" in refused[0].stderr and "task 0 stopped before training" in refused[1].stderr


@pytest.mark.slow
def test_posttrain_started_by_an_existing_torchrun_trains_in_its_processes(roots):
    """The other launcher `posttrain` accepts: torchrun's variables are set, so it starts no torchrun of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update({"COSMOS_LORA_CHECKPOINTS": str(roots.checkpoints), "COSMOS_LORA_DATASETS": str(roots.datasets),
                "COSMOS_LORA_OUTPUTS": str(roots.outputs)})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "cosmos_lora", "posttrain", "--model", "tiny", "-d", DATASET, "--name", "torchrun", "--max-iter", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    run_dir = roots.outputs / "runs" / "torchrun"
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(run_dir)  # printed once, by task 0
    assert result.stderr.count("Run folder:") == 1 and "2 process(es)" in result.stderr
    latest = json.loads((run_dir / "latest.json").read_text())
    assert (latest["step"], latest["world_size"]) == (2, 2)
