"""T5 caption embeddings in the official cosmos-predict1 pickle format.

Each `t5_xxl/<clip>.pickle` holds a Python list with ONE numpy array `[n_tokens, D]` (float16;
D = 1024 for T5-11B). The official scripts read and write exactly this, so datasets move between
them and us unchanged.

A pickle can run arbitrary code when loaded, and datasets get copied between machines and people,
so reading goes through an unpickler that can only rebuild numpy arrays and refuses anything else
before it is called.

Beside each pickle `cosmos-lora embed` records what it was made from, `t5_xxl/<clip>.json`:

    caption_sha256    SHA-256 of the caption text as it was encoded (UTF-8, stripped)
    text_encoder      `text_encoder_fingerprint` of the T5 folder (its files' names, sizes, samples)
    embedding_sha256  SHA-256 of the pickle's bytes, so the record describes this very file

The pickle stays in the official format; the official scripts ignore the record. An embedding
whose record does not describe it (no record, or the pickle was rewritten by another tool) is
"unrecorded": it cannot be verified, training uses it as it is, and `embed` redoes it.
"""

import hashlib
import io
import json
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_lora.errors import UserError
from cosmos_lora.files import atomic_write, publishing

# Protocol 4 is what the official scripts get from `pickle.dump` on Python >= 3.8: arrays pickle
# through `_reconstruct` rather than protocol 5's out-of-band buffers.
PICKLE_PROTOCOL = 4

_REGENERATE = "regenerate it with `cosmos-lora embed`."


def _numpy_globals() -> dict[tuple[str, str], object]:
    """Every global a pickled float array may name, under its numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    # Protocol 0-2 pickles store an array's bytes as `_codecs.encode(latin1_text, "latin1")`.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` narrowed to the one codec protocol 0-2 pickles use for raw bytes."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the numpy names in `_numpy_globals`; any other global is refused unresolved."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"{self.path} is not an official T5 embedding pickle: it refers to {module}.{name}; "
                "refusing to execute code from it.",
                _REGENERATE,
            ) from None

    def persistent_load(self, pid):
        raise UserError(f"{self.path} is not an official T5 embedding pickle: it uses persistent ids.", _REGENERATE)


def write_t5_embedding(path: Path, emb: np.ndarray) -> None:
    """Stores `[emb as float16]` the official way, written to a temporary file then renamed."""
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"A T5 embedding is [n_tokens, D], got shape {emb.shape}.")
    with publishing(Path(path)) as tmp, open(tmp, "wb") as f:
        pickle.dump([np.ascontiguousarray(emb.astype(np.float16))], f, protocol=PICKLE_PROTOCOL)


def read_t5_embedding(path: Path, data: bytes | None = None) -> np.ndarray:
    """Loads the `[n_tokens, D]` array of an official embedding pickle (float16 or float32 kept).

    `data`: the file's bytes when the caller has read them already.
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise UserError(f"Embedding {path} does not exist.", _REGENERATE)
        data = path.read_bytes()
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), path).load()
    except UserError:
        raise
    except Exception as err:  # a truncated or foreign file can fail in many ways inside pickle
        raise UserError(f"{path} could not be read as a T5 embedding pickle ({type(err).__name__}: {err}).",
                        _REGENERATE) from None
    return _validated(path, obj)


def _validated(path: Path, obj) -> np.ndarray:
    if not (isinstance(obj, (list, tuple)) and len(obj) == 1 and isinstance(obj[0], np.ndarray)):
        found = f"a {type(obj).__name__}" + (f" of {len(obj)} items" if isinstance(obj, (list, tuple)) else "")
        raise UserError(f"{path} is not an official T5 embedding pickle: expected a list holding one numpy "
                        f"array, found {found}.", _REGENERATE)
    emb = obj[0]
    if emb.ndim != 2 or 0 in emb.shape or emb.dtype not in (np.float16, np.float32):
        raise UserError(f"{path} holds a {emb.dtype} array of shape {emb.shape}; a T5 embedding is a "
                        "float16 or float32 [n_tokens, D] array with n_tokens, D >= 1.", _REGENERATE)
    if not np.isfinite(emb).all():
        raise UserError(f"{path} holds NaN or infinite values.", _REGENERATE)
    return emb


def pad_embedding(emb: np.ndarray | torch.Tensor, max_len: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pads (or truncates) `[n_tokens, D]` to float32 `[max_len, D]` plus an int64 `[max_len]` mask.

    The DiT cross-attends to a fixed 512-token context as the official pipeline does; the mask is 1
    on real tokens so padded positions can be told apart. Accepts a numpy array (read from disk) or
    a tensor (fresh from the text encoder) and stays on the tensor's device.
    """
    emb = torch.as_tensor(emb)
    n_tokens = min(len(emb), max_len)
    padded = torch.zeros(max_len, emb.shape[1], dtype=torch.float32, device=emb.device)
    padded[:n_tokens] = emb[:n_tokens].to(torch.float32)
    mask = torch.zeros(max_len, dtype=torch.int64, device=emb.device)
    mask[:n_tokens] = 1
    return padded, mask


# ---------------------------------------------------------------- what an embedding was made from

# The files `T5TextEncoder` reads: config, weights (single or sharded, + index) and tokenizer.
_TEXT_ENCODER_FILES = re.compile(
    r"config\.json|(model.*\.safetensors|pytorch_model.*\.bin)(\.index\.json)?"
    r"|spiece\.model|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json"
)
_SAMPLE = 1 << 20  # bytes hashed at each of three places in a text encoder file


@dataclass(frozen=True)
class EmbeddingSource:
    caption_sha256: str
    text_encoder: str


def read_caption(path: Path) -> str:
    """The caption text a clip's embedding is made from: the file as UTF-8, stripped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Caption {path} is missing.", "re-run `cosmos-lora prepare`, or write the caption there.")
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: caption is not UTF-8 text (byte {err.start}).",
                        "save it as UTF-8, or re-run `cosmos-lora prepare`.") from None


def caption_sha256(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def text_encoder_fingerprint(folder: Path) -> str | None:
    """16 hex digits naming the T5 in `folder`, None when it has no config.json.

    Hashes the names and sizes of the files `T5TextEncoder` loads, the small ones (config,
    tokenizer) whole and 1 MiB at the start, middle and end of each weight file: another model,
    or other weights of the same shape, differ; a moved or copied folder does not. Reading all of
    T5-11B's 45 GB on every `embed` run would cost more than the embeddings it saves.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _TEXT_ENCODER_FILES.fullmatch(p.name)):
        size = path.stat().st_size
        digest.update(f"{path.name}\t{size}\n".encode())
        with open(path, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                f.seek(offset)
                digest.update(f.read(_SAMPLE))
    return digest.hexdigest()[:16]


def record_path(embedding: Path) -> Path:
    """`t5_xxl/<clip>.json` beside `t5_xxl/<clip>.pickle`."""
    return Path(embedding).with_suffix(".json")


def write_embedding_record(embedding: Path, source: EmbeddingSource) -> None:
    """Records what the pickle at `embedding` (already written) was made from."""
    record = {**asdict(source), "embedding_sha256": hashlib.sha256(Path(embedding).read_bytes()).hexdigest()}
    atomic_write(record_path(embedding), json.dumps(record, indent=1) + "\n")


def embedding_source(embedding: Path, data: bytes | None = None) -> EmbeddingSource | None:
    """What the pickle at `embedding` was made from, or None when no record describes this very file
    (made by another tool, or rewritten since). `data`: the pickle's bytes if already read."""
    try:
        record = json.loads(record_path(embedding).read_text(encoding="utf-8"))
        data = Path(embedding).read_bytes() if data is None else data
        if record.get("embedding_sha256") != hashlib.sha256(data).hexdigest():
            return None
        return EmbeddingSource(str(record["caption_sha256"]), str(record["text_encoder"]))
    except (OSError, ValueError, KeyError, AttributeError):  # missing, unreadable or not our record
        return None
