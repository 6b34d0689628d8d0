"""`index.html`: every base-vs-LoRA comparison in a grid, playable in a browser.

Each comparison is a `<figure class="comparison">`; a small script marks it `data-state="playable"`
once the browser has read the video, or `"unplayable"` (with a note) when it cannot decode it.
"""

import html
from pathlib import Path
from urllib.parse import quote

from cosmos_lora.files import atomic_write

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cosmos-lora: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #111; color: #eee; }}
a {{ color: #8cf; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1.2rem; }}
figure {{ margin: 0; background: #1c1c1c; padding: .6rem; border-radius: 6px; }}
figure[data-state="unplayable"] {{ outline: 2px solid #c44; }}
video {{ width: 100%; display: block; }}
figcaption {{ font-size: .85rem; margin-top: .4rem; }}
.metrics {{ color: #aaa; font-size: .8rem; }}
</style></head>
<body><h1>{title}</h1><p>{count} comparisons. Same seed, same initial noise.
Under each: flicker (mean change between frames, 0-255), motion (pixels per frame) and the LoRA video's drift from the base one (PSNR, SSIM).</p>
<p class="models">Left: <span class="original">{original}</span>.<br>Right: <span class="lora">{lora}</span>.</p>
<div class="grid">
{figures}
</div>
<script>
for (const video of document.querySelectorAll("figure.comparison video")) {{
  const figure = video.closest("figure");
  const playable = () => {{ figure.dataset.state = "playable"; }};
  const unplayable = () => {{
    figure.dataset.state = "unplayable";
    figure.querySelector("figcaption").append(" (this browser cannot play it: open the mp4)");
  }};
  video.addEventListener("loadedmetadata", playable);
  video.addEventListener("error", unplayable);
  if (video.error) unplayable(); else if (video.readyState >= 1) playable();
}}
</script></body></html>
"""
_FIGURE = """<figure class="comparison" data-state="loading"><video src="{src}" controls loop muted playsinline preload="metadata"></video>
<figcaption><b>seed {seed}</b> &mdash; {prompt} &middot; <a href="{src}">mp4</a>{notes}</figcaption></figure>"""
_NOTE = '<br><span class="metrics">{}</span>'


def write_index(out_dir: Path, comparisons: list, original: str = "the base model", lora: str = "with the LoRA") -> Path:
    """`comparisons`: (job, compare video path, lines shown under it) triples; missing videos are left out.
    `original`, `lora`: what each side was sampled with (the checkpoint, the adapters)."""
    figures = [
        _FIGURE.format(src=html.escape(quote(path.relative_to(out_dir).as_posix())), seed=job.seed, prompt=html.escape(job.prompt.text),
                       notes="".join(_NOTE.format(html.escape(line)) for line in notes))
        for job, path, notes in comparisons
        if path.is_file()
    ]
    page = _PAGE.format(title=html.escape(out_dir.name), count=len(figures), figures="\n".join(figures),
                        original=html.escape(original), lora=html.escape(lora))
    return atomic_write(out_dir / "index.html", page)
