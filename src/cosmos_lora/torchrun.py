"""torchrun as the CLI starts it: `python -m cosmos_lora.torchrun <torchrun arguments>`.

The same launcher (`torch.distributed.run`, same arguments and behaviour), without the launcher's
own traceback and failure report: those appear when a worker stops on purpose (SIGTERM or Ctrl-C
after saving, or a user error the worker has already explained in one line) and would bury the
CLI's one-line outcome. A worker killed by a signal, which prints nothing itself, is still named.
Exits with the first failed worker's exit code, or EXIT_STOPPED when SIGTERM/SIGINT stopped the
workers (what `cosmos_lora.distributed.launch` reads as "stopped").
Only `cosmos_lora.distributed.launch` starts it.
"""

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from cosmos_lora.errors import EXIT_STOPPED
from cosmos_lora.quick_exit import exit_now


def _quiet_launcher_logs() -> None:
    """torch gives each elastic module's logger its own level, so the parent's level is not enough."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)


def main(argv: list[str]) -> int:
    _quiet_launcher_logs()
    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode in (-signal.SIGTERM, -signal.SIGINT):  # stopped, as asked: not a failure to explain
            return EXIT_STOPPED
        if failure.exitcode < 0:
            print(f"Error: rank {rank} was killed by signal {-failure.exitcode} ({signal.strsignal(-failure.exitcode)}): "
                  "out of host memory, or stopped from outside.", file=sys.stderr)
            return 1
        return failure.exitcode
    except SignalException:  # the workers got the signal too and have stopped
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))  # the workers have exited, the rendezvous is closed: skip the interpreter's teardown
