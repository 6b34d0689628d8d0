"""`index.html`: every base-vs-LoRA comparison in a grid, playable in a browser."""

import html
from pathlib import Path

from cosmos_lora.paths import atomic_path

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cosmos-lora: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #111; color: #eee; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1.2rem; }}
figure {{ margin: 0; background: #1c1c1c; padding: .6rem; border-radius: 6px; }}
video {{ width: 100%; display: block; }}
figcaption {{ font-size: .85rem; margin-top: .4rem; }}
</style></head>
<body><h1>{title}</h1><p>Left: base model. Right: with the LoRA. Same seed, same initial noise.</p>
<div class="grid">
{figures}
</div></body></html>
"""
_FIGURE = """<figure class="comparison"><video src="{src}" controls loop muted playsinline preload="metadata"></video>
<figcaption><b>seed {seed}</b> &mdash; {prompt}</figcaption></figure>"""


def write_index(out_dir: Path, comparisons: list) -> Path:
    """`comparisons`: (job, compare video path) pairs; missing videos are left out."""
    figures = [
        _FIGURE.format(src=html.escape(path.relative_to(out_dir).as_posix()), seed=job.seed, prompt=html.escape(job.prompt.text))
        for job, path in comparisons
        if path.is_file()
    ]
    index = out_dir / "index.html"
    tmp = atomic_path(index)
    tmp.write_text(_PAGE.format(title=html.escape(out_dir.name), figures="\n".join(figures)), encoding="utf-8")
    tmp.replace(index)
    return index
