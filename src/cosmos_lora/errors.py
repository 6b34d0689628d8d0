"""The one exception type for user mistakes.

A `UserError` names the file or value at fault, the problem and the fix. The CLI prints it as one
line on stderr and exits 1 without a traceback (set COSMOS_LORA_DEBUG=1 to see it). Every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")
