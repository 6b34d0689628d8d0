"""Listing and help commands answer at once (they import no model stack), and boolean options are flags."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer

from cli_helpers import assert_ok, assert_user_error, cli
from cosmos_lora.cli.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cli_startup import write_run  # noqa: E402 - the run folder the benchmark times `runs` on

HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors", "numpy", "PIL", "imageio_ffmpeg")
UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def every_command() -> list[list[str]]:
    """[command] and [group, command] for everything `cosmos-lora --help` lists, subcommands included."""
    root = typer.main.get_command(app)
    paths = []
    for name, command in root.commands.items():
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    return paths


def test_listing_and_help_commands_import_no_model_stack(cli_env):
    """The commands run in turn in one fresh interpreter; the first that pulls in torch & co. is named.
    Only `download --dry-run` may load the hub client."""
    write_run(cli_env.runs, "r1")
    commands = [["--help"], ["runs"], ["runs", "--json"], ["runs", "show", "r1"], ["runs", "show", "r1", "--json"]]
    commands += [path + ["--help"] for path in every_command()] + [["download", "--dry-run"]]  # the hub client: last
    script = textwrap.dedent(f"""
        import json, os, sys
        from typer.testing import CliRunner
        from cosmos_lora.cli.app import app
        os.environ["HF_ENDPOINT"] = {UNREACHABLE_HUB!r}
        seen = {{}}
        for args in {commands!r}:
            result = CliRunner().invoke(app, args)
            heavy = [m for m in {HEAVY!r} + ("huggingface_hub",) * (args != ["download", "--dry-run"]) if m in sys.modules]
            seen[" ".join(args)] = {{"exit": result.exit_code, "heavy": heavy, "output": result.output[-300:]}}
            if heavy:
                break
        print(json.dumps(seen))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    for command, outcome in seen.items():
        assert not outcome["heavy"], f"`cosmos-lora {command}` imports {outcome['heavy']}"
        expected_exit = 1 if command == "download --dry-run" else 0  # no hub here: one line naming it
        assert outcome["exit"] == expected_exit, (command, outcome["output"])
    assert len(seen) == len(commands)
    assert "r1" in seen["runs"]["output"] and "Could not reach" in seen["download --dry-run"]["output"]


MODEL_STACK = ("diffusers", "peft", "transformers", "torch._dynamo")  # the workers' imports, seconds each


def test_infer_checks_and_plans_without_importing_the_model_stack(cli_env, tmp_path):
    """Everything `infer` does in its own process, before torchrun starts the workers (the checkpoint and
    adapter checks, the plan), imports no diffusers, peft, transformers or torch._dynamo: in a fresh
    interpreter, an adapter too wide for the tiny DiT is refused by `check_model`, then a good command
    writes plan.json and reaches the launch (stubbed here: the workers are another process)."""
    import torch

    from cosmos_lora.model.lora import save_adapter, spec_for

    spec = spec_for(2, rank=4, scale=1.0)  # the tiny DiT's 2 blocks; its layers map 64 (or 32) -> 64 features
    wide = {f"{module}.lora_{ab}.weight": torch.zeros((4, 128) if ab == "A" else (128, 4))
            for module in spec.module_names() for ab in "AB"}
    save_adapter(tmp_path / "wide.safetensors", wide, spec)
    refused = ["infer", "--model", "tiny", "--lora", str(tmp_path / "wide.safetensors"), "-p", "x", "--steps", "2"]
    planned = ["infer", "--model", "tiny", "--stages", "original", "-p", "x", "--steps", "2", "--nproc", "2", "--name", "t"]
    script = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        import cosmos_lora.distributed
        from cosmos_lora.cli.app import app

        launched = []

        class Finished:
            def raise_unless_finished(self, *why):
                pass

        cosmos_lora.distributed.launch = lambda module, args, how: launched.append([module, *args]) or Finished()
        seen = []
        for args in ({refused!r}, {planned!r}):
            result = CliRunner().invoke(app, args)
            seen.append({{"exit": result.exit_code, "output": result.output,
                          "stack": [m for m in {MODEL_STACK!r} if m in sys.modules]}})
        print(json.dumps({{"seen": seen, "launched": launched}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    (wide_refused, plan_written), plan = outcome["seen"], cli_env.outputs / "infer" / "t" / "plan.json"
    assert wide_refused["exit"] == 1 and "does not fit the base model" in wide_refused["output"], wide_refused["output"]
    assert "128 -> 128 features" in wide_refused["output"] and "Traceback" not in wide_refused["output"]
    assert plan_written["exit"] == 0, plan_written["output"]
    assert outcome["launched"] == [["cosmos_lora.infer.run", str(plan)]] and plan.is_file()
    for result in outcome["seen"]:
        assert result["stack"] == [], f"`cosmos-lora infer` imports {result['stack']} before it launches the workers"


def test_the_console_command_leaves_quickly_with_its_exit_code_and_every_line_printed(cli_env):
    """`main` ends the process with `os._exit` (quick_exit.py): the code and the buffered output still arrive."""
    write_run(cli_env.runs, "r1")

    def console(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cosmos_lora", *args], capture_output=True, text=True, timeout=120)

    listed = console("runs", "--json")
    assert listed.returncode == 0 and [run["name"] for run in json.loads(listed.stdout)["runs"]] == ["r1"], listed.stderr
    refused = console("infer", "--num-videos", "0")
    assert refused.returncode == 1 and "Error: --num-videos 0 is less than 1." in refused.stderr and "Fix:" in refused.stderr
    assert console("no-such-command").returncode == 2  # click's usage error


def test_help_shows_boolean_options_as_flags_without_a_type():
    for path in [[]] + every_command():
        result = cli(*path, "--help")
        assert_ok(result)
        assert "<bool>" not in result.stdout, f"cosmos-lora {' '.join(path)} --help:\n{result.stdout}"
    posttrain = cli("posttrain", "--help").stdout
    assert "--dry-run " in posttrain and "--resume " in posttrain and "<int>" in posttrain  # other types still shown
    assert "--ema" in cli("export", "--help").stdout and "--no-ema" in cli("export", "--help").stdout


@pytest.mark.parametrize("args, phrases", [
    (["download", "--dry-run", "true"], ["--dry-run is a flag", "(--dry-run true)", "write --dry-run alone"]),
    (["posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--dry-run", "yes", "--", "trainer.max_iter=7"],
     ["--dry-run is a flag", "write --dry-run alone"]),
    (["posttrain", "--dry-run=False"], ["(--dry-run=False)", "leave --dry-run out"]),
    (["export", "--run", "r", "--format", "comfyui", "--out", "x.safetensors", "--ema", "false"],
     ["--ema is a flag", "write --no-ema"]),
    (["runs", "show", "r1", "--json", "1"], ["--json is a flag", "write --json alone"]),
])
def test_a_boolean_word_after_a_flag_is_one_line_naming_the_flag(cli_env, args, phrases):
    result = cli(*args)
    assert_user_error(result, *phrases)
    assert "Override" not in result.output and "unexpected extra argument" not in result.output


def test_flags_and_overrides_still_parse(cli_env):
    """A flag before `--` and an override that looks boolean after it are both what the user meant."""
    result = cli("posttrain", "--model", "tiny", "--dataset", "demo/shapes", "--dry-run", "--",
                 "trainer.max_iter=7", "model.fp8=false")
    assert_ok(result)
    assert "max_iter: 7" in result.stdout
