"""The one exception type for user mistakes, and the CLI's exit codes.

A `UserError` names the file or value at fault, the problem and the fix. The CLI prints it as one
line on stderr and exits 1 without a traceback (set COSMOS_LORA_DEBUG=1 to see it). Every other
exception is a bug and keeps its traceback.

`Stopped` is the outcome of Ctrl-C or SIGTERM: the work saved what it had and the same command
continues it. Every command exits EXIT_STOPPED for it, so a script (or a Slurm requeue) can tell
"rerun me" from "fix something first".

`Problems` gathers the UserErrors of independent checks, so one command names every mistake at once.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_ERROR = 1
EXIT_STOPPED = 3  # stopped by Ctrl-C or SIGTERM; rerun (the printed command) to continue


class UserError(Exception):
    exit_code = EXIT_ERROR

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


class Stopped(UserError):
    """Ctrl-C or SIGTERM stopped the work after it kept what it had finished; `fix` says how to go on."""

    exit_code = EXIT_STOPPED


def load_failure(error: Exception) -> str:
    """One line on why a file could not be loaded, for a UserError's problem.

    torch's weights-only unpickler explains a refused global in a paragraph that ends by advising
    to allow-list it; only the global is kept: a file that names one is refused, never allowed.
    """
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused:
        return f"it refers to {refused.group(1)}; refusing to run code from it"
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Problems:
    """The UserErrors a series of independent checks found; `raise_any` reports them as one."""

    def __init__(self) -> None:
        self.errors: list[UserError] = []

    def __bool__(self) -> bool:
        return bool(self.errors)

    def add(self, problem: str, fix: str | None = None) -> None:
        self.errors.append(UserError(problem, fix))

    @contextmanager
    def check(self) -> Iterator[None]:
        """Runs one check: its UserError is kept and the next check runs (a stop still stops)."""
        try:
            yield
        except Stopped:
            raise
        except UserError as error:
            self.errors.append(error)

    def raise_any(self) -> None:
        """One problem as it is; several as one message, one problem (with its fix) per line."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            listed = "\n".join(f"  - {error}" for error in self.errors)
            raise UserError(f"{len(self.errors)} problems; fix each, then run the command again:\n{listed}")
