"""The CLI called in-process, as the tests of several commands call it, and what a user error looks like."""

from typer.testing import CliRunner

from cosmos_lora.cli.app import app


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def assert_user_error(result, *phrases: str) -> None:
    """Exit 1 with exactly one `Error:` line, a `Fix:` and no traceback, naming every phrase."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) == 1, result.stderr
    assert "Fix:" in result.stderr and "Traceback" not in result.output
    assert all(phrase in result.stderr for phrase in phrases), result.stderr
