"""One training process: `python -m cosmos_lora.train.worker <run>/config.yaml` (torchrun starts it).

Exit codes: 0 finished, 3 interrupted after saving (resumable), 1 user error, other: a bug.
"""

import sys

from omegaconf import OmegaConf

from cosmos_lora.errors import UserError
from cosmos_lora.distributed import close_distributed, init_distributed
from cosmos_lora.train.status import write_status

EXIT_INTERRUPTED = 3


def main(config_path: str) -> int:
    config = OmegaConf.load(config_path)
    dist_info = init_distributed()
    trainer = None
    try:
        from cosmos_lora.train.trainer import ClipError, Trainer

        trainer = Trainer(config, dist_info)
        outcome = trainer.train()
        return 0 if outcome == "finished" else EXIT_INTERRUPTED
    except UserError as error:  # rank 0's: the launcher repeats it from the status as the run's one-line outcome
        write_status(config.job.run_dir, "failed", trainer.step if trainer else 0, dist_info, message=str(error))
        if isinstance(error, ClipError) and not dist_info.is_main:  # only this rank knows it
            print(f"Error (rank {dist_info.rank}): {error}", file=sys.stderr)
        return 1
    except BaseException:
        write_status(config.job.run_dir, "failed", trainer.step if trainer else 0, dist_info)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        close_distributed()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
