"""Secure defaults of a real ``heron serve``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.server.conftest import ServerProcess, free_port, running_server

pytestmark = pytest.mark.slow

KEY = "s3cret-key-for-tests"
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_public_bind_without_key_is_refused() -> None:
    t0 = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "heron.cli",
            "serve",
            "smollm2",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "API key" in result.stderr and "--allow-insecure-public-bind" in result.stderr
    assert time.monotonic() - t0 < 30  # refused before loading the model


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerProcess]:
    with running_server(
        "--kv-cache-memory-mb", "64", "--cors-origins", "http://good.example", api_key=KEY
    ) as s:
        yield s


def test_api_key_guards_every_route_but_health(keyed: ServerProcess) -> None:
    base = keyed.base_url
    assert httpx.get(f"{base}/health").status_code == 200
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/api/tags"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/ready"),
        ("GET", "/"),
    ]:
        r = httpx.request(method, f"{base}{path}", json=CHAT if method == "POST" else None)
        assert r.status_code == 401, path
        r = httpx.request(
            method,
            f"{base}{path}",
            headers={"Authorization": "Bearer wrong"},
            json=CHAT if method == "POST" else None,
        )
        assert r.status_code == 401, path
    # normalised paths cannot sneak past the check
    assert httpx.get(f"{base}/health/../v1/models").status_code in (401, 404)
    assert httpx.get(f"{base}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    assert (
        httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    )
    r = httpx.get(f"{base}/v1/models")
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_official_client_with_key(keyed: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="nope").models.list()


def test_foreign_host_is_forbidden(keyed: ServerProcess) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "Host": "evil.example.com"})
    assert r.status_code == 403
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "Host": f"localhost:{keyed.port}"})
    assert r.status_code == 200


def test_cors_only_for_listed_origins(keyed: ServerProcess) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in bad.headers
    pre = httpx.options(
        f"{keyed.base_url}/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    good = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "Origin": "http://good.example"})
    assert good.headers["access-control-allow-origin"] == "http://good.example"
    pre = httpx.options(
        f"{keyed.base_url}/v1/models",
        headers={"Origin": "http://good.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://good.example"


def test_body_and_header_limits(keyed: ServerProcess) -> None:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    # Declare a 5 MiB body but send only its start: the server answers from the headers,
    # without reading (or waiting for) the rest.
    import socket

    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {5 << 20}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"model": "smollm2", "prompt": "aaaa')
        reply = sock.makefile("rb").read().decode()
    assert reply.split()[1] == "413" and '"error"' in reply
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "X-Filler": "x" * (32 << 10)})
    assert 400 <= r.status_code < 500


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """Send a GET with the path exactly as given (HTTP clients normalise dot segments)."""
    import socket

    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_dot_segments_cannot_reach_other_routes(keyed: ServerProcess) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    for path in ["/v1/models/../../health", "/v1/models/..%2F..%2Fhealth", "/v1/./models"]:
        assert raw_get(keyed.port, path) in (400, 401), path  # not the open /health route
        assert raw_get(keyed.port, path, h) == 400, path
    assert raw_get(keyed.port, "/health") == 200


def test_unicode_and_id_list_abuse_get_4xx(keyed: ServerProcess) -> None:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    base = keyed.base_url
    r = httpx.post(
        f"{base}/v1/completions",
        headers=h,
        content=b'{"model": "smollm2", "prompt": "\\ud800", "max_tokens": 2}',
    )
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(
        f"{base}/api/generate", headers=h, content=b'{"model": "\\ud800", "prompt": "hi"}'
    )
    assert 400 <= r.status_code < 500 and "error" in r.json()
    body = {"model": "smollm2", "prompt": "hi", "max_tokens": 2, "stop_token_ids": [0] * 100000}
    r = httpx.post(f"{base}/v1/completions", headers=h, json=body)
    assert r.status_code == 400 and "stop_token_ids" in r.json()["error"]["message"]


def test_crafted_gguf_is_refused_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "crafted.gguf"
    bad.write_bytes(b"GGUF")
    result = subprocess.run(
        [sys.executable, "-m", "heron.cli", "serve", str(bad), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "crafted.gguf" in result.stderr


def test_an_endless_request_head_is_cut_off(keyed: ServerProcess) -> None:
    # Header lines trickle in without the blank line that ends the head: the server must answer
    # once the head passes its cap, not buffer it for ever.
    import socket

    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\n".encode())
        try:
            for i in range(200):
                sock.sendall(f"X-Filler-{i}: {'a' * 500}\r\n".encode())
        except OSError:
            pass  # the server may close while we still send
        reply = sock.makefile("rb").read().decode(errors="replace")
    assert reply.split()[1] == "400", reply[:200]
    assert httpx.get(f"{keyed.base_url}/health").status_code == 200  # and it keeps serving
