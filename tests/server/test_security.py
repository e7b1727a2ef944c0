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
    big = b'{"model": "smollm2", "prompt": "' + b"a" * (5 << 20) + b'"}'
    r = httpx.post(f"{keyed.base_url}/v1/completions", content=big, headers=h)
    assert r.status_code == 413 and "error" in r.json()
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={**h, "X-Filler": "x" * (32 << 10)})
    assert 400 <= r.status_code < 500
