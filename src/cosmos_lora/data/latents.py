"""The latent cache: every clip encoded once by the video tokenizer, stored beside the dataset.

```
<root>/latents/<key>/cache.json            what made the cache: tokenizer folder and file hashes,
                                           frames, size, pixel chunk, encode precision
<root>/latents/<key>/<clip>.safetensors    tensor "latent": float32 [16, 1 + (F-1)/8, H/8, W/8], the
                                           tokenizer's normalised output (before the x sigma_data)
                                           for the first F frames of the clip, cover-resized and
                                           centre-cropped to H x W exactly as `VideoTextDataset`
                                           does; metadata: key, fps, the video's fingerprint
<root>/latents/<key>/failed.csv            clips `embed --latents` could not encode, with the reason
<key> = <tokenizer hash>-<F>x<H>x<W>       e.g. 3f9a1c0b22de-121x704x1280 (+ "-chunk<C>" when F > C)
```

The key names everything that changes a latent, so a cache made with another tokenizer, size or
frame count is simply another folder and is never read by mistake. The tokenizer hash covers the
files `encode` uses (encoder.jit, mean_std.pt), not their path. Inside a folder an entry is used
only while its recorded fingerprint (size and SHA-256 of the whole clip file) still matches the
clip's video, so a clip re-cut by `prepare` or replaced by hand falls back to decoding until
`embed --latents` encodes it again.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cosmos_lora.model.tokenizer import LATENT_CHANNELS, SPATIAL_COMPRESSION, latent_frames
from cosmos_lora.files import atomic_write, publishing

LATENTS_DIR = "latents"
CACHE_INFO = "cache.json"
TENSOR = "latent"
HASHED_TOKENIZER_FILES = ("encoder.jit", "mean_std.pt")  # what `VideoTokenizer.encode` depends on


def latent_cache_dir(root: Path, tokenizer_dir: Path, num_frames: int, height: int, width: int,
                     pixel_chunk: int = 121) -> Path:
    """Where the latents of `root`'s clips for this tokenizer, frame count and size live (may not exist)."""
    return Path(root) / LATENTS_DIR / latent_key(tokenizer_dir, num_frames, height, width, pixel_chunk)


def latent_key(tokenizer_dir: Path, num_frames: int, height: int, width: int, pixel_chunk: int = 121) -> str:
    """`<tokenizer hash>-<F>x<H>x<W>`, plus `-chunk<C>` when the clip is encoded in several chunks."""
    key = f"{tokenizer_hash(tokenizer_dir)}-{num_frames}x{height}x{width}"
    return key + (f"-chunk{pixel_chunk}" if num_frames > pixel_chunk else "")


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """12 hex digits of the SHA-256 of the tokenizer's encoder.jit and mean_std.pt (the contents)."""
    files = [Path(tokenizer_dir) / name for name in HASHED_TOKENIZER_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        from cosmos_lora.errors import UserError

        raise UserError(f"The tokenizer folder {tokenizer_dir} lacks {', '.join(missing)}.",
                        "run `cosmos-lora download`, or pass --tokenizer with a Cosmos tokenizer folder.")
    stats = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(stats)


@functools.lru_cache(maxsize=16)
def _hash_files(stats: tuple[tuple[str, int, int], ...]) -> str:
    """Hashes each file once per process (the key includes size and mtime, so an edit is seen)."""
    digest = hashlib.sha256()
    for path, _, _ in stats:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    return (LATENT_CHANNELS, latent_frames(num_frames), height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)


def latent_path(cache_dir: Path, clip: str) -> Path:
    return Path(cache_dir) / f"{clip}.safetensors"


def video_fingerprint(path: Path) -> str:
    """`<size>:sha256:<hex>` of the clip file's whole content: any re-cut or replaced clip differs,
    whatever its name, size or mtime. Hashed once per process while the file is untouched."""
    stat = os.stat(path)
    return _content_fingerprint(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns,
                                stat.st_ctime_ns)


@functools.lru_cache(maxsize=4096)
def _content_fingerprint(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """The memo key is the file's identity and change times (ctime moves on every write or
    rename and cannot be set back), so a changed file is always hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"{size}:sha256:{digest.hexdigest()}"


def write_latent(cache_dir: Path, clip: str, latent: torch.Tensor, fps: float, fingerprint: str) -> Path:
    """Stores float32 `[16, t, h, w]` with its key, fps and video fingerprint; temporary file, then rename."""
    path = latent_path(cache_dir, clip)
    metadata = {"key": Path(cache_dir).name, "fps": repr(float(fps)), "video": fingerprint}
    with publishing(path) as tmp:
        save_file({TENSOR: latent.detach().to("cpu", torch.float32).contiguous()}, str(tmp), metadata=metadata)
    return path


def latent_problem(cache_dir: Path, clip: str, video: Path, shape: tuple[int, ...]) -> str | None:
    """Why the cached latent of `clip` cannot be used (missing, unreadable, other key/shape, stale), or None."""
    path = latent_path(cache_dir, clip)
    if not path.is_file():
        return f"{video}: no latent ({path} is missing)."
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensor = f.get_slice(TENSOR)
            found = (tuple(tensor.get_shape()), tensor.get_dtype())
    except Exception as err:  # truncated or foreign files fail in many ways inside safetensors
        return f"{path}: unreadable latent ({type(err).__name__}: {err})."
    if metadata.get("key") != Path(cache_dir).name or found != (tuple(shape), "F32"):
        return f"{path}: holds a {found[1]} {list(found[0])} latent of key {metadata.get('key')}, expected F32 " \
               f"{list(shape)} of {Path(cache_dir).name}."
    try:
        current = video_fingerprint(video)
    except OSError:
        return f"{video}: cannot be read to check its latent."
    if metadata.get("video") != current:
        return f"{path}: stale, the video changed after it was encoded."
    return None


def load_latent(cache_dir: Path, clip: str, video: Path, shape: tuple[int, ...]) -> tuple[torch.Tensor, float] | None:
    """(float32 latent, fps) when the cache holds a current latent for `clip`, else None."""
    if latent_problem(cache_dir, clip, video, shape) is not None:
        return None
    with safe_open(str(latent_path(cache_dir, clip)), "pt") as f:
        return f.get_tensor(TENSOR), float(f.metadata()["fps"])


def write_cache_info(cache_dir: Path, info: dict) -> None:
    atomic_write(Path(cache_dir) / CACHE_INFO, json.dumps(info, indent=1) + "\n")


def cache_info(tokenizer_dir: Path, num_frames: int, height: int, width: int, pixel_chunk: int,
               dtype: torch.dtype) -> dict:
    """The description stored in cache.json."""
    files = {name: hashlib.sha256((Path(tokenizer_dir) / name).read_bytes()).hexdigest()
             for name in HASHED_TOKENIZER_FILES}
    return {
        "key": latent_key(tokenizer_dir, num_frames, height, width, pixel_chunk),
        "tokenizer": str(Path(tokenizer_dir).resolve()), "tokenizer_sha256": files,
        "num_frames": num_frames, "height": height, "width": width, "pixel_chunk": pixel_chunk,
        "latent_shape": list(latent_shape(num_frames, height, width)), "stored_dtype": "float32",
        "encode_dtype": str(dtype).removeprefix("torch."),
        "normalised": "tokenizer output minus mean_std.pt mean, over its std; not multiplied by sigma_data",
    }
