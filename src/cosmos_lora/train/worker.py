"""One training process: `python -m cosmos_lora.train.worker <run>/config.yaml` (torchrun starts it).

Exit codes: 0 finished, EXIT_STOPPED interrupted after saving (resumable), 1 user error, other: a bug.
"""

import contextlib
import signal
import sys

from omegaconf import OmegaConf

from cosmos_lora.distributed import close_distributed, init_distributed, report_error
from cosmos_lora.errors import EXIT_STOPPED, UserError
from cosmos_lora.run_folder import RunFolder
from cosmos_lora.train.status import write_status


def main(argv: list[str]) -> int:
    config = OmegaConf.load(argv[0])
    dist_info = init_distributed()
    trainer = None
    # the trainer installs its own stop handlers; also when it fails half-built, the caller's come back
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        from cosmos_lora.train.trainer import Trainer

        trainer = Trainer(config, dist_info)
        outcome = trainer.train()
        return 0 if outcome == "finished" else EXIT_STOPPED
    except UserError as error:  # rank 0's is the run's outcome in status.json; every rank's goes to the launcher
        _record_failure(config, trainer, dist_info, message=str(error))
        report_error(dist_info.rank, error)
        return 1
    except BaseException:
        _record_failure(config, trainer, dist_info)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        close_distributed()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record_failure(config, trainer, dist_info, message: str | None = None) -> None:
    """status.json says `failed`, unless this launch never started training and the run has a status from
    an earlier one (a resume that failed leaves a finished or interrupted run as it was). A status that
    cannot be written (a full disk) is not another error: the launcher reports this one."""
    if (trainer is None or not trainer.started) and RunFolder(config.job.run_dir).read_status() is not None:
        return
    with contextlib.suppress(OSError):
        write_status(config.job.run_dir, "failed", trainer.step if trainer else 0, dist_info, message=message)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
