"""Prompts as the model is conditioned on them: the text, its negative (the unconditional branch of
classifier-free guidance), and a unique name that folders and video files are called by.

Shared by `infer` (prompts from options and files) and training's validation samples.
"""

import hashlib
import re
from dataclasses import dataclass

# The official text2world default negative prompt (cosmos-predict1).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)


@dataclass(frozen=True)
class Prompt:
    text: str
    name: str
    negative: str = DEFAULT_NEGATIVE_PROMPT
    seed: int | None = None


def slugify(text: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def prompt_folder(text: str) -> str:
    """The folder a prompt's videos go to: readable (its slug) and its own (a hash of the whole text), so
    prompts that differ after 60 characters, in case or punctuation, or only in non-ASCII letters never share one."""
    return f"{slugify(text)}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def named_prompts(entries: list[dict], negative: str = DEFAULT_NEGATIVE_PROMPT) -> list[Prompt]:
    """`{"prompt", optional "name", "negative_prompt", "seed"}` entries as prompts with unique names
    (the given name or `prompt_folder`; a repeated one gets -2, -3, ...)."""
    prompts, used = [], set()
    for entry in entries:
        name = entry.get("name") or prompt_folder(entry["prompt"])
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        prompts.append(Prompt(entry["prompt"], unique, entry.get("negative_prompt", negative), entry.get("seed")))
    return prompts
