"""A hostile client against the store routes of a real ``heron serve`` on 127.0.0.1: broken
templates at create time, and concurrent, stalled and abandoned blob uploads."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def store_server(store_dir: Path) -> Iterator[ServerProcess]:
    with running_server(model=None, env={"HERON_MODELS": str(store_dir)}) as server:
        yield server


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ if .System }}" * 150 + "x" + "{{ end }}" * 150, "nesting deeper than 100"),
        ("{{ if .System }}{{ .System }}", "end"),
        ("{% for m in messages %}", "does not parse"),
    ],
    ids=["go-nested-150", "go-unterminated", "jinja-unclosed"],
)
@pytest.mark.parametrize("stream", [True, False])
def test_create_refuses_a_broken_template_with_400(
    store_server: ServerProcess, template: str, match: str, stream: bool
) -> None:
    body = {"model": "broken", "from": "smollm2", "template": template, "stream": stream}
    r = httpx.post(f"{store_server.base_url}/api/create", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "TEMPLATE" in r.json()["error"] and match in r.json()["error"]


def _blob(size: int, seed: int) -> tuple[bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _partials(store_dir: Path) -> list[str]:
    partial = store_dir / "blobs" / ".partial"
    return sorted(p.name for p in partial.iterdir()) if partial.is_dir() else []


def _upload(server: ServerProcess, digest: str, data: bytes, timeout: float = 60) -> int:
    url = f"{server.base_url}/api/blobs/{digest}"
    return httpx.post(url, content=data, timeout=timeout).status_code


def test_concurrent_uploads_of_one_digest_all_succeed(
    store_server: ServerProcess, store_dir: Path
) -> None:
    data, digest = _blob(8 << 20, 1)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _upload(store_server, digest, data), range(8)))
    assert codes == [201] * 8
    assert httpx.head(f"{store_server.base_url}/api/blobs/{digest}").status_code == 200
    assert _partials(store_dir) == []


def _stall(server: ServerProcess, digest: str, declared: int, sent: bytes) -> socket.socket:
    """A client that sends the head and part of the body of an upload, then nothing."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    head = (
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def test_a_stalled_upload_wedges_nothing_and_is_cleaned_up(
    store_server: ServerProcess, store_dir: Path
) -> None:
    data, digest = _blob(4 << 20, 2)
    sock = _stall(store_server, digest, len(data), data[:65536])
    try:
        time.sleep(0.5)
        with ThreadPoolExecutor(8) as pool:
            queued = [pool.submit(_upload, store_server, digest, data) for _ in range(8)]
            time.sleep(1.0)
            # Everything else stays responsive while the stalled upload and 8 more wait.
            base = store_server.base_url
            for _ in range(3):
                start = time.monotonic()
                assert httpx.get(f"{base}/api/tags", timeout=5).status_code == 200
                assert httpx.get(f"{base}/health", timeout=5).status_code == 200
                assert (
                    httpx.head(f"{base}/api/blobs/sha256:{'0' * 64}", timeout=5).status_code == 404
                )
                assert time.monotonic() - start < 2
            codes = [f.result(timeout=60) for f in queued]
        # Each queued upload either stored the blob once the stalled one timed out, or was
        # told to retry; none hangs or fails otherwise.
        assert set(codes) <= {201, 409} and 201 in codes, codes
    finally:
        sock.close()
    assert httpx.head(f"{store_server.base_url}/api/blobs/{digest}").status_code == 200
    deadline = time.monotonic() + 30
    while _partials(store_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _partials(store_dir) == []


def test_an_abandoned_upload_leaves_no_partial_and_a_retry_succeeds(
    store_server: ServerProcess, store_dir: Path
) -> None:
    data, digest = _blob(2 << 20, 3)
    _stall(store_server, digest, len(data), data[:1000]).close()  # the client goes away
    deadline = time.monotonic() + 30
    while _partials(store_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _partials(store_dir) == []
    assert _upload(store_server, digest, data, timeout=30) == 201


def test_a_large_upload_after_the_stalls_succeeds(
    store_server: ServerProcess, store_dir: Path
) -> None:
    data, digest = _blob(92 << 20, 4)
    start = time.monotonic()
    assert _upload(store_server, digest, data, timeout=120) == 201
    assert time.monotonic() - start < 60
    assert _partials(store_dir) == []
