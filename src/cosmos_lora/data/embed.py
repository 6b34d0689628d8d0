"""`cosmos-lora embed`: a T5 embedding for every caption of a dataset, in the official pickle format.

Clips whose embedding already exists and reads back are skipped, so an interrupted run resumes.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cosmos_lora.data.embeddings import read_t5_embedding, write_t5_embedding
from cosmos_lora.data.layout import DatasetLayout
from cosmos_lora.errors import UserError


@dataclass
class EmbedSummary:
    embedded: int
    skipped_existing: int
    missing_captions: list[str]


def _has_valid_embedding(path: Path) -> bool:
    try:
        read_t5_embedding(path)
        return True
    except (UserError, OSError):
        return False


def embed_dataset(root: Path, text_encoder_dir: Path, device: torch.device, dtype: torch.dtype, batch_size: int = 16) -> EmbedSummary:
    from cosmos_lora.model.text_encoder import T5TextEncoder

    layout = DatasetLayout(Path(root))
    clips = layout.clips()
    if not clips:
        raise UserError(f"Dataset {root} has no videos.", "run `cosmos-lora prepare` first, or check --dataset.")
    missing = [c for c in clips if not layout.caption(c).is_file()]
    todo = [c for c in clips if c not in missing and not _has_valid_embedding(layout.embedding(c))]
    skipped = len(clips) - len(missing) - len(todo)
    if todo:
        encoder = T5TextEncoder(text_encoder_dir, device, dtype)
        with _progress() as progress:
            task = progress.add_task("embed", total=len(todo))
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                captions = [layout.caption(c).read_text(encoding="utf-8").strip() for c in batch]
                for clip, embedding in zip(batch, encoder.encode(captions)):
                    write_t5_embedding(layout.embedding(clip), embedding)
                progress.advance(task, len(batch))
    return EmbedSummary(len(todo), skipped, [str(layout.caption(c)) for c in missing])


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=Console(stderr=True),
    )
