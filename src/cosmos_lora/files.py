"""Publishing files: a reader sees either the old file or the whole new one, never a part.

Every file the toolkit publishes (configs, adapters, states, videos, sidecars, indexes, status
notes) goes through `publishing` or `atomic_write`: the content is written to a hidden temporary
sibling, flushed to disk, and renamed onto the target. On any failure, Ctrl-C and SIGTERM
included (they arrive as exceptions), the temporary file is removed. Published files get the mode
the process umask gives any new file (0644 under umask 022), whatever wrote the temporary: a
library may create it private (safetensors' `save_file` makes 0600 files), and a colleague or a
ComfyUI service must be able to read an adapter when the umask lets them.
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


def umask_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o666 minus the umask)."""
    try:  # Linux >= 4.7 shows it without changing it
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("Umask:"))
        umask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def check_not_an_input(out: Path, inputs: dict[str, Path], inside: Path | None = None) -> None:
    """`out` is none of the files a command reads (`inputs`: what each is -> its path) and, with `inside`,
    no existing file of that folder: writing it would destroy what the command is made from."""
    out = Path(out)
    if not out.exists():
        return
    for what, path in inputs.items():
        if Path(path).exists() and os.path.samefile(out, path):
            raise UserError(f"--out {out} is the {what} itself.", "write the result to another file.")
    if inside is not None and out.resolve().is_relative_to(Path(inside).resolve()):
        raise UserError(f"--out {out} is a file of {inside}.", "write the result outside that folder, or to a new file name.")


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
    `tmp` (`remove_quietly`) on every other exit path. The file gets the umask's mode (see above)."""
    if tmp.is_file():
        os.chmod(tmp, umask_mode())
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
