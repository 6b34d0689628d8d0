"""Fetch the official checkpoints from the Hugging Face hub into the official `checkpoints/` layout.

    checkpoints/
      Cosmos-Predict1-7B-Text2World/   model.pt, config.json   (or 14B-Text2World, 7B-Video2World)
      Cosmos-Tokenize1-CV8x8x8-720p/   encoder.jit, decoder.jit, mean_std.pt, image_mean_std.pt
      google-t5/t5-11b/                config.json, PyTorch/safetensors weights, tokenizer files

Folder names are the official ones: the official scripts fail on renamed folders. Only the files the
toolkit needs are fetched (no TF/Flax/rust copies of T5, no READMEs).

A rerun skips files whose size matches the hub's and resumes partial ones with an HTTP Range request.
We resume ourselves because huggingface_hub (>= 1.31, huggingface/huggingface_hub#4306) downloads every
file into a fresh `<etag>.<uuid>.incomplete` and deletes it on failure, so its `local_dir` downloads
always restart from zero. A partial file lives beside its target as `<name>.incomplete` and is renamed
into place when complete; a resumed file is checked against the hub's sha256 (LFS) or git blob id.

The endpoint is `HF_ENDPOINT`, read at call time (huggingface_hub reads it once, at import). The token
is the `token` argument, else `HF_TOKEN`, else the stored `hf auth login` token; it is never printed.
"""

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock, build_hf_headers
from rich.console import Console

from cosmos_lora.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
LOGIN_FIX = "log in with `hf auth login` (or set HF_TOKEN)"

State = Literal["present", "partial", "missing"]


# ---------------------------------------------------------------------------------------------------
# What each model needs


@dataclass(frozen=True)
class RepoFiles:
    """The files of one hub repo that go into one folder under `checkpoints/`."""

    repo: str
    folder: str  # the official folder name under checkpoints/
    files: tuple[str, ...] = ()  # exact file names, or:
    pick: Callable[[str, list[str]], list[str]] | None = None  # choose from (repo, the repo's file names)

    def choose(self, names: list[str]) -> list[str]:
        return list(self.files) if self.pick is None else self.pick(self.repo, names)


_T5_SAFETENSORS = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")
_T5_PYTORCH = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?")
_T5_TOKENIZER = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pick_t5_files(repo: str, names: list[str]) -> list[str]:
    """safetensors weights if the repo has them, else pytorch_model*.bin (+ index); config; tokenizer."""
    weights = sorted(n for n in names if _T5_SAFETENSORS.fullmatch(n)) or sorted(
        n for n in names if _T5_PYTORCH.fullmatch(n)
    )
    if not weights:
        raise UserError(
            f"{repo} has no PyTorch or safetensors weights (model*.safetensors or pytorch_model*.bin).",
            f"check https://huggingface.co/{repo}; TF, Flax and rust weights cannot be used.",
        )
    return [*weights, "config.json", *(n for n in _T5_TOKENIZER if n in names)]


TOKENIZER = RepoFiles(
    "nvidia/Cosmos-Tokenize1-CV8x8x8-720p",
    "Cosmos-Tokenize1-CV8x8x8-720p",
    ("encoder.jit", "decoder.jit", "mean_std.pt", "image_mean_std.pt"),
)
T5 = RepoFiles("google-t5/t5-11b", "google-t5/t5-11b", pick=pick_t5_files)

MODELS: dict[str, tuple[RepoFiles, ...]] = {
    "7B-Text2World": (
        RepoFiles(
            "nvidia/Cosmos-Predict1-7B-Text2World", "Cosmos-Predict1-7B-Text2World", ("model.pt", "config.json")
        ),
        TOKENIZER,
        T5,
    ),
    "14B-Text2World": (
        RepoFiles(
            "nvidia/Cosmos-Predict1-14B-Text2World", "Cosmos-Predict1-14B-Text2World", ("model.pt", "config.json")
        ),
        TOKENIZER,
        T5,
    ),
    # the same network with a condition-mask input channel; the same tokenizer and T5
    "7B-Video2World": (
        RepoFiles(
            "nvidia/Cosmos-Predict1-7B-Video2World", "Cosmos-Predict1-7B-Video2World", ("model.pt", "config.json")
        ),
        TOKENIZER,
        T5,
    ),
}


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PlannedFile:
    repo: str
    filename: str  # path inside the repo
    local_path: Path  # checkpoints/<official folder>/<filename>
    name: str  # local_path relative to the checkpoints folder, for display
    size: int  # bytes on the hub
    state: State
    have: int = 0  # bytes already on disk (a partial file)
    revision: str = "main"  # the commit the listing came from; the download is pinned to it
    checksum: str | None = None  # sha256 (LFS files) or git blob id, from the hub's listing

    @property
    def to_fetch(self) -> int:
        return 0 if self.state == "present" else self.size - self.have

    def as_dict(self) -> dict:
        return {"repo": self.repo, "filename": self.filename, "local_path": str(self.local_path),
                "size": self.size, "state": self.state, "have": self.have}  # fmt: skip


@dataclass(frozen=True)
class DownloadReport:
    plan: list[PlannedFile]  # every file the model needs, with its state before this run
    fetched: list[PlannedFile]  # the files this run transferred (none on a dry run)
    bytes_fetched: int
    dry_run: bool

    @property
    def skipped(self) -> list[PlannedFile]:
        return [f for f in self.plan if f.state == "present"]

    def as_dict(self) -> dict:
        return {"plan": [f.as_dict() for f in self.plan], "fetched": [f.name for f in self.fetched],
                "bytes_fetched": self.bytes_fetched, "dry_run": self.dry_run}  # fmt: skip


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".incomplete")


def plan_download(model: str, checkpoints_dir: str | Path, token: str | None = None) -> list[PlannedFile]:
    """Every file `model` needs, with its size on the hub and its state on disk. Reads listings only."""
    repos = _model_repos(model)
    endpoint, token = hub_endpoint(), token or get_token()
    api = HfApi(endpoint=endpoint)
    plan = []
    for spec in repos:
        with _hub_errors(spec.repo, endpoint):
            info = api.model_info(spec.repo, files_metadata=True, token=token)
        listing = {s.rfilename: s for s in info.siblings or []}
        for filename in spec.choose(list(listing)):
            if filename not in listing:
                raise UserError(
                    f"{spec.repo} on {endpoint} has no file {filename}.",
                    f"check https://huggingface.co/{spec.repo}; cosmos-lora needs it in checkpoints/{spec.folder}/.",
                )
            plan.append(_planned(spec, listing[filename], Path(checkpoints_dir), info.sha or "main", endpoint))
    return plan


def _model_repos(model: str) -> tuple[RepoFiles, ...]:
    if model not in MODELS:
        raise UserError(f"Unknown model {model!r}.", f"use one of: {', '.join(MODELS)}.")
    return MODELS[model]


def _planned(spec: RepoFiles, sibling, checkpoints_dir: Path, revision: str, endpoint: str) -> PlannedFile:
    size = sibling.lfs.size if sibling.lfs else sibling.size
    if size is None:
        raise UserError(
            f"{endpoint} did not report the size of {spec.repo}/{sibling.rfilename}.",
            "point HF_ENDPOINT at the Hugging Face hub or a mirror that serves file sizes.",
        )
    name = f"{spec.folder}/{sibling.rfilename}"
    local_path = checkpoints_dir / name
    state, have = _local_state(local_path, size)
    return PlannedFile(
        repo=spec.repo, filename=sibling.rfilename, local_path=local_path, name=name, size=size, state=state,
        have=have, revision=revision, checksum=sibling.lfs.sha256 if sibling.lfs else sibling.blob_id,
    )  # fmt: skip


def _local_state(path: Path, size: int) -> tuple[State, int]:
    if path.is_file():
        have = path.stat().st_size
        if have == size:
            return "present", size
        # A shorter file is a truncated copy: resumed (and checked) like a partial one.
        # A longer one is another version: fetched anew and replaced once complete.
        return ("partial", have) if have < size else ("missing", 0)
    part = partial_path(path)
    if part.is_file() and part.stat().st_size <= size:
        return "partial", part.stat().st_size
    return "missing", 0


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_plan(plan: list[PlannedFile]) -> str:
    """A table (file, size, state) and the totals, for `cosmos-lora download --dry-run`."""
    width = max([len(f.name) for f in plan] + [4])
    lines = [f"{'file':<{width}}  {'size':>9}  state"]
    for f in plan:
        state = f"partial ({human_size(f.have)} here)" if f.state == "partial" else f.state
        lines.append(f"{f.name:<{width}}  {human_size(f.size):>9}  {state}")
    todo = [f for f in plan if f.state != "present"]
    lines.append(
        f"total {human_size(sum(f.size for f in plan))} in {len(plan)} files; "
        f"still to fetch {human_size(sum(f.to_fetch for f in todo))} ({len(todo)} files)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The download


@dataclass(frozen=True)
class _Source:
    url: str  # the file itself: the hub's resolve url, or the CDN url it redirects to
    headers: dict[str, str]  # without the token when `url` is off the hub
    size: int


def download(
    model: str, checkpoints_dir: str | Path, dry_run: bool = False, token: str | None = None
) -> DownloadReport:
    """Fetch what `model` needs into `checkpoints_dir`, skipping complete files and resuming partial ones.

    Every file's access is checked before the first byte moves, so a gated repo stops the run at once.
    Progress goes to stderr. An interrupted transfer keeps its bytes in `<name>.incomplete` for the rerun.
    """
    _model_repos(model)
    token = token or get_token()
    checkpoints_dir = Path(checkpoints_dir)
    if dry_run:
        return DownloadReport(plan_download(model, checkpoints_dir, token), [], 0, dry_run=True)

    console = Console(stderr=True, soft_wrap=True)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    with _one_download_at_a_time(checkpoints_dir):
        plan = plan_download(model, checkpoints_dir, token)
        todo = [f for f in plan if f.state != "present"]
        endpoint = hub_endpoint()
        for f in todo:  # access checks (gated, missing) before the first byte moves
            _resolve(f, endpoint, token)
        fetched_bytes = 0
        for i, f in enumerate(todo, 1):
            resuming = f", resuming at {human_size(f.have)}" if f.state == "partial" else ""
            console.print(f"[{i}/{len(todo)}] {f.name} ({human_size(f.size)}{resuming}) from {f.repo}", markup=False)
            # Resolved again right before the transfer: CDN urls are signed and expire.
            fetched_bytes += _fetch(f, _resolve(f, endpoint, token), console)
    if not todo:
        console.print(f"All {len(plan)} files of {model} are already in {checkpoints_dir}.", markup=False)
    return DownloadReport(plan, todo, fetched_bytes, dry_run=False)


@contextmanager
def _one_download_at_a_time(checkpoints_dir: Path) -> Iterator[None]:
    lock_path = checkpoints_dir / ".cosmos-lora-download.lock"
    with ExitStack() as stack:
        try:
            stack.enter_context(WeakFileLock(lock_path, timeout=1))
        except TimeoutError:
            raise UserError(
                f"Another download into {checkpoints_dir} is running (it holds {lock_path}).",
                "wait for it to finish; a rerun afterwards skips what it fetched.",
            ) from None
        yield


def _resolve(f: PlannedFile, endpoint: str, token: str | None) -> _Source:
    """HEAD the file (the hub's own metadata call): access check, size, and the CDN url if it redirects."""
    url = hf_hub_url(f.repo, f.filename, revision=f.revision, endpoint=endpoint)
    with _hub_errors(f.repo, endpoint, f.filename):
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, retry_on_errors=True)
    headers = build_hf_headers(token=token)
    if _origin(meta.location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    return _Source(meta.location, headers, meta.size if meta.size is not None else f.size)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _fetch(f: PlannedFile, source: _Source, console: Console) -> int:
    """Append the missing bytes to `<name>.incomplete`, check a resumed file, rename it into place."""
    part = partial_path(f.local_path)
    part.parent.mkdir(parents=True, exist_ok=True)
    if f.local_path.is_file() and f.local_path.stat().st_size < source.size:
        os.replace(f.local_path, part)  # a truncated copy: resume it
    have = part.stat().st_size if part.is_file() else 0
    if have > source.size:
        part.unlink()
        have = 0
    fetched = _append(source, part, have, f.filename)
    if have and not _matches(part, f.checksum):
        console.print(f"{f.name}: the resumed file does not match the hub's checksum; fetching it again", markup=False)
        part.unlink()
        fetched += _append(source, part, 0, f.filename)
    os.replace(part, f.local_path)
    return fetched


def _append(source: _Source, part: Path, have: int, filename: str) -> int:
    try:
        with open(part, "ab") as out:
            # huggingface_hub's own transfer: a Range request from `have`, retries that resume, a tqdm bar.
            http_get(source.url, out, resume_size=have, headers=source.headers, expected_size=source.size,
                     displayed_filename=filename)  # fmt: skip
    except (HfHubHTTPError, httpx2.TransportError) as err:
        status = err.response.status_code if isinstance(err, HfHubHTTPError) and err.response is not None else None
        raise UserError(
            f"Downloading {filename} stopped ({status or type(err).__name__}) with "
            f"{human_size(part.stat().st_size)} of {human_size(source.size)} kept in {part}.",
            "rerun `cosmos-lora download`; it resumes from there.",
        ) from err
    return source.size - have


def _matches(path: Path, checksum: str | None) -> bool:
    """sha256 for LFS files, git's blob sha1 for the others; unknown checksum forms pass."""
    if checksum is None or len(checksum) not in (40, 64):
        return True
    digest = hashlib.sha256() if len(checksum) == 64 else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest() == checksum


# ---------------------------------------------------------------------------------------------------
# Hub errors -> one line with the fix (no token in any of them)


@contextmanager
def _hub_errors(repo: str, endpoint: str, filename: str | None = None) -> Iterator[None]:
    where = f"{repo}/{filename}" if filename else repo
    access_fix = f"accept the licence at https://huggingface.co/{repo} and {LOGIN_FIX}."
    try:
        yield
    except GatedRepoError as err:
        raise UserError(f"{repo} is gated and this account has no access to it yet.", access_fix) from err
    except (RemoteEntryNotFoundError, RevisionNotFoundError) as err:
        raise UserError(
            f"{where} was not found on {endpoint}.", f"check https://huggingface.co/{repo} for the file."
        ) from err
    except RepositoryNotFoundError as err:
        raise UserError(
            f"Repository {repo} was not found on {endpoint}, or it is private and you are not logged in.",
            f"check the repo id; for a gated or private repo, {access_fix}",
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UserError(f"The hub refused access to {where} ({status}).", access_fix) from err
        raise UserError(
            f"The hub at {endpoint} answered {status} for {where}.",
            "try again later; a rerun resumes where this one stopped.",
        ) from err
    except OfflineModeIsEnabled as err:
        raise UserError("HF_HUB_OFFLINE is set, so the hub cannot be reached.", "unset HF_HUB_OFFLINE.") from err
    except httpx2.TransportError as err:
        raise UserError(
            f"Could not reach the Hugging Face hub at {endpoint} ({type(err).__name__}).",
            "check the network and proxy settings, or set HF_ENDPOINT; a rerun resumes where this one stopped.",
        ) from err
