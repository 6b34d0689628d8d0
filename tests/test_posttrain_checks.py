"""`posttrain`'s bad inputs: each one line with its fix, before the run folder is written or torchrun
starts; `--dry-run` lists every problem at once; no-op lengths and a resume that would stretch a
cosine schedule are refused.
"""

import json

import pytest
from typer.testing import CliRunner

from cosmos_lora.cli.app import app

runner = CliRunner()
TRAIN = ["posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--nproc", "1"]


def posttrain(*args: str):
    result = runner.invoke(app, [*TRAIN, *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("args, named", [
    (["--", "model.keep_attention_blocks=-1"], "model.keep_attention_blocks"),
    (["--rank", "0"], "--rank"),
    (["--rank", "-3"], "--rank"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--grad-accum", "0"], "--grad-accum"),
    (["--save-every", "0"], "--save-every"),
    (["--nproc", "0"], "--nproc"),
    (["--nproc", "-2"], "--nproc"),
    (["--scale", "0"], "--scale"),
    (["--scale", "nan"], "--scale"),
    (["--alpha", "-4"], "--alpha"),
    (["--target", "q"], "--target"),
    (["--first-blocks", "0"], "--first-blocks"),
    (["--first-blocks", "99"], "--first-blocks"),  # the tiny DiT has 2 blocks
    (["--max-iter", "0"], "--max-iter"),  # issue 14: "Finished 0 steps", exit 0, no adapter
    (["--max-iter", "-5"], "--max-iter"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0.01"], "--epochs"),  # rounds to no step
    (["--name", "/tmp/elsewhere"], "--name"),
    (["--name", "../escape"], "--name"),
    (["--name", "a/b"], "--name"),
    (["--name", ".."], "--name"),
    (["--", "trainer.log_every=0"], "trainer.log_every"),
    (["--", "trainer.max_iter=abc"], "trainer.max_iter"),
    (["--", "optimizer.lr=fast"], "optimizer.lr"),
    (["--", "model.lora.rank=2.5"], "model.lora.rank"),
    (["--", "trainer.ema.enabled=maybe"], "trainer.ema.enabled"),
    (["--", "scheduler.decay=linear"], "scheduler.decay"),
    (["--", "scheduler.warmup_iters=-1"], "scheduler.warmup_iters"),
    (["--max-iter", "10", "--", "scheduler.warmup_iters=20"], "scheduler.warmup_iters"),
    (["--max-iter", "10", "--", "scheduler.decay=cosine", "scheduler.max_iter=5"], "scheduler.max_iter"),
])
def test_a_bad_value_is_one_line_with_its_fix_before_anything_is_written(cli_env, args, named):
    result = posttrain("--name", "bad", *args) if "--name" not in args else posttrain(*args)
    assert result.exit_code == 1, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Fix:")], result.stderr
    assert "Traceback" not in result.output
    assert not (cli_env.outputs / "runs").exists()  # no run folder, no config.yaml: nothing was launched


def test_an_invalid_config_yaml_names_the_file_and_line(cli_env, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("job:\n  name: x\nmodel: [unclosed\ntrainer: {}\n")
    result = runner.invoke(app, ["posttrain", "--config", str(config), "-d", "demo/shapes"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (error,) = error_lines(result)
    assert str(config) in error and "line 4" in error, result.stderr
    not_a_config = tmp_path / "list.yaml"
    not_a_config.write_text("- 1\n- 2\n")
    result = runner.invoke(app, ["posttrain", "--config", str(not_a_config), "-d", "demo/shapes"])
    assert result.exit_code == 1 and "is not an experiment config" in result.stderr and "Traceback" not in result.output


def test_dry_run_lists_every_problem_at_once(cli_env):
    dataset = cli_env.dataset("demo/shapes")
    embedding = sorted((dataset / "t5_xxl").glob("*.pickle"))[0]
    embedding.unlink()  # a dataset problem: found by check_inputs, which the dry run used to skip
    result = posttrain("--dry-run", "--rank", "0", "--lr", "nan", "--target", "attn", "--nproc", "0", "--name", "../x",
                       "--", "optimizer.lr=fast", "trainer.log_every=0")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (error,) = error_lines(result)
    listed = result.stderr.splitlines()[1:]
    assert error.startswith("Error: 8 problems"), result.stderr
    for named in ("--rank", "--target", "--nproc", "--name", "optimizer.lr=", "trainer.log_every", str(embedding)):
        assert sum(named in line for line in listed) >= 1, (named, result.stderr)
    assert not result.stdout.strip()  # no config printed for a command that cannot run
    assert not (cli_env.outputs / "runs").exists()


def test_dry_run_refuses_what_a_launch_would_refuse(cli_env):
    (cli_env.outputs / "runs" / "taken").mkdir(parents=True)
    result = posttrain("--dry-run", "--name", "taken")
    assert result.exit_code == 1 and "exists already" in result.stderr
    nothing = posttrain("--dry-run", "--name", "new", "--resume")
    assert nothing.exit_code == 1 and "Nothing to resume" in nothing.stderr


def read_metrics(run_dir) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_resume_cannot_stretch_a_cosine_schedule_and_keeps_the_config(cli_env):
    """Issue 14: 4 cosine steps, then `--resume --max-iter 8` trained steps 5-8 at lr 0 and rewrote
    config.yaml with max_iter 8 but scheduler.max_iter 4. Stretching the cosine would change the lr of
    the steps already taken, so both ways of asking for it are refused and nothing is rewritten."""
    from posttrain_runs import train_in_process

    cosine = ["--", "scheduler.decay=cosine", "trainer.log_every=1"]
    # trained in this process as a worker trains: what is tested here, the refusals, come before any launch
    run = train_in_process(cli_env, "tiny_lora", "cos", {"trainer.max_iter": 4, "checkpoint.save_every": 4}, cosine[1:])
    assert run == cli_env.outputs / "runs" / "cos"
    lrs = [float(row["lr"]) for row in read_metrics(run)]
    assert len(lrs) == 4 and lrs[0] > lrs[-1] > 0  # the cosine ran over the 4 steps
    saved = (run / "config.yaml").read_bytes()
    status = (run / "status.json").read_bytes()

    from_saved = runner.invoke(app, ["posttrain", "--config", str(run / "config.yaml"), "--resume", "--max-iter", "8",
                                     "--nproc", "1"])
    assert from_saved.exit_code == 1 and "Traceback" not in from_saved.output
    (error,) = error_lines(from_saved)
    assert "cosine schedule ends at step 4" in error and "--max-iter" in error
    assert "resume with --max-iter 4" in from_saved.stderr

    restated = posttrain("--name", "cos", "--resume", "--max-iter", "8", *cosine)  # scheduler.max_iter follows: 8
    assert restated.exit_code == 1 and "Traceback" not in restated.output
    (error,) = error_lines(restated)
    assert "cosine schedule over 8 steps instead of 4" in error, restated.stderr

    assert (run / "config.yaml").read_bytes() == saved and (run / "status.json").read_bytes() == status
    assert json.loads(status)["step"] == 4 and len(read_metrics(run)) == 4
