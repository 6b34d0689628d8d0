"""`cosmos_lora.hub.download` with the real huggingface_hub client against a fake hub on 127.0.0.1.

The fake hub serves what the client calls, the way huggingface.co does:
  GET  /api/models/{repo}[/revision/{rev}]?blobs=true   listing with sizes, blob ids and LFS sha256
  HEAD /{repo}/resolve/{rev}/{file}   small files: 200 + ETag, X-Repo-Commit, Content-Length
                                      LFS files: 302 to a CDN host + X-Linked-Etag, X-Linked-Size
  GET  /{repo}/resolve/{rev}/{file}, /cdn/{sha256}   bytes, with Range (206) for resumes
  gated repos: 401 (no token) / 403 (token) with `X-Error-Code: GatedRepo` on resolve
  unknown repos: 401 with `X-Error-Code: RepoNotFound`
The "CDN" is the same server reached as `localhost`, a different origin, like the hub's signed urls.
"""

import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from cosmos_lora.errors import UserError
from cosmos_lora.hub.download import download, format_plan, plan_download

TOKEN = "hf_fakeTokenThatMustNeverBePrinted42"
DIT, TOKENIZER, T5 = "nvidia/Cosmos-Predict1-7B-Text2World", "nvidia/Cosmos-Tokenize1-CV8x8x8-720p", "google-t5/t5-11b"
LFS_SUFFIXES = (".pt", ".jit", ".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".model")


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False

    @property
    def commit(self) -> str:
        return hashlib.sha1(repr(sorted(self.files.items())).encode()).hexdigest()


def default_repos() -> dict[str, FakeRepo]:
    return {
        DIT: FakeRepo({"model.pt": blob(1, 300_000), "config.json": b'{"dit": "7B"}', "README.md": b"# DiT"}),
        TOKENIZER: FakeRepo({
            "encoder.jit": blob(2, 40_000), "decoder.jit": blob(3, 50_000), "autoencoder.jit": blob(4, 60_000),
            "mean_std.pt": blob(5, 2_000), "image_mean_std.pt": blob(6, 1_500), "README.md": b"# tokenizer",
        }),  # fmt: skip
        T5: FakeRepo({
            "config.json": b'{"d_model": 1024}', "model.safetensors": blob(7, 120_000),
            "pytorch_model.bin": blob(8, 120_000), "tf_model.h5": blob(9, 90_000),
            "flax_model.msgpack": blob(10, 90_000), "rust_model.ot": blob(11, 90_000),
            "spiece.model": blob(12, 8_000), "tokenizer.json": b'{"model": {}}', "tokenizer_config.json": b"{}",
            "README.md": b"# T5", ".gitattributes": b"*.bin filter=lfs",
        }),  # fmt: skip
    }


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo]
    requests: list[dict] = field(default_factory=list)

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                hub.handle(self, body=True)

            def do_HEAD(self):
                hub.handle(self, body=False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def content_gets(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and not r["path"].startswith("/api/")]

    # -- routing ----------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        self.requests.append({"method": h.command, "path": path, "range": h.headers.get("Range"),
                              "auth": h.headers.get("Authorization"), "host": h.headers.get("Host")})  # fmt: skip
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.listing(h, m[1], parse_qs(url.query), body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(h, m[1], m[2], m[3], body)
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            data = next((d for r in self.repos.values() for d in r.files.values() if sha256(d) == m[1]), None)
            return self.send_bytes(h, data, body) if data is not None else self.send(h, 404, b"", {})
        self.send(h, 404, b"not found", {})

    def listing(self, h, repo_id: str, query: dict, body: bool) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.error(h, 401, "RepoNotFound", "Repository not found", body)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, data in repo.files.items():
            entry = {"rfilename": name}
            if blobs:
                entry.update(size=len(data), blobId=git_blob_id(data))
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"size": len(data), "sha256": sha256(data), "pointerSize": 134}
            siblings.append(entry)
        info = {"id": repo_id, "sha": repo.commit, "private": False, "gated": "manual" if repo.gated else False,
                "siblings": siblings}  # fmt: skip
        self.send(h, 200, json.dumps(info).encode() if body else b"", {"Content-Type": "application/json"})

    def resolve(self, h, repo_id: str, revision: str, filename: str, body: bool) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.error(h, 401, "RepoNotFound", "Repository not found", body)
        if repo.gated and h.headers.get("Authorization") != f"Bearer {GRANTED_TOKEN}":
            status = 403 if h.headers.get("Authorization") else 401
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self.error(h, status, "GatedRepo", message, body)
        if revision not in ("main", repo.commit):
            return self.error(h, 404, "RevisionNotFound", "Invalid rev id", body)
        if filename not in repo.files:
            return self.error(h, 404, "EntryNotFound", "Entry not found", body, {"X-Repo-Commit": repo.commit})
        data = repo.files[filename]
        if filename.endswith(LFS_SUFFIXES):
            cdn = f"http://localhost:{self.port}/cdn/{sha256(data)}"
            headers = {"Location": cdn, "X-Repo-Commit": repo.commit, "ETag": '"pointer"',
                       "X-Linked-Etag": f'"{sha256(data)}"', "X-Linked-Size": str(len(data))}  # fmt: skip
            return self.send(h, 302, b"", headers)
        self.send_bytes(h, data, body, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_id(data)}"'})

    # -- responses --------------------------------------------------------------------------------

    def send_bytes(self, h, data: bytes, body: bool, headers: dict | None = None) -> None:
        headers = {**(headers or {}), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start = 0
        if (range_ := h.headers.get("Range")) and h.command == "GET":
            start = int(re.fullmatch(r"bytes=(\d+)-", range_)[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        self.send(h, status, data[start:] if body else b"", headers, length=len(data) - start)

    def error(self, h, status: int, code: str, message: str, body: bool, headers: dict | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        headers = {**(headers or {}), "X-Error-Code": code, "X-Error-Message": message,
                   "Content-Type": "application/json"}  # fmt: skip
        self.send(h, status, payload if body else b"", headers, length=len(payload))

    @staticmethod
    def send(h, status: int, payload: bytes, headers: dict, length: int | None = None) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(payload) if length is None else length))
        h.end_headers()
        h.wfile.write(payload)


GRANTED_TOKEN = "hf_granted"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OFFICIAL_LAYOUT = {
    "Cosmos-Predict1-7B-Text2World/model.pt": (DIT, "model.pt"),
    "Cosmos-Predict1-7B-Text2World/config.json": (DIT, "config.json"),
    "Cosmos-Tokenize1-CV8x8x8-720p/encoder.jit": (TOKENIZER, "encoder.jit"),
    "Cosmos-Tokenize1-CV8x8x8-720p/decoder.jit": (TOKENIZER, "decoder.jit"),
    "Cosmos-Tokenize1-CV8x8x8-720p/mean_std.pt": (TOKENIZER, "mean_std.pt"),
    "Cosmos-Tokenize1-CV8x8x8-720p/image_mean_std.pt": (TOKENIZER, "image_mean_std.pt"),
    "google-t5/t5-11b/model.safetensors": (T5, "model.safetensors"),
    "google-t5/t5-11b/config.json": (T5, "config.json"),
    "google-t5/t5-11b/spiece.model": (T5, "spiece.model"),
    "google-t5/t5-11b/tokenizer.json": (T5, "tokenizer.json"),
    "google-t5/t5-11b/tokenizer_config.json": (T5, "tokenizer_config.json"),
}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {".cosmos-lora-download.lock"}


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub(default_repos()).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)  # read by our code at call time
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.stop()


def test_download_writes_the_official_layout_and_only_the_needed_files(hub, tmp_path):
    ckpt = tmp_path / "checkpoints"
    report = download("7B-Text2World", ckpt)

    assert files_under(ckpt) == set(OFFICIAL_LAYOUT)  # no TF/Flax/rust/bin copies, no .incomplete, no .cache
    for name, (repo, filename) in OFFICIAL_LAYOUT.items():
        assert (ckpt / name).read_bytes() == hub.repos[repo].files[filename], name
    assert {f.name for f in report.fetched} == set(OFFICIAL_LAYOUT)
    assert report.bytes_fetched == sum(len(hub.repos[r].files[f]) for r, f in OFFICIAL_LAYOUT.values())

    fetched_paths = " ".join(r["path"] for r in hub.content_gets())
    assert not re.search(r"tf_model|flax_model|rust_model|pytorch_model|autoencoder|README", fetched_paths)
    # The token from HF_TOKEN goes to the hub, never to the CDN host of LFS files.
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests if r["host"].startswith("127.0.0.1"))
    cdn = [r for r in hub.requests if r["path"].startswith("/cdn/")]
    assert cdn and all(r["auth"] is None and r["host"].startswith("localhost") for r in cdn)


def test_second_run_downloads_nothing(hub, tmp_path):
    download("7B-Text2World", tmp_path)
    before = len(hub.content_gets())

    report = download("7B-Text2World", tmp_path)

    assert len(hub.content_gets()) == before
    assert report.fetched == [] and report.bytes_fetched == 0
    assert {f.state for f in report.plan} == {"present"} and len(report.skipped) == len(OFFICIAL_LAYOUT)


@pytest.mark.parametrize("leftover", ["truncated file", "incomplete file", "stale prefix"])
def test_partial_file_is_resumed_with_a_range_request(hub, tmp_path, leftover):
    download("7B-Text2World", tmp_path)
    model = tmp_path / "Cosmos-Predict1-7B-Text2World" / "model.pt"
    full = hub.repos[DIT].files["model.pt"]
    prefix = full[:100_000] if leftover != "stale prefix" else blob(99, 100_000)  # another version's bytes
    model.unlink()
    target = model.with_name("model.pt.incomplete") if leftover == "incomplete file" else model
    target.write_bytes(prefix)
    [planned] = [f for f in plan_download("7B-Text2World", tmp_path) if f.state != "present"]
    assert (planned.name, planned.state, planned.have) == ("Cosmos-Predict1-7B-Text2World/model.pt", "partial", 100_000)
    hub.requests.clear()

    download("7B-Text2World", tmp_path)

    ranges = [r["range"] for r in hub.content_gets()]
    assert ranges[0] == "bytes=100000-"
    # A prefix that is not the hub's file fails the sha256 check after the resume and is fetched again whole.
    assert ranges == (["bytes=100000-"] if leftover != "stale prefix" else ["bytes=100000-", None])
    assert model.read_bytes() == full
    assert not model.with_name("model.pt.incomplete").exists()


def test_dry_run_lists_sizes_states_and_totals(hub, tmp_path):
    (tmp_path / "Cosmos-Predict1-7B-Text2World").mkdir()
    (tmp_path / "Cosmos-Predict1-7B-Text2World" / "config.json").write_bytes(b'{"dit": "7B"}')
    (tmp_path / "Cosmos-Predict1-7B-Text2World" / "model.pt").write_bytes(hub.repos[DIT].files["model.pt"][:50_000])

    report = download("7B-Text2World", tmp_path, dry_run=True)

    assert report.dry_run and report.fetched == [] and hub.content_gets() == []
    assert files_under(tmp_path) == {f"Cosmos-Predict1-7B-Text2World/{n}" for n in ("config.json", "model.pt")}
    states = {f.name: (f.size, f.state) for f in report.plan}
    assert states["Cosmos-Predict1-7B-Text2World/model.pt"] == (300_000, "partial")
    assert states["Cosmos-Predict1-7B-Text2World/config.json"] == (13, "present")
    assert states["google-t5/t5-11b/model.safetensors"] == (120_000, "missing")

    lines = format_plan(report.plan).splitlines()
    assert lines[0].split() == ["file", "size", "state"]
    assert len(lines) == len(OFFICIAL_LAYOUT) + 2
    row = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert row["Cosmos-Predict1-7B-Text2World/model.pt"] == ["300.0", "kB", "partial", "(50.0", "kB", "here)"]
    assert row["Cosmos-Predict1-7B-Text2World/config.json"] == ["13", "B", "present"]
    assert row["Cosmos-Tokenize1-CV8x8x8-720p/decoder.jit"] == ["50.0", "kB", "missing"]
    total = sum(len(hub.repos[r].files[f]) for r, f in OFFICIAL_LAYOUT.values())
    to_fetch = total - 13 - 50_000
    assert lines[-1] == (
        f"total {total / 1000:.1f} kB in 11 files; still to fetch {to_fetch / 1000:.1f} kB (10 files)"
    )


def test_t5_without_safetensors_takes_the_pytorch_shards(hub, tmp_path):
    t5 = hub.repos[T5].files
    for name in ("model.safetensors", "pytorch_model.bin", "tokenizer_config.json"):
        del t5[name]
    t5.update({"pytorch_model-00001-of-00002.bin": blob(20, 1000), "pytorch_model-00002-of-00002.bin": blob(21, 1000),
               "pytorch_model.bin.index.json": b"{}", "special_tokens_map.json": b"{}"})  # fmt: skip

    names = [f.filename for f in plan_download("7B-Text2World", tmp_path) if f.repo == T5]

    assert names == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                     "pytorch_model.bin.index.json", "config.json", "spiece.model", "tokenizer.json",
                     "special_tokens_map.json"]  # fmt: skip


@pytest.mark.parametrize("token", [TOKEN, None])
def test_gated_repo_is_one_line_with_the_fix_and_no_token(hub, tmp_path, monkeypatch, token):
    hub.repos[DIT].gated = True
    if token is None:
        monkeypatch.setenv("HF_TOKEN", "")  # an empty HF_TOKEN means no token from the environment

    with pytest.raises(UserError) as caught:
        download("7B-Text2World", tmp_path)

    message = str(caught.value)
    assert "\n" not in message and TOKEN not in message and TOKEN not in repr(caught.value.__cause__)
    assert DIT in message
    assert f"accept the licence at https://huggingface.co/{DIT}" in message
    assert "`hf auth login`" in message and "HF_TOKEN" in message
    if token:
        assert any(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests if "/resolve/" in r["path"])
    # Access is checked before any byte moves: nothing but the lock file was written.
    assert files_under(tmp_path) == set() and hub.content_gets() == []


def test_missing_file_and_missing_repo_are_named(hub, tmp_path):
    del hub.repos[TOKENIZER].files["image_mean_std.pt"]
    with pytest.raises(UserError, match=f"{TOKENIZER} on .* has no file image_mean_std.pt"):
        plan_download("7B-Text2World", tmp_path)

    del hub.repos[T5]
    hub.repos[TOKENIZER].files["image_mean_std.pt"] = b"x"
    with pytest.raises(UserError, match=f"Repository {T5} was not found on {hub.endpoint}"):
        download("7B-Text2World", tmp_path, dry_run=True)


def test_unreachable_hub_names_the_endpoint(tmp_path, monkeypatch):
    server = FakeHub({}).start()
    endpoint = server.endpoint
    server.stop()  # nothing listens on that port any more
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    with pytest.raises(UserError, match=f"Could not reach the Hugging Face hub at {re.escape(endpoint)}"):
        download("7B-Text2World", tmp_path)


def test_unknown_model_lists_the_choices(tmp_path):
    with pytest.raises(UserError, match="use one of: 7B-Text2World, 14B-Text2World"):
        download("3B", tmp_path)


def test_huggingface_hub_local_dir_download_does_not_resume(hub, tmp_path):
    """Why `download` resumes by itself: since huggingface_hub#4306 a leftover `.incomplete` is ignored."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub._local_folder import get_local_download_paths

    full = hub.repos[DIT].files["model.pt"]
    leftover = get_local_download_paths(tmp_path, "model.pt").incomplete_path(sha256(full))  # where <1.31 resumed
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(full[:100_000])

    hf_hub_download(DIT, "model.pt", local_dir=tmp_path, endpoint=hub.endpoint)

    assert [r["range"] for r in hub.content_gets()] == [None]  # the whole file again
    assert (tmp_path / "model.pt").read_bytes() == full and leftover.exists()  # and the partial is orphaned


def test_a_second_concurrent_download_is_refused(hub, tmp_path):
    from filelock import FileLock  # what huggingface_hub's WeakFileLock uses

    with FileLock(tmp_path / ".cosmos-lora-download.lock"):
        with pytest.raises(UserError, match="Another download into .* is running"):
            download("7B-Text2World", tmp_path)
    assert hub.content_gets() == []
