"""Prompts and the list of videos to make from them.

`--prompts-file` is `.txt` (one prompt per line) or `.jsonl` (`prompt`, optional
`negative_prompt`, `seed`, `name`). One job is one (prompt, seed) pair; it produces every
requested stage from the same initial noise, so the comparison isolates the LoRA.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cosmos_lora.errors import UserError

# The official text2world default negative prompt (cosmos-predict1).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)
STAGES = {"original": ("original",), "lora": ("lora",), "both": ("original", "lora")}


@dataclass(frozen=True)
class Prompt:
    text: str
    name: str
    negative: str = DEFAULT_NEGATIVE_PROMPT
    seed: int | None = None


@dataclass(frozen=True)
class Job:
    prompt: Prompt
    seed: int


def slugify(text: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def prompt_folder(text: str) -> str:
    """The folder a prompt's videos go to: readable (its slug) and its own (a hash of the whole text), so
    prompts that differ after 60 characters, in case or punctuation, or only in non-ASCII letters never share one."""
    return f"{slugify(text)}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def read_prompts(texts: list[str], file: Path | None, negative: str | None) -> list[Prompt]:
    """Prompts from `--prompt` options and a prompts file, with unique names."""
    negative = negative if negative is not None else DEFAULT_NEGATIVE_PROMPT
    if any(not t.strip() for t in texts):
        raise UserError("--prompt got an empty text.", "give every --prompt some words.")
    entries = [{"prompt": t} for t in texts] + (_read_file(Path(file)) if file else [])
    if not entries:
        raise UserError("No prompts given.", "pass --prompt TEXT (repeatable) or --prompts-file FILE.")
    prompts, used = [], set()
    for entry in entries:
        name = entry.get("name") or prompt_folder(entry["prompt"])
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        prompts.append(Prompt(entry["prompt"], unique, entry.get("negative_prompt", negative), entry.get("seed")))
    return prompts


JSONL_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "name": str}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"No prompts file at {path}.", "check the path given to --prompts-file.")
    if path.suffix == ".json":
        raise UserError(f"{path} is .json; prompts files are .jsonl or .txt.", 'write one {"prompt": ...} object per line in a .jsonl file.')
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}).", "save it as UTF-8.") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        return [{"prompt": line.strip()} for _, line in lines]
    return [_jsonl_entry(path, number, line) for number, line in lines]


def _jsonl_entry(path: Path, number: int, line: str) -> dict:
    fix = 'write one {"prompt": ..., "negative_prompt": ..., "seed": ..., "name": ...} object per line (only prompt is required).'
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{number} is not valid JSON ({error.msg}).", fix) from None
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise UserError(f"{path}:{number} has no \"prompt\" text.", fix)
    for key, value in entry.items():
        kind = JSONL_FIELDS.get(key)
        if kind is None:
            raise UserError(f"{path}:{number} has an unknown field {key!r}.", fix)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{path}:{number}: {key!r} must be {'an integer' if kind is int else 'a string'}, not {value!r}.", fix)
    if entry.get("seed", 0) < 0:
        raise UserError(f"{path}:{number}: seed {entry['seed']} is negative.", "use a seed >= 0.")
    if "name" in entry and not _NAME.match(entry["name"]):
        raise UserError(
            f"{path}:{number}: name {entry['name']!r} cannot be a folder name.",
            "use letters, digits, '.', '_' and '-' (not first), at most 100 characters.",
        )
    return entry


def plan_jobs(prompts: list[Prompt], num_videos: int, base_seed: int) -> list[Job]:
    """K seeds per prompt (base..base+K-1, or the prompt's own seed upwards)."""
    return [
        Job(prompt, (prompt.seed if prompt.seed is not None else base_seed) + k)
        for prompt in prompts
        for k in range(num_videos)
    ]


def shard(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """This process's share: every job exactly once across the processes."""
    return jobs[rank::world_size]
