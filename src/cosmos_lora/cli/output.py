"""All printing: results for scripts on stdout, progress and hints for people on stderr.

Commands raise `UserError` for user mistakes; `guarded` turns it into one red line on stderr and
its exit code: 1, or EXIT_STOPPED for `Stopped` (COSMOS_LORA_DEBUG=1 re-raises it with the traceback).
A Ctrl-C or SIGTERM that reaches a command (one that did not handle it itself) is a `Stopped` too.
"""

import contextlib
import functools
import json
import os
import signal
import threading

import typer
from rich.console import Console

from cosmos_lora.errors import Stopped, UserError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def guarded(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            try:
                with _sigterm_as_ctrl_c():
                    return command(*args, **kwargs)
            except KeyboardInterrupt:
                raise Stopped("Stopped (Ctrl-C).", "rerun the same command: finished work is kept.") from None
        except UserError as error:
            raise report_user_error(error) from None

    return wrapper


def report_user_error(error: UserError) -> typer.Exit:
    """Prints the error's two lines; the Exit to raise. COSMOS_LORA_DEBUG=1 re-raises the error itself."""
    if os.environ.get("COSMOS_LORA_DEBUG"):
        raise error
    err.print(f"[bold red]Error:[/] {error.problem}", markup=True)
    if error.fix:
        err.print(f"[bold]Fix:[/] {error.fix}", markup=True)
    return typer.Exit(error.exit_code)


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (Slurm's time limit, `kill`) stops a command as Ctrl-C does, unless someone handles it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def result(text: str) -> None:
    out.print(text, markup=False)


def result_json(payload: dict) -> None:
    print(json.dumps(payload, indent=1, default=str))


def note(text: str) -> None:
    err.print(text, markup=False)


def examples(*commands: str) -> str:
    """An epilog listing real commands (one per line in --help)."""
    return "[bold]Examples[/]\n\n" + "\n\n".join(f"  $ {c}" for c in commands)
