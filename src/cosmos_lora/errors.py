"""The one exception type for user mistakes.

A `UserError` names the file or value at fault, the problem and the fix. The CLI prints it as one
line on stderr and exits 1 without a traceback (set COSMOS_LORA_DEBUG=1 to see it). Every other
exception is a bug and keeps its traceback.
"""

import re


class UserError(Exception):
    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


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
