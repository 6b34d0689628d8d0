"""The three data roots and names inside them.

Roots come from CLI options, else the environment, else folders in the current directory:
`COSMOS_LORA_CHECKPOINTS` (./checkpoints), `COSMOS_LORA_DATASETS` (./datasets),
`COSMOS_LORA_OUTPUTS` (./outputs).
"""

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cosmos_lora.errors import UserError


@dataclass(frozen=True)
class Roots:
    checkpoints: Path
    datasets: Path
    outputs: Path

    @classmethod
    def from_env(cls, checkpoints=None, datasets=None, outputs=None) -> "Roots":
        return cls(
            checkpoints=Path(checkpoints or os.environ.get("COSMOS_LORA_CHECKPOINTS", "checkpoints")),
            datasets=Path(datasets or os.environ.get("COSMOS_LORA_DATASETS", "datasets")),
            outputs=Path(outputs or os.environ.get("COSMOS_LORA_OUTPUTS", "outputs")),
        )

    @property
    def runs(self) -> Path:
        """Where training runs go: one `run_folder.RunFolder` each."""
        return self.outputs / "runs"

    def dataset(self, name: str) -> Path:
        return self.datasets / check_dataset_name(name)


def check_dataset_name(name: str) -> str:
    """`vript/sports` style: relative, no `..`, no empty parts. Returns it normalised."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or name.startswith(("/", "\\")) or Path(name).is_absolute() or not parts or any(
        p in ("..", ".", "") for p in parts
    ):
        raise UserError(
            f"Dataset name {name!r} must be a path inside the datasets folder, like 'vript/sports'.",
            "give COLLECTION/DOMAIN without '..' or a leading '/'; use --datasets-dir to change the root.",
        )
    return "/".join(parts)

