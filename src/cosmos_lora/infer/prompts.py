"""Prompts and the list of videos to make from them.

`--prompts-file` is `.txt` (one prompt per line) or `.jsonl` (`prompt`, optional
`negative_prompt`, `seed`, `name`). One job is one (prompt, seed) pair; it produces every
requested stage from the same initial noise, so the comparison isolates the LoRA.
"""

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


def read_prompts(texts: list[str], file: Path | None, negative: str | None) -> list[Prompt]:
    """Prompts from `--prompt` options and a prompts file, with unique names."""
    negative = negative if negative is not None else DEFAULT_NEGATIVE_PROMPT
    entries = [{"prompt": t} for t in texts] + (_read_file(Path(file)) if file else [])
    if not entries:
        raise UserError("No prompts given.", "pass --prompt TEXT (repeatable) or --prompts-file FILE.")
    prompts, used = [], set()
    for entry in entries:
        name = entry.get("name") or slugify(entry["prompt"])
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        prompts.append(Prompt(entry["prompt"], unique, entry.get("negative_prompt", negative), entry.get("seed")))
    return prompts


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"No prompts file at {path}.", "check the path given to --prompts-file.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [{"prompt": line.strip()} for line in lines]
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number} is not valid JSON ({error.msg}).", 'write one {"prompt": ...} object per line.')
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise UserError(f"{path}:{number} has no \"prompt\" string.", 'write one {"prompt": ...} object per line.')
        entries.append(entry)
    return entries


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
