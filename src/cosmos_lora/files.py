"""Publishing files: a reader sees either the old file or the whole new one, never a part.

Every file the toolkit publishes (configs, adapters, states, videos, sidecars, indexes, status
notes) goes through `publishing` or `atomic_write`: the content is written to a hidden temporary
sibling, flushed to disk, and renamed onto the target. On any failure, Ctrl-C and SIGTERM
included (they arrive as exceptions), the temporary file is removed. Files are created with the
process umask, like any other file the user makes (a colleague or a ComfyUI service can read them
when the umask lets them).
"""

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cosmos_lora.errors import UserError

TMP_MARK = ".tmp"


def temporary_sibling(path: Path) -> Path:
    """A hidden sibling of `path`, private to this process: `.<name>.tmp<pid>`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def remove_quietly(path: Path) -> None:
    """Removes a file or folder if it is there; never raises for a missing one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def publishing(path: Path, make_parent: bool = True) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s content to; renames it onto `path` when the block
    ends normally, removes it when the block raises (anything, KeyboardInterrupt included)."""
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Flushes the finished temporary `tmp` to disk and renames it onto `path`. For writers that
    cannot work inside one `publishing` block (a video encoded frame by frame); the caller removes
    `tmp` (`remove_quietly`) on every other exit path."""
    _fsync(tmp)
    os.replace(tmp, path)


def atomic_write(path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Writes `data` (text or bytes) to `path` atomically; returns `path`."""
    with publishing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return Path(path)


def require_writable(folder: Path, what: str) -> None:
    """One line unless files can be created in `folder` (or, before it exists, in the nearest folder
    above it): a read-only mount, missing permissions. A probe file, not os.access: root passes
    os.access on a read-only mount."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cosmos-lora-probe"):
            pass
    except OSError as error:
        raise UserError(
            f"Cannot write {what} in {folder}: {existing} is {_why(error)}.",
            "choose a writable folder (--outputs-dir or COSMOS_LORA_OUTPUTS), or make this one writable.",
        ) from None


def _why(error: OSError) -> str:
    return {errno.EROFS: "on a read-only file system", errno.EACCES: "not writable for this user",
            errno.ENOSPC: "on a full disk"}.get(error.errno, f"not writable ({error.strerror or error})")
