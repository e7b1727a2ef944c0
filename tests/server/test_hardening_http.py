"""Hardening of a real ``heron serve`` against a hostile client: cross-origin requests,
duplicated Host headers, a chunked body over the cap, non-ASCII token ids, slow clients and
connection floods, and embedding inputs big enough to stall the event loop. Every connection
goes to 127.0.0.1, and every loop is bounded in count and time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heron.store.pull import pull
from heron.store.store import ModelStore
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

GOOD = "http://good.example"
EVIL = "http://evil.example"
GREEDY = {"num_predict": 1, "temperature": 0}
GENERATE = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": GREEDY}
# Torch ops only: these tests are about the HTTP layer, and need no kernel build.
TORCH = {"HERON_KERNELS": "0"}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    with running_server("--kv-cache-memory-mb", "64", "--cors-origins", GOOD, env=TORCH) as s:
        yield s


def raw(port: int, head: str, body: bytes = b"") -> str:
    """Send ``head`` (CRLF line ends added) and ``body`` as they are; the reply's text."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        return sock.makefile("rb").read().decode(errors="replace")


# ----------------------------------------------------------------------- cross-origin
def test_foreign_origin_is_refused_on_every_route_but_health(plain: ServerProcess) -> None:
    base = plain.base_url
    cases = [
        ("/api/copy", {"source": "smollm2", "destination": "pwned-copy"}),
        ("/api/create", {"model": "pwned-create", "from": "smollm2"}),
        ("/api/generate", GENERATE),
        ("/v1/chat/completions", CHAT),
    ]
    # What a page can send without a preflight: text/plain, a form, or no type at all.
    import json

    for path, body in cases:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Origin": EVIL}
            if ctype is not None:
                headers["Content-Type"] = ctype
            r = httpx.post(f"{base}{path}", content=json.dumps(body), headers=headers, timeout=60)
            assert r.status_code == 403, (path, ctype, r.text)
            error = r.json()["error"]
            if path.startswith("/api/"):
                assert "origin" in error
            else:
                assert "origin" in error["message"] and error["type"] == "invalid_request_error"
        r = httpx.post(f"{base}{path}", json=body, headers={"Origin": EVIL}, timeout=60)
        assert r.status_code == 403, path
    names = [m["name"] for m in httpx.get(f"{base}/api/tags").json()["models"]]
    assert not any(n.startswith("pwned") for n in names)
    for origin in (EVIL, "null", "http://localhost:3000"):  # loopback origins need listing too
        assert httpx.get(f"{base}/v1/models", headers={"Origin": origin}).status_code == 403
        assert httpx.get(f"{base}/health", headers={"Origin": origin}).status_code == 200


def test_listed_and_same_origins_are_allowed(plain: ServerProcess) -> None:
    base = plain.base_url
    r = httpx.post(f"{base}/api/generate", json=GENERATE, headers={"Origin": GOOD}, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == GOOD
    same = f"http://127.0.0.1:{plain.port}"
    r = httpx.post(f"{base}/api/generate", json=GENERATE, headers={"Origin": same}, timeout=60)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_json_routes_take_only_application_json(plain: ServerProcess) -> None:
    import json

    base = plain.base_url
    for path, body in (("/v1/chat/completions", CHAT), ("/api/generate", GENERATE)):
        for ctype in ("text/plain", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = httpx.post(f"{base}{path}", content=json.dumps(body), headers=headers, timeout=60)
            assert r.status_code in (400, 415), (path, ctype, r.text)
            assert "application/json" in r.text
        headers = {"Content-Type": "application/json; charset=utf-8"}
        r = httpx.post(f"{base}{path}", content=json.dumps(body), headers=headers, timeout=60)
        assert r.status_code == 200, r.text
    # Blob uploads are octet-stream and are not JSON routes.
    digest = "sha256:" + "0" * 64
    r = httpx.post(
        f"{base}/api/blobs/{digest}",
        content=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code in (400, 404) and "application/json" not in r.text


# ----------------------------------------------------------------------- request framing
def test_two_host_headers_are_refused(plain: ServerProcess) -> None:
    port = plain.port
    for first, second in (("evil.example", f"127.0.0.1:{port}"), (f"127.0.0.1:{port}",) * 2):
        head = f"GET /v1/models HTTP/1.1\nHost: {first}\nHost: {second}\nConnection: close\n\n"
        reply = raw(port, head)
        assert reply.split()[1] == "400", reply[:200]
    reply = raw(port, f"GET /v1/models HTTP/1.1\nHost: 127.0.0.1:{port}\nConnection: close\n\n")
    assert reply.split()[1] == "200"


def test_chunked_body_over_the_cap_is_413(plain: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2", "prompt": "'
        for _ in range(80):
            yield b"a" * (64 << 10)  # 5 MiB in all, over the 4 MiB cap
        yield b'"}'

    r = httpx.post(
        f"{plain.base_url}/v1/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] == "request body is too large"
    r = httpx.post(
        f"{plain.base_url}/api/generate",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and r.json() == {"error": "request body is too large"}


def test_logit_bias_keys_must_be_ascii_digits(plain: ServerProcess) -> None:
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1, "logit_bias": {"١٢": 5}}
    r = httpx.post(f"{plain.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logit_bias"
    body = {**CHAT, "logit_bias": {"１２": 5}}  # fullwidth digits
    r = httpx.post(f"{plain.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    body = {**CHAT, "logit_bias": {"12": 5}}
    assert httpx.post(f"{plain.base_url}/v1/chat/completions", json=body, timeout=60).is_success


# ----------------------------------------------------------------------- slow clients
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
PER_CLIENT = 16


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServerProcess]:
    with running_server(
        "--header-timeout",
        str(HEAD_TIMEOUT_S),
        "--body-timeout",
        str(BODY_TIMEOUT_S),
        "--max-connections-per-client",
        str(PER_CLIENT),
        model=None,
    ) as s:
        yield s


def closed_by_server(sock: socket.socket, deadline: float, trickle: bytes) -> bool:
    """Send ``trickle`` a byte at a time (one every 0.2 s) until the server closes the
    connection or ``deadline`` passes. True if the server closed it."""
    sock.setblocking(False)
    i = 0
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except BlockingIOError:
            pass
        except OSError:
            return True
        try:
            sock.send(trickle[i % len(trickle) : i % len(trickle) + 1])
        except OSError:
            return True
        i += 1
        time.sleep(0.2)
    return False


def test_slow_heads_and_bodies_are_cut_off(guarded: ServerProcess) -> None:
    port = guarded.port
    body_head = (
        f"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    socks: list[tuple[socket.socket, bytes]] = []
    try:
        for i in range(10):  # 10 slow heads, 4 slow bodies: under the per-client cap
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i < 4:
                sock.sendall(body_head + b"{")
                socks.append((sock, b" "))
            else:
                socks.append((sock, f"GET /health HTTP/1.1\r\nX-Slow-{i}: ".encode() + b"a" * 99))
        # Each must be closed after its timeout (plus a tick and scheduling slack).
        deadline = time.monotonic() + BODY_TIMEOUT_S + 4
        results = [closed_by_server(s, deadline, trickle) for s, trickle in socks]
        assert all(results), results
    finally:
        for s, _ in socks:
            s.close()
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200


def test_connections_per_client_are_capped(guarded: ServerProcess) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(PER_CLIENT + 4):
            socks.append(socket.create_connection(("127.0.0.1", guarded.port), timeout=5))
        refused = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 429"):
                refused += 1
        assert refused == 4
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.5)  # the server sees the closes
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200


# ----------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("hardening-embed")
    pull(ModelStore(root), "all-minilm", lambda _progress: None)
    with running_server(
        "--kv-cache-memory-mb", "64", env={**TORCH, "HERON_MODELS": str(root)}, model=None
    ) as s:
        yield s


def test_absurd_dimensions_are_refused_before_loading(embed_server: ServerProcess) -> None:
    base = embed_server.base_url
    for path in ("/v1/embeddings", "/api/embed"):
        body = {"model": "all-minilm", "input": "hi", "dimensions": 1e9}
        r = httpx.post(f"{base}{path}", json=body, timeout=60)
        assert r.status_code == 400 and "dimensions" in r.text, r.text
    loaded = [m["name"] for m in httpx.get(f"{base}/api/ps").json()["models"]]
    assert not any("all-minilm" in n for n in loaded), loaded


def test_huge_embedding_input_does_not_stall_the_server(embed_server: ServerProcess) -> None:
    base = embed_server.base_url
    warm = httpx.post(
        f"{base}/v1/embeddings", json={"model": "all-minilm", "input": "hi"}, timeout=120
    )
    assert warm.status_code == 200
    big = {"model": "all-minilm", "input": "hello world " * 325_000}  # 3.9 million characters
    replies: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: replies.append(httpx.post(f"{base}/v1/embeddings", json=big, timeout=120))
    )
    worker.start()
    worst = 0.0
    t0 = time.monotonic()
    while worker.is_alive() and time.monotonic() - t0 < 60:
        t = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.05)
    worker.join(60)
    assert replies and replies[0].status_code == 400, replies
    assert "context length" in replies[0].json()["error"]["message"]
    assert worst < 0.5, worst


# ----------------------------------------------------------------------- the protocol alone
class FakeTransport:
    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.peer, self.written, self.closed, self.reading = peer, b"", False, True

    def get_extra_info(self, name: str) -> object:
        return (self.peer, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return self.reading


class FakeInner:
    def __init__(self, **kwargs: object) -> None:
        self.data = b""
        self.made = self.lost = False

    def connection_made(self, transport: object) -> None:
        self.made = True

    def connection_lost(self, exc: object) -> None:
        self.lost = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        return None


def guarded_class(**limits: float) -> type:
    from heron.server.http import ConnectionLimits, GuardedProtocol

    class Guarded(GuardedProtocol):
        inner_class = FakeInner
        clients: dict[str, int] = {}

    Guarded.limits = ConnectionLimits(max_head_bytes=16 << 10, **limits)  # type: ignore[arg-type]
    return Guarded


def test_protocol_clocks() -> None:
    import asyncio

    async def run() -> None:
        cls = guarded_class(head_timeout_s=0.3, body_timeout_s=0.4, max_per_client=2)
        # A complete request stops the head clock; a kept-alive connection that then sends
        # stray bytes has its clock running again.
        done, t1 = cls(), FakeTransport()
        done.connection_made(t1)
        done.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        stray, t2 = cls(), FakeTransport()
        stray.connection_made(t2)
        stray.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        stray.data_received(b"\r\n")
        # The cap: a third connection from the same address is refused; another address is not.
        refused, t3 = cls(), FakeTransport()
        refused.connection_made(t3)
        assert t3.written.startswith(b"HTTP/1.1 429") and not refused._inner.made
        other, t4 = cls(), FakeTransport("127.0.0.2")
        other.connection_made(t4)
        other.data_received(b"POST /api/show HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        t4.reading = False  # uvicorn stopped reading: its app has not taken the body yet
        silent, t5 = cls(), FakeTransport("127.0.0.3")  # connects and sends nothing
        silent.connection_made(t5)
        await asyncio.sleep(0.7)
        assert not t1.closed and t2.closed and not t4.closed
        assert t5.written.startswith(b"HTTP/1.1 408")
        t4.reading = True
        await asyncio.sleep(0.7)
        assert t4.closed
        for p in (done, stray, refused, other, silent):
            p.connection_lost(None)
        assert cls.clients == {}

    asyncio.run(run())
