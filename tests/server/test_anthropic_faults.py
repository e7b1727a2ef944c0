"""Faults through the Anthropic API: an engine error mid-stream ends the stream with
``event: error``, disconnects free KV, overload answers 503 ``overloaded_error`` with
Retry-After, and the API key may come as ``x-api-key``."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

KEY = "anthropic-test-key"
LONG: dict[str, Any] = {
    "model": "smollm2",
    "max_tokens": 400,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
}


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", headers={"x-api-key": KEY}).text
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------- the shared server (no key)
def test_streaming_disconnect_frees_kv(server: ServerProcess) -> None:
    base = server.base_url
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{base}/v1/messages", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            # keep a reference: dropping a half-read line iterator closes the connection
            lines = r.iter_lines()
            deltas = 0
            while deltas < 3:
                deltas += next(lines) == "event: content_block_delta"
            assert wait_for(lambda: metric(base, "heron:num_requests_running") == 1)
            assert metric(base, "heron:kv_cache_usage_perc") > 0
    # the connection is closed: the request is aborted and its blocks freed within a step
    assert wait_for(lambda: metric(base, "heron:num_requests_running") == 0)
    assert metric(base, "heron:kv_cache_usage_perc") == 0


def test_non_streaming_disconnect_frees_kv(server: ServerProcess) -> None:
    base = server.base_url
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/messages", json=LONG, timeout=1.5)
    assert wait_for(lambda: metric(base, "heron:num_requests_running") == 0)
    assert metric(base, "heron:kv_cache_usage_perc") == 0


# ---------------------------- a keyed server with one injected engine fault, one slot
@pytest.fixture(scope="module")
def faulty() -> Iterator[ServerProcess]:
    with running_server(
        "--kv-cache-memory-mb",
        "64",
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "1",
        api_key=KEY,
        env={"HERON_FAULT_INJECT_STEP": "4"},
    ) as s:
        yield s


def test_engine_error_mid_stream_sends_error_event(faulty: ServerProcess) -> None:
    # must be the first generation on this server: the fault fires at engine step 4
    frames = []
    with httpx.stream(
        "POST",
        f"{faulty.base_url}/v1/messages",
        json={**LONG, "stream": True},
        headers={"x-api-key": KEY},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        frames = r.read().decode()[:-2].split("\n\n")
    names = [frame.split("\n")[0].removeprefix("event: ") for frame in frames]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "error" and "message_stop" not in names
    error = json.loads(frames[-1].split("\n")[1].removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "engine error" in error["error"]["message"]

    assert httpx.get(f"{faulty.base_url}/health").status_code == 200
    client = anthropic.Anthropic(base_url=faulty.base_url, api_key=KEY, max_retries=0)
    msg = client.messages.create(
        model="smollm2",
        max_tokens=4,
        messages=LONG["messages"],
        extra_body={"temperature": 0},
    )
    assert msg.usage.output_tokens == 4 and msg.stop_reason == "max_tokens"


def test_api_key_as_x_api_key(faulty: ServerProcess) -> None:
    client = anthropic.Anthropic(base_url=faulty.base_url, api_key=KEY, max_retries=0)
    assert client.messages.count_tokens(model="smollm2", messages=LONG["messages"]).input_tokens
    wrong = anthropic.Anthropic(base_url=faulty.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="smollm2", max_tokens=4, messages=LONG["messages"])
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    r = httpx.post(f"{faulty.base_url}/v1/messages", json=LONG)
    assert r.status_code == 401 and r.json()["type"] == "error"


def test_overload_gets_503_overloaded_error(faulty: ServerProcess) -> None:
    results: list[httpx.Response] = []

    def call() -> None:
        body = {**LONG, "max_tokens": 200}  # still running when the rest arrive
        headers = {"x-api-key": KEY}
        url = f"{faulty.base_url}/v1/messages"
        results.append(httpx.post(url, json=body, headers=headers, timeout=120))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"].isdigit()
    assert busy.json()["type"] == "error"
    assert busy.json()["error"]["type"] == "overloaded_error"
