"""Where things live inside one dataset folder (the official cosmos-predict1 layout).

```
<root>/videos/<clip>.mp4      one training clip
<root>/metas/<clip>.txt       its caption
<root>/t5_xxl/<clip>.pickle   its T5 embedding (written by `cosmos-lora embed`)
<root>/t5_xxl/<clip>.json     what that embedding was made from (see `data.embeddings`)
<root>/index.csv              where each clip came from (written by `prepare`)
<root>/failed.csv             sources `prepare` skipped, with the reason
<root>/cut.json               how `prepare` cut the clips (frames, size, limits): one cut per dataset
```
Every stage names these paths through `DatasetLayout` so they cannot drift apart.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

from cosmos_lora.files import publishing

INDEX_COLUMNS = ["clip", "source", "start_frame", "start_time", "fps", "frames", "height", "width", "caption_source"]
FAILED_COLUMNS = ["source", "reason"]


@dataclass(frozen=True)
class DatasetLayout:
    root: Path

    @property
    def videos_dir(self) -> Path:
        return self.root / "videos"

    @property
    def metas_dir(self) -> Path:
        return self.root / "metas"

    @property
    def t5_dir(self) -> Path:
        return self.root / "t5_xxl"

    @property
    def index_csv(self) -> Path:
        return self.root / "index.csv"

    @property
    def failed_csv(self) -> Path:
        return self.root / "failed.csv"

    @property
    def cut_json(self) -> Path:
        return self.root / "cut.json"

    def video(self, clip: str) -> Path:
        return self.videos_dir / f"{clip}.mp4"

    def caption(self, clip: str) -> Path:
        return self.metas_dir / f"{clip}.txt"

    def embedding(self, clip: str) -> Path:
        return self.t5_dir / f"{clip}.pickle"

    def clips(self) -> list[str]:
        """Clip names (video stems), sorted so every rank and every run sees the same order."""
        if not self.videos_dir.is_dir():
            return []
        return sorted(p.stem for p in self.videos_dir.glob("*.mp4") if not p.name.startswith("."))


def update_index(layout: DatasetLayout, rows: list[dict]) -> None:
    """Merges `rows` into `index.csv` by clip name, so a resumed or extended run keeps earlier clips."""
    merged = {}
    if layout.index_csv.is_file():
        with open(layout.index_csv, newline="", encoding="utf-8") as f:
            merged = {row["clip"]: row for row in csv.DictReader(f) if row.get("clip")}
    merged.update({row["clip"]: row for row in rows})
    write_csv(layout.index_csv, INDEX_COLUMNS, [merged[clip] for clip in sorted(merged)])


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Writes a CSV with a header row, through a temporary file so readers never see half of it."""
    with publishing(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
