"""Leaving a finished process without the interpreter's teardown.

Once torch, diffusers and transformers are imported, Python's own exit (clearing every module, a last
garbage collection) takes about 1.5 s of one core on a 2-core machine. The `cosmos-lora` command and
each `infer` worker pay it after their work is done, and a caller (a script, the launcher waiting on
its workers) waits for it. Both leave through `exit_now` instead, only at the very end: by then every
file is published whole (`files.atomic_write`), every writer thread is joined and the process group
is down. Nothing registered with `atexit` runs, so nothing of ours relies on it.
"""

import os
import sys


def exit_now(code: int | str | None) -> None:
    """Flushes stdout and stderr, then ends the process with `code` (as `sys.exit` takes it)."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
