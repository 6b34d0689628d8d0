"""Source parsers for `cosmos-lora prepare`: what videos there are and which captions belong where.

A parser only reads; it never decodes video. It returns `SourceVideo`s and `failed.csv` rows for
what it could not use. Three layouts (`--source-format`, detected by `detect_source_format`):

folder  Videos anywhere under SRC, one caption per video: a `.txt` sidecar with the video's stem,
        else a row of `captions.csv` (`path,caption`) or `captions.jsonl` (`{"path", "caption"}`)
        at the top of SRC, paths relative to SRC. Clips are cut from the start of each video.

vript   Vript's release, unzipped (detected by a `vript_captions/` folder):
            SRC/vript_captions/<video_id>_caption.json   (or <video_id>.json, or *.jsonl), any depth
            SRC/vript_meta/*.json                        (or *.jsonl) with each video's `categories`
            SRC/**/<video_id>.mp4                        the videos, anywhere else under SRC
        A caption file is Vript's per-video object
            {"meta": {"video_id": "X", ...},
             "data": {"X-Scene-001": {"clip_id": "X-Scene-001",
                                      "caption": {"shot_type": ..., "camera_movement": ...,
                                                  "content": ..., "scene_title": ...},
                                      "timestamp": "00:00:01.000-00:00:05.000"}, ...}}
        where "data" may also be called "clips" or "scenes" and be a list; a JSONL line is such an
        object or one scene (with "video_id", or a clip_id "<video_id>-Scene-NNN"). A scene's time
        is `timestamp` ("HH:MM:SS.mmm-HH:MM:SS.mmm", or a [start, end] pair), or `start`/`end`
        (also `start_time`/`end_time`), each a time stamp or seconds; when the scene has none, the
        meta entry's "clips" (same forms, keyed by clip_id) is asked. Its caption is `caption`
        (or `content`): a string, or Vript's object, which becomes
        "<content> Shot type: <shot_type>. Camera movement: <camera_movement>." (scene_title and
        voice-over are left out). A meta file maps video_id -> entry (or is a list/JSONL of entries
        with "video_id"); the entry's `categories` (or `category`; a list gives its first) names
        the domain, slugified ("Science & Technology" -> "science-technology"; none:
        "uncategorized"). Clips are cut from the start of each video, and each takes the caption
        of the scene it overlaps longest in time (ties: the earlier scene); a clip no scene
        overlaps is not cut.

panda   Panda-70M / UltraVideo-style CSV files at the top of SRC (or SRC itself is the CSV), for
        videos already on disk. Columns: the video (`path`, `video_path` or `file`: a path
        relative to the CSV's folder; or `videoID`, `video_id`, `video` or `id`: matched to a
        video file with that stem anywhere under it), the time ranges (`timestamp`/`timestamps`:
        `[['0:00:01.000', '0:00:05.000'], ...]`, one pair, or "a-b"; or `start` and `end`) and
        the captions (`caption`/`captions`: a list aligned with the ranges, or one string for one
        range). Rows naming the same video are merged. Clips come only from inside a range and
        take its caption.
"""

import ast
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cosmos_lora.errors import UserError

SOURCE_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
CAPTION_TABLES = ("captions.csv", "captions.jsonl")
SOURCE_FORMATS = ("auto", "folder", "vript", "panda")
VRIPT_CAPTIONS, VRIPT_META = "vript_captions", "vript_meta"
UNCATEGORIZED = "uncategorized"

PANDA_VIDEO_PATH_COLUMNS = ("path", "video_path", "file")
PANDA_VIDEO_ID_COLUMNS = ("videoID", "video_id", "video", "id")
PANDA_TIME_COLUMNS = ("timestamp", "timestamps")
PANDA_CAPTION_COLUMNS = ("caption", "captions")


@dataclass(frozen=True)
class TimedCaption:
    """A caption for `start`..`end` seconds of a video; `label` goes to index.csv's caption_source."""

    start: float
    end: float
    caption: str
    label: str


@dataclass(frozen=True)
class SourceVideo:
    path: Path
    name: str  # unique within the source; clips are named `<name>_<k:03d>` (ranges: `<name>_<r:03d>_<k:03d>`)
    caption: str = ""  # one caption for the whole video (folder sources)
    caption_source: str = ""  # "sidecar", "captions.csv" or "captions.jsonl"
    scenes: tuple[TimedCaption, ...] = ()  # Vript: clips anywhere, captioned by the longest-overlapping scene
    ranges: tuple[TimedCaption, ...] = ()  # Panda-70M: clips only inside a range, captioned by it
    domain: str = ""  # sub-folder of the output dataset (Vript: the category slug)


def find_sources(src: Path, source_format: str, exclude: Path | None = None
                 ) -> tuple[list[SourceVideo], list[dict], str]:
    """(sources, failed.csv rows, the format used) for SRC, a folder (or, for panda, a CSV file)."""
    if source_format not in SOURCE_FORMATS:
        raise UserError(f"Unknown source format {source_format!r}.", f"use one of {', '.join(SOURCE_FORMATS)}.")
    fmt = detect_source_format(src) if source_format == "auto" else source_format
    parser = {"folder": find_folder_sources, "vript": find_vript_sources, "panda": find_panda_sources}[fmt]
    sources, failures = parser(src, exclude)
    return sources, failures, fmt


def detect_source_format(src: Path) -> str:
    """vript if SRC has a `vript_captions/` folder; panda if SRC is, or holds at its top, a CSV with
    time ranges; otherwise folder."""
    if src.is_file():
        return "panda"
    if (src / VRIPT_CAPTIONS).is_dir():
        return "vript"
    if any(_time_columns(_csv_header(table)) for table in sorted(src.glob("*.csv"))):
        return "panda"
    return "folder"


def slugify(text: str) -> str:
    """'Science & Technology' -> 'science-technology' (letters of any script kept)."""
    return re.sub(r"[\W_]+", "-", text.casefold()).strip("-") or UNCATEGORIZED


def parse_time(value) -> float:
    """Seconds from a number or an 'H:MM:SS.mmm' / 'MM:SS.mmm' / 'SS.mmm' time stamp."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        parts = str(value).strip().split(":")
        if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d*)?", p.strip()) for p in parts):
            raise ValueError(f"not a time stamp: {value!r}")
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {value!r}")
    return seconds


def parse_range(value) -> tuple[float, float]:
    """(start, end) seconds from 'a-b' / 'a --> b', a [start, end] pair or {"start", "end"}."""
    if isinstance(value, dict):
        value = (_first(value, ("start", "start_time")), _first(value, ("end", "end_time")))
    if isinstance(value, str):
        value = re.split(r"\s*(?:-->|–|-)\s*", value.strip())
    if not isinstance(value, (list, tuple)) or len(value) != 2 or None in value:
        raise ValueError(f"not a time range: {value!r}")
    start, end = parse_time(value[0]), parse_time(value[1])
    if end <= start:
        raise ValueError(f"time range ends before it starts: {value!r}")
    return start, end


# ---------------------------------------------------------------- folder: one caption per video


def find_folder_sources(src: Path, exclude: Path | None = None) -> tuple[list[SourceVideo], list[dict]]:
    """Videos under `src` (recursive) with their captions, and `failed.csv` rows for those without one.

    A caption comes from a `.txt` sidecar with the video's stem, else from `captions.csv`
    (`path,caption`) or `captions.jsonl` (`{"path": ..., "caption": ...}`) at the top of `src`, with
    paths relative to `src`.
    """
    paths, failures = find_videos(src, exclude)
    table, table_failures = _read_caption_tables(src)
    failures += table_failures
    names = unique_names(src, paths)
    sources = []
    for path in paths:
        rel = relative(src, path)
        sidecar = path.with_suffix(".txt")
        try:
            caption = read_text(sidecar).strip() if sidecar.is_file() else ""
        except UserError as err:
            failures.append({"source": rel, "reason": _one_line(err.problem)})
            continue
        caption_source = "sidecar"
        if not caption and rel in table:
            caption, caption_source = table[rel]
        if caption:
            sources.append(SourceVideo(path, names[path], caption, caption_source))
        else:
            failures.append({"source": rel, "reason": f"no caption: add {sidecar.name} beside it or a row "
                                                     f"in {CAPTION_TABLES[0]} / {CAPTION_TABLES[1]}"})
    found = {relative(src, path) for path in paths}
    for listed, (_, table_name) in table.items():
        if listed not in found:
            failures.append({"source": listed, "reason": f"listed in {table_name} but no such video under {src}"})
    return sources, failures


def _read_caption_tables(src: Path) -> tuple[dict[str, tuple[str, str]], list[dict]]:
    """{path relative to src: (caption, table file name)} from captions.csv and captions.jsonl, and a
    failed.csv row for a table that cannot be used (the videos it captions then fail as uncaptioned)."""
    table, failures = {}, []
    for name in CAPTION_TABLES:
        file = src / name
        if not file.is_file():
            continue
        try:
            rows = _read_csv_captions(file) if name.endswith(".csv") else _read_jsonl_captions(file)
        except UserError as err:
            failures.append({"source": name, "reason": _one_line(f"{err.problem} Fix: {err.fix}")})
            continue
        table.update({_normalise(src, path): (caption.strip(), name) for path, caption in rows if caption.strip()})
    return table, failures


def _read_csv_captions(file: Path) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(read_text(file), newline=""))
    if not {"path", "caption"} <= set(reader.fieldnames or []):
        raise UserError(f"{file} has columns {reader.fieldnames}; it needs a header row with 'path' and 'caption'.",
                        "make the first line `path,caption` and quote captions that contain commas.")
    return [(row["path"] or "", row["caption"] or "") for row in reader]


def _read_jsonl_captions(file: Path) -> list[tuple[str, str]]:
    rows = []
    for line_number, line in enumerate(read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append((str(record["path"]), str(record["caption"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{file} line {line_number} is not a JSON object with 'path' and 'caption'.",
                            'write one object per line: {"path": "sub/video.mp4", "caption": "..."}.') from None
    return rows


# ---------------------------------------------------------------- vript: scenes with time stamps, categories


def find_vript_sources(src: Path, exclude: Path | None = None) -> tuple[list[SourceVideo], list[dict]]:
    """Vript videos with their time-stamped scenes and category domain (layout: module docstring)."""
    captions_dir = src / VRIPT_CAPTIONS
    if not captions_dir.is_dir():
        raise UserError(f"{src} has no {VRIPT_CAPTIONS}/ folder, so it is not in Vript's layout.",
                        f"unzip Vript's caption files into {captions_dir}, or pick another --source-format.")
    meta, failures = _read_vript_meta(src)
    scenes, caption_failures = _read_vript_captions(src, captions_dir, meta)
    videos, video_failures = find_videos(src, exclude)
    failures += caption_failures + video_failures
    by_stem = _by_stem(videos)
    names = unique_names(src, videos)
    sources = []
    for video_id in sorted(scenes):
        found, label = by_stem.get(video_id, []), scenes[video_id][1]
        timed = tuple(s for s in scenes[video_id][0] if s is not None)
        if len(found) != 1:
            what = "no video" if not found else f"{len(found)} videos ({', '.join(relative(src, p) for p in found)})"
            failures.append({"source": label, "reason": f"{what} named {video_id}.* under {src}"})
        elif not timed:
            failures.append({"source": relative(src, found[0]), "reason": f"no scene in {label} has a caption "
                                                                         "and a time stamp"})
        else:
            category = slugify(_vript_category(meta.get(video_id, {})))
            sources.append(SourceVideo(found[0], names[found[0]], scenes=timed, domain=category))
    captioned = {path for video_id in scenes for path in by_stem.get(video_id, [])}
    failures += [{"source": relative(src, path), "reason": f"no Vript caption file for it in {VRIPT_CAPTIONS}/"}
                 for path in videos if path not in captioned]
    return sources, failures


def _read_vript_meta(src: Path) -> tuple[dict[str, dict], list[dict]]:
    """{video_id: meta entry} from vript_meta/ (any depth) and `*meta*.json(l)` at the top of SRC, and
    failed.csv rows for meta files that cannot be read (their videos go to "uncategorized")."""
    files = sorted((src / VRIPT_META).rglob("*.json*")) if (src / VRIPT_META).is_dir() else []
    files += sorted(p for p in src.glob("*meta*.json*") if p.is_file())
    meta, failures = {}, []
    for file in files:
        try:
            records = _json_records(file)
        except UserError as err:
            failures.append({"source": relative(src, file), "reason": _one_line(err.problem)})
            continue
        for record in records:
            if isinstance(record, dict) and "video_id" in record:
                meta[str(record["video_id"])] = record
            elif isinstance(record, dict):  # {video_id: entry}
                meta.update({str(k): v for k, v in record.items() if isinstance(v, dict)})
            elif isinstance(record, list):
                meta.update({str(e["video_id"]): e for e in record if isinstance(e, dict) and "video_id" in e})
    return meta, failures


def _read_vript_captions(src: Path, captions_dir: Path, meta: dict[str, dict]
                         ) -> tuple[dict[str, tuple[list, str]], list[dict]]:
    """{video_id: ([TimedCaption or None for an unusable scene], caption file)} and failed rows."""
    scenes: dict[str, tuple[list, str]] = {}
    failures = []
    for file in sorted(p for p in captions_dir.rglob("*.json*") if p.suffix in (".json", ".jsonl")):
        label = relative(src, file)
        try:
            records = _json_records(file)
        except UserError as err:
            failures.append({"source": label, "reason": _one_line(err.problem)})
            continue
        stem_id = file.stem.removesuffix("_caption")
        for record in records:
            for video_id, clip_id, scene in _vript_scenes(record, stem_id if file.suffix == ".json" else None):
                clip_meta = _clip_meta(meta.get(video_id, {}), clip_id)
                scenes.setdefault(video_id, ([], label))[0].append(_vript_scene(scene, clip_id, clip_meta))
    return scenes, failures


def _vript_scenes(record, default_video_id: str | None):
    """(video_id, clip_id, scene dict) for every scene in one caption object or JSONL line."""
    if not isinstance(record, dict):
        return
    container = _first(record, ("data", "clips", "scenes"))
    if container is None and ("caption" in record or "content" in record):  # one scene on its own
        clip_id = str(record.get("clip_id", ""))
        video_id = _video_id_of(record) or clip_id.split("-Scene-")[0] or default_video_id
        if video_id:
            yield str(video_id), clip_id, record
        return
    video_id = _video_id_of(record) or default_video_id
    items = container.items() if isinstance(container, dict) else enumerate(container or [])
    for key, scene in items:
        if isinstance(scene, dict):
            clip_id = str(scene.get("clip_id", key if isinstance(key, str) else f"scene {key + 1}"))
            scene_video = scene.get("video_id") or video_id or clip_id.split("-Scene-")[0]
            yield str(scene_video), clip_id, scene


def _video_id_of(record: dict) -> str | None:
    meta = record.get("meta")
    value = record.get("video_id") or (meta.get("video_id") if isinstance(meta, dict) else None)
    return str(value) if value else None


def _clip_meta(entry: dict, clip_id: str):
    clips = entry.get("clips") if isinstance(entry, dict) else None
    if isinstance(clips, dict):
        return clips.get(clip_id)
    if isinstance(clips, list):
        return next((c for c in clips if isinstance(c, dict) and c.get("clip_id") == clip_id), None)
    return None


def _vript_scene(scene: dict, clip_id: str, clip_meta) -> TimedCaption | None:
    """The scene's caption and time span, or None when either is missing or unreadable."""
    caption = _vript_caption_text(_first(scene, ("caption", "content")))
    for holder in (scene, clip_meta):
        try:
            start, end = _scene_span(holder)
            break
        except (ValueError, TypeError):
            continue
    else:
        return None
    return TimedCaption(start, end, caption, f"vript scene {clip_id}") if caption else None


def _scene_span(holder) -> tuple[float, float]:
    if isinstance(holder, (str, list, tuple)):
        return parse_range(holder)
    if not isinstance(holder, dict):
        raise ValueError("no time")
    stamp = _first(holder, ("timestamp", "timestamps", "time"))
    return parse_range(stamp if stamp is not None else holder)


def _vript_caption_text(caption) -> str:
    if isinstance(caption, str):
        return " ".join(caption.split())
    if not isinstance(caption, dict):
        return ""
    parts = [str(caption.get("content") or "").strip()]
    for key, name in (("shot_type", "Shot type"), ("camera_movement", "Camera movement")):
        value = str(caption.get(key) or "").strip().rstrip(".")
        parts.append(f"{name}: {value}." if value else "")
    return " ".join(" ".join(p for p in parts if p).split())


def _vript_category(entry: dict) -> str:
    value = _first(entry, ("categories", "category")) if isinstance(entry, dict) else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return str(value).strip() if value else UNCATEGORIZED


# ---------------------------------------------------------------- panda: captioned time ranges in CSV rows


def find_panda_sources(src: Path, exclude: Path | None = None) -> tuple[list[SourceVideo], list[dict]]:
    """Videos with the captioned time ranges that CSV rows give them (layout: module docstring)."""
    tables = [src] if src.is_file() else [t for t in sorted(src.glob("*.csv")) if _time_columns(_csv_header(t))]
    folder = src.parent if src.is_file() else src
    if not tables:
        raise UserError(f"{src} holds no CSV with a time range column ({', '.join(PANDA_TIME_COLUMNS)} or "
                        "start/end).",
                        "put the Panda-70M style CSV at the top of SRC, or pick another --source-format.")
    videos, failures = find_videos(folder, exclude)
    by_stem, by_path = _by_stem(videos), {relative(folder, p): p for p in videos}
    ranges: dict[Path, list[TimedCaption]] = {}
    for table in tables:
        try:
            rows = list(_panda_rows(table))
        except UserError as err:
            failures.append({"source": table.name, "reason": _one_line(err.problem)})
            continue
        for line, key, row_ranges, problem in rows:
            label = f"{table.name} line {line}"
            path, missing = _panda_video(folder, key, by_stem, by_path)
            if problem or missing:
                failures.append({"source": label, "reason": problem or missing})
                continue
            ranges.setdefault(path, []).extend(TimedCaption(start, end, caption, f"{label} range {i}")
                                               for i, (start, end, caption) in enumerate(row_ranges))
    names = unique_names(folder, list(ranges))
    sources = [SourceVideo(path, names[path], ranges=tuple(timed)) for path, timed in sorted(ranges.items())]
    return sources, failures


def _panda_rows(table: Path):
    """(line, video key, [(start, end, caption)], problem) for each data row of one CSV."""
    with io.StringIO(read_text(table), newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        video_column = next((c for c in PANDA_VIDEO_PATH_COLUMNS + PANDA_VIDEO_ID_COLUMNS if c in columns), None)
        caption_column = next((c for c in PANDA_CAPTION_COLUMNS if c in columns), None)
        time_columns = _time_columns(columns)
        if not (video_column and caption_column and time_columns):
            raise UserError(
                f"{table} has columns {columns}; a Panda-70M style CSV needs a video column "
                f"({' / '.join(PANDA_VIDEO_PATH_COLUMNS + PANDA_VIDEO_ID_COLUMNS)}), time ranges "
                f"({' / '.join(PANDA_TIME_COLUMNS)}, or start and end) and {' / '.join(PANDA_CAPTION_COLUMNS)}.",
                "rename the columns, e.g. `videoID,timestamp,caption`.")
        for row in reader:
            try:
                spans = _row_spans(row, time_columns)
                captions = _row_captions(row[caption_column] or "")
                problem = None if len(spans) == len(captions) else (
                    f"{len(spans)} time range(s) but {len(captions)} caption(s)")
            except (ValueError, SyntaxError) as err:
                spans, captions, problem = [], [], f"unreadable time range: {_one_line(str(err))}"
            if not problem and not any(c.strip() for c in captions):
                problem = "no caption"
            triples = [(s, e, " ".join(c.split())) for (s, e), c in zip(spans, captions) if c.strip()]
            yield reader.line_num, (row[video_column] or "").strip(), triples, problem


def _row_spans(row: dict, time_columns: tuple[str, ...]) -> list[tuple[float, float]]:
    if len(time_columns) == 2:  # start, end
        return [parse_range((row[time_columns[0]], row[time_columns[1]]))]
    value = (row[time_columns[0]] or "").strip()
    if not value.startswith("["):
        return [parse_range(value)]
    parsed = ast.literal_eval(value)  # literals only: no code runs
    if len(parsed) == 2 and not isinstance(parsed[0], (list, tuple)):
        parsed = [parsed]  # a single [start, end] pair
    return [parse_range(pair) for pair in parsed]


def _row_captions(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
            if isinstance(parsed, (list, tuple)) and all(isinstance(c, str) for c in parsed):
                return list(parsed)
        except (ValueError, SyntaxError):
            pass  # a caption that merely starts with '['
    return [value]


def _panda_video(folder: Path, key: str, by_stem: dict, by_path: dict) -> tuple[Path | None, str | None]:
    if not key:
        return None, "no video named in the row"
    if Path(key).suffix.lower() in SOURCE_SUFFIXES or "/" in key or "\\" in key:
        path = by_path.get(_normalise(folder, key))
        if path is None and Path(key).is_absolute() and Path(key).is_file():
            path = Path(key)
        return (path, None) if path else (None, f"no video {key} under {folder}")
    found = by_stem.get(key, [])
    if len(found) == 1:
        return found[0], None
    what = "no video" if not found else f"{len(found)} videos"
    return None, f"{what} named {key}.* under {folder}"


def _csv_header(table: Path) -> list[str]:
    """The header row, or [] for a file that cannot be read (it then fails where it is read in full)."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _time_columns(columns: list[str]) -> tuple[str, ...]:
    single = next((c for c in PANDA_TIME_COLUMNS if c in columns), None)
    if single:
        return (single,)
    return ("start", "end") if {"start", "end"} <= set(columns) else ()


# ---------------------------------------------------------------- shared


def find_videos(src: Path, exclude: Path | None) -> tuple[list[Path], list[dict]]:
    """The video files under `src` (recursive, sorted), and a failed.csv row for every folder that
    cannot be listed and every video name that is not a readable file (a dangling link), so nothing
    is dropped without a reason. Hidden entries (our own temporary files among them) and the output
    folder, which may sit inside `src`, are left out."""
    exclude = exclude.resolve() if exclude is not None else None
    paths, failures = [], []

    def unreadable(error: OSError) -> None:
        where = relative(src, Path(error.filename)) if error.filename else str(src)
        failures.append({"source": where + "/", "reason": f"folder cannot be read: {error.strerror or error}"})

    for folder, dirs, files in os.walk(src, onerror=unreadable):
        folder = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (exclude is not None and (folder / d).resolve().is_relative_to(exclude)))
        for name in sorted(files):
            path = folder / name
            if name.startswith(".") or path.suffix.lower() not in SOURCE_SUFFIXES:
                continue
            if not path.is_file():
                failures.append({"source": relative(src, path), "reason": "not a readable file (a dangling link?)"})
            elif not os.access(path, os.R_OK):
                failures.append({"source": relative(src, path), "reason": "file cannot be read: permission denied"})
            else:
                paths.append(path)
    return sorted(paths), failures


def unique_names(src: Path, paths: list[Path]) -> dict[Path, str]:
    """The stem, or for stems found twice (`a/x.mp4`, `b/x.mov`) the relative path, so clips never collide."""
    stems = [path.stem for path in paths]
    return {path: path.stem if stems.count(path.stem) == 1 else relative(src, path).replace("/", "_").replace(".", "_")
            for path in paths}


def relative(src: Path, path: Path) -> str:
    """`path` relative to `src` as posix text (absolute when it lies outside)."""
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return path.as_posix()


def _by_stem(paths: list[Path]) -> dict[str, list[Path]]:
    stems: dict[str, list[Path]] = {}
    for path in paths:
        stems.setdefault(path.stem, []).append(path)
    return stems


def _normalise(src: Path, listed: str) -> str:
    """A listed path as the posix path relative to `src` (absolute paths inside src allowed)."""
    path = Path(listed.strip())
    if path.is_absolute():
        try:
            return path.resolve().relative_to(src.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return PurePosixPath(listed.strip().replace("\\", "/")).as_posix().removeprefix("./")


def read_text(file: Path) -> str:
    """A UTF-8 text file (a leading BOM dropped); a file that is not UTF-8 or cannot be read is a
    UserError naming it, which the parsers turn into a failed.csv row."""
    try:
        return file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{file.name} is not UTF-8 text (byte {err.start}).",
                        "re-save it as UTF-8.") from None
    except OSError as err:
        raise UserError(f"{file.name} cannot be read: {err.strerror or err}.", "check its permissions.") from None


def _json_records(file: Path) -> list:
    """The object of a .json file, or the objects of a .jsonl file (one per line)."""
    text = read_text(file)
    try:
        if file.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return [json.loads(text)]
    except json.JSONDecodeError as err:
        raise UserError(f"{file} is not valid JSON: {err}.", "re-extract it from the dataset's archive.") from None


def _first(mapping: dict, keys: tuple[str, ...]):
    return next((mapping[k] for k in keys if k in mapping and mapping[k] is not None), None)


def _one_line(text: str) -> str:
    return " ".join(text.split())
