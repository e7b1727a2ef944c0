"""Faults against a real server: disconnects free KV, overload answers 503, SIGTERM drains,
an engine error mid-stream ends the stream and the server stays up."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from tests.server.conftest import ServerProcess, running_server, start_server

pytestmark = pytest.mark.slow

LONG = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
    "max_tokens": 400,
    "ignore_eos": True,
}


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_ready_fails_while_loading_health_does_not() -> None:
    # Without the prepared-weights cache the weights take seconds to load, so the port opens
    # well before they are ready however busy the machine is (from the cache the engine,
    # started first, could be ready before the HTTP process listens).
    s = start_server("--kv-cache-memory-mb", "64", env={"HERON_WEIGHT_CACHE": "0"}, wait=False)
    try:
        seen_loading = False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{s.base_url}/ready", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)  # not listening yet
                continue
            if ready.status_code == 200:
                break
            assert ready.status_code == 503 and ready.text == "loading"
            assert httpx.get(f"{s.base_url}/health").status_code == 200
            # A request that arrives while the model loads waits for it, as Ollama's do.
            busy = httpx.post(
                f"{s.base_url}/v1/completions",
                json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
                timeout=180,
            )
            assert busy.status_code == 200, busy.text
            seen_loading = True
        assert seen_loading  # the weights load after the port opens
        ok = httpx.post(
            f"{s.base_url}/v1/completions",
            json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
        )
        assert ok.status_code == 200
    finally:
        assert s.stop() == 0


def test_metrics_names(server: ServerProcess) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in [
        "heron:num_requests_running",
        "heron:num_requests_waiting",
        "heron:kv_cache_usage_perc",
        "heron:prefix_cache_queries_total",
        "heron:prefix_cache_hits_total",
        "heron:num_preemptions_total",
        "heron:prompt_tokens_total",
        "heron:generation_tokens_total",
        "heron:time_to_first_token_seconds_bucket",
        "heron:inter_token_latency_seconds_bucket",
        "heron:e2e_request_latency_seconds_bucket",
    ]:
        assert name in text, name


def test_streaming_disconnect_frees_kv(server: ServerProcess) -> None:
    base = server.base_url
    with httpx.Client(timeout=60) as client:
        with client.stream(
            "POST", f"{base}/v1/chat/completions", json={**LONG, "stream": True}
        ) as r:
            chunks = 0
            lines = r.iter_lines()  # held: dropping the iterator would close the connection
            for line in lines:
                if line.startswith("data: "):
                    chunks += 1
                if chunks >= 3:
                    break
            assert wait_for(lambda: metric(base, "heron:num_requests_running") == 1)
            assert metric(base, "heron:kv_cache_usage_perc") > 0
    # the connection is closed: the request is aborted and its blocks freed within a step
    assert wait_for(lambda: metric(base, "heron:num_requests_running") == 0)
    assert metric(base, "heron:kv_cache_usage_perc") == 0


def test_non_streaming_disconnect_frees_kv(server: ServerProcess) -> None:
    base = server.base_url
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", json=LONG, timeout=1.5)
    assert wait_for(lambda: metric(base, "heron:num_requests_running") == 0)
    assert metric(base, "heron:kv_cache_usage_perc") == 0


def test_overload_gets_503_with_retry_after() -> None:
    with running_server(
        "--max-num-seqs", "1", "--max-waiting", "1", "--kv-cache-memory-mb", "64"
    ) as s:
        results: list[httpx.Response] = []

        def call() -> None:
            body = {**LONG, "max_tokens": 200}  # still running when the rest arrive
            results.append(httpx.post(f"{s.base_url}/v1/chat/completions", json=body, timeout=120))

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
        assert busy.json()["error"]["type"] == "server_error"
        ollama = httpx.post(f"{s.base_url}/api/generate", json={"model": "smollm2", "prompt": "x"})
        assert ollama.status_code in (200, 503)


def test_sigterm_drains_in_flight_then_exits_0() -> None:
    s = start_server("--kv-cache-memory-mb", "64")
    try:
        out: dict[str, object] = {}

        def call() -> None:
            body = {**LONG, "max_tokens": 60}
            out["r"] = httpx.post(f"{s.base_url}/v1/chat/completions", json=body, timeout=120)

        t = threading.Thread(target=call)
        t.start()
        assert wait_for(lambda: metric(s.base_url, "heron:num_requests_running") == 1)
        s.proc.send_signal(signal.SIGTERM)
        t.join()
        r = out["r"]
        assert isinstance(r, httpx.Response) and r.status_code == 200
        body = r.json()
        assert body["usage"]["completion_tokens"] == 60
        assert body["choices"][0]["finish_reason"] == "length"
        assert s.proc.wait(60) == 0
    finally:
        s.stop()


def test_engine_error_mid_stream_ends_stream_and_server_stays_up() -> None:
    with running_server("--kv-cache-memory-mb", "64", env={"HERON_FAULT_INJECT_STEP": "4"}) as s:
        events = []
        with httpx.stream(
            "POST", f"{s.base_url}/v1/chat/completions", json={**LONG, "stream": True}, timeout=60
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert "error" in error and "engine error" in error["error"]["message"]
        assert httpx.get(f"{s.base_url}/health").status_code == 200
        ok = httpx.post(f"{s.base_url}/v1/chat/completions", json={**LONG, "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
