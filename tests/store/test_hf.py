"""hf.co/org/repo[:quant] pulls against a local fake of the Hub's HTTP API.

The fake implements what huggingface_hub calls: ``GET /api/models/<repo>`` (model info with
siblings and LFS sha256) and ``HEAD``/``GET /<repo>/resolve/<rev>/<file>`` with the headers it
needs (ETag, X-Repo-Commit, X-Linked-Etag, X-Linked-Size, Content-Length, Range).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from heron.store.catalog import PullError
from heron.store.hf import parse_hf_name
from heron.store.manifest import MEDIA_MODEL
from heron.store.names import parse_name
from heron.store.pull import pull
from heron.store.store import ModelNotFoundError, ModelStore

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    repo_id: str = "Org/Tiny-GGUF"
    files: dict[str, bytes] = field(default_factory=dict)
    declared: dict[str, str] = field(default_factory=dict)  # file -> declared sha256
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sha(self, name: str) -> str:
        return self.declared.get(name) or hashlib.sha256(self.files[name]).hexdigest()

    def gets(self, name: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == "GET" and p.endswith("/" + name))


class _HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def _route(self) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        with hub.lock:
            hub.requests.append((self.command, path))
        api = "/api/models/"
        if path.startswith(api) and path[len(api) :].lower() == hub.repo_id.lower():
            siblings = [
                {
                    "rfilename": name,
                    "size": len(data),
                    "blobId": hashlib.sha1(data).hexdigest(),
                    "lfs": {"sha256": hub.sha(name), "size": len(data), "pointerSize": 134},
                }
                for name, data in hub.files.items()
            ]
            siblings.append({"rfilename": "README.md", "size": 5, "blobId": "0" * 40})
            body = json.dumps({"id": hub.repo_id, "sha": COMMIT, "siblings": siblings}).encode()
            self._reply(200, body, {"Content-Type": "application/json"})
            return
        prefix = f"/{hub.repo_id}/resolve/"
        if path.startswith(prefix):
            rev, _, name = path[len(prefix) :].partition("/")
            if rev in (COMMIT, "main") and name in hub.files:
                data = hub.files[name]
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                etag = f'"{hub.sha(name)}"'
                headers = {
                    "Content-Type": "application/octet-stream",
                    "ETag": etag,
                    "X-Linked-Etag": etag,
                    "X-Linked-Size": str(len(data)),
                    "X-Repo-Commit": COMMIT,
                    "Accept-Ranges": "bytes",
                }
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._reply(206 if start else 200, data[start:], headers)
                return
        self._reply(404, b'{"error":"not found"}', {"X-Error-Code": "RepoNotFound"})

    do_GET = _route
    do_HEAD = _route


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hub]:
    import huggingface_hub.constants

    state = Hub()
    handler = type("Handler", (_HubHandler,), {"hub": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _pull(store: ModelStore, name: str) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return pull(store, name, events.append), events


def _ggufs(hub: Hub, tiny_gguf: Callable[..., Path], *names: str) -> dict[str, bytes]:
    for i, name in enumerate(names):
        hub.files[name] = tiny_gguf(f"f{i}.gguf", seed=i).read_bytes()
    return hub.files


def test_default_quant_is_pulled_and_verified(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    files = _ggufs(hub, tiny_gguf, "tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf", "mmproj-tiny-Q4_K_M.gguf")
    model, events = _pull(store, "hf.co/Org/Tiny-GGUF")
    assert model.name == parse_name("hf.co/org/tiny-gguf:latest")
    (layer,) = model.manifest.find(MEDIA_MODEL)
    assert layer.digest == "sha256:" + hashlib.sha256(files["tiny-Q4_K_M.gguf"]).hexdigest()
    assert store.model_path(model).read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert model.format == "gguf" and model.family == "llama"
    assert ("GET", "/api/models/Org/Tiny-GGUF") in hub.requests  # the repo's case is kept
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    last = [e for e in events if "digest" in e][-1]
    assert last["completed"] == last["total"] == len(files["tiny-Q4_K_M.gguf"])
    assert not (store.root / "tmp" / "hf").exists() or not any((store.root / "tmp/hf").iterdir())

    # pulled again: nothing downloaded, the same model
    again, _ = _pull(store, "hf.co/Org/Tiny-GGUF:latest")
    assert again.digest == model.digest
    assert hub.gets("tiny-Q4_K_M.gguf") == 1


def test_quant_is_matched_case_insensitively(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    files = _ggufs(hub, tiny_gguf, "tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf")
    model, _ = _pull(store, "hf.co/Org/Tiny-GGUF:q8_0")
    assert model.name.tag == "q8_0"
    assert store.model_path(model).read_bytes() == files["tiny-Q8_0.gguf"]


def test_the_only_gguf_is_the_default(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    files = _ggufs(hub, tiny_gguf, "tiny-f16.gguf")
    model, _ = _pull(store, "huggingface.co/Org/Tiny-GGUF")
    assert model.name.host == "hf.co"
    assert store.model_path(model).read_bytes() == files["tiny-f16.gguf"]


def test_no_matching_quant_lists_the_files(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    _ggufs(hub, tiny_gguf, "tiny-Q8_0.gguf", "tiny-F16.gguf")
    with pytest.raises(PullError, match="no GGUF matching 'Q4_K_M'.*tiny-F16.gguf, tiny-Q8_0"):
        _pull(store, "hf.co/Org/Tiny-GGUF")
    with pytest.raises(PullError, match="matches several files"):
        _ggufs(hub, tiny_gguf, "tiny-Q4_K_S.gguf", "tiny-Q4_K_M.gguf")
        _pull(store, "hf.co/Org/Tiny-GGUF:q4_k")


def test_sha256_mismatch_stores_nothing(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    _ggufs(hub, tiny_gguf, "tiny-Q4_K_M.gguf")
    hub.declared["tiny-Q4_K_M.gguf"] = "ab" * 32
    with pytest.raises(PullError, match="sha256 mismatch for tiny-Q4_K_M.gguf"):
        _pull(store, "hf.co/Org/Tiny-GGUF")
    assert not store.blobs.has("sha256:" + "ab" * 32)
    assert store.blobs.digests() == []
    assert list(store.blobs.partial_dir.iterdir()) == []
    assert not (store.root / "tmp/hf" / ("ab" * 32)).exists()
    with pytest.raises(ModelNotFoundError):
        store.get("hf.co/org/tiny-gguf")


def test_tampered_blob_is_pulled_again(
    hub: Hub, store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    files = _ggufs(hub, tiny_gguf, "tiny-Q4_K_M.gguf")
    model, _ = _pull(store, "hf.co/Org/Tiny-GGUF")
    blob = store.model_path(model)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    assert store.verify("hf.co/org/tiny-gguf") == [model.manifest.layers[0].digest]
    _pull(store, "hf.co/Org/Tiny-GGUF")
    assert store.verify("hf.co/org/tiny-gguf") == []
    assert store.model_path(model).read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert hub.gets("tiny-Q4_K_M.gguf") == 2


def test_unknown_repo_and_unreachable_hub(
    hub: Hub, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PullError, match="cannot get hf.co/Org/Missing"):
        _pull(store, "hf.co/Org/Missing")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(PullError, match="cannot get hf.co/Org/Tiny-GGUF"):
        _pull(store, "hf.co/Org/Tiny-GGUF")


def test_plain_http_endpoint_must_be_loopback(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example.com")
    with pytest.raises(PullError, match="HF_ENDPOINT"):
        _pull(store, "hf.co/Org/Tiny-GGUF")


def test_parse_hf_name() -> None:
    name, repo, quant = parse_hf_name("hf.co/Bartowski/SmolLM2-GGUF:Q4_K_M")
    assert (name.display, repo, quant) == (
        "hf.co/bartowski/smollm2-gguf:q4_k_m",
        "Bartowski/SmolLM2-GGUF",
        "Q4_K_M",
    )
    assert parse_hf_name("hf.co/a/b")[2] is None
    for bad in ("hf.co/../b", "hf.co/a/b/c", "hf.co/a", "hf.co/a/b:x:y"):
        with pytest.raises(ValueError):
            parse_hf_name(bad)
