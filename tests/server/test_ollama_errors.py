"""Bad requests to Ollama's API get 4xx ``{"error": "..."}`` and never reach the engine;
an engine failure after streaming started is a final NDJSON ``{"error": ...}`` line."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

GEN = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "stream": False}


def opts(**options: Any) -> dict[str, Any]:
    return {**GEN, "options": {"num_predict": 2, **options}}


BAD_GENERATE: list[tuple[str, dict[str, Any], int, str]] = [
    ("no model", {"prompt": "Hi"}, 400, "model is required"),
    ("unknown model", {**GEN, "model": "llama3"}, 404, "model 'llama3' not found"),
    ("path-like model", {**GEN, "model": "../x"}, 404, "model '../x' not found"),
    ("absolute path", {**GEN, "model": "/etc/passwd"}, 404, "not found"),
    ("NUL in model", {**GEN, "model": "smollm2\u0000"}, 404, "not found"),
    ("prompt not a string", {**GEN, "prompt": 5}, 400, "prompt"),
    ("stream not a bool", {**GEN, "stream": "yes"}, 400, "stream"),
    ("context not ints", {**GEN, "context": ["a"]}, 400, "context"),
    ("context out of vocab", {**GEN, "context": [10**9]}, 400, "context token ids"),
    ("unknown field", {**GEN, "temperature": 0.5}, 400, "temperature"),
    ("options not an object", {**GEN, "options": [1]}, 400, "options"),
    ("option of wrong type", opts(temperature="hot"), 400, "options.temperature"),
    ("int option given a string", opts(num_ctx="2048"), 400, "options.num_ctx"),
    ("bool option given an int", opts(use_mmap=1), 400, "options.use_mmap"),
    ("stop of wrong type", opts(stop=[1]), 400, "options.stop"),
    ("num_predict 0", opts(num_predict=0), 400, "num_predict"),
    ("num_predict over the cap", opts(num_predict=10**6), 400, "num_predict"),
    ("num_ctx over the context", opts(num_ctx=10**6), 400, "num_ctx"),
    ("temperature out of range", opts(temperature=1000), 400, "temperature"),
    ("repeat_penalty out of range", opts(repeat_penalty=-1), 400, "repeat_penalty"),
    ("seed too large", opts(seed=2**64), 400, "seed"),
    ("mirostat", opts(mirostat=2), 400, "mirostat"),
    ("typical_p", opts(typical_p=0.5), 400, "typical_p"),
    ("too many stop strings", opts(stop=[f"s{i}" for i in range(100)]), 400, "stop"),
    ("top_logprobs over 20", {**GEN, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("keep_alive not a duration", {**GEN, "keep_alive": "soon"}, 400, "invalid duration"),
    ("suffix", {**GEN, "suffix": "end"}, 400, "insert"),
    ("images", {**GEN, "images": ["aGk="]}, 400, "images"),
    ("format not json", {**GEN, "format": "xml"}, 400, "invalid format 'xml'"),
    ("format not a schema", {**GEN, "format": {"type": "nonsense"}}, 400, "invalid JSON schema"),
    ("format of wrong type", {**GEN, "format": 5}, 400, "format"),
    ("think", {**GEN, "think": True}, 400, "thinking"),
    ("think level", {**GEN, "think": "high"}, 400, "thinking"),
    ("template override", {**GEN, "template": "{{ .Prompt }}"}, 400, "template"),
    ("raw with system", {**GEN, "raw": True, "system": "Be brief."}, 400, "raw mode"),
    ("image generation", {**GEN, "width": 512}, 400, "width"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [pytest.param(b, s, m, id=i) for i, b, s, m in BAD_GENERATE],
)
def test_bad_generate(
    server: ServerProcess, body: dict[str, Any], status: int, message: str
) -> None:
    r = httpx.post(f"{server.base_url}/api/generate", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"]


BAD_CHAT: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown model", {**CHAT, "model": "nope:7b"}, 404, "model 'nope:7b' not found"),
    ("messages not a list", {**CHAT, "messages": "Hi"}, 400, "messages"),
    ("bad role", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    (
        "content not a string",
        {**CHAT, "messages": [{"role": "user", "content": 1}]},
        400,
        "content",
    ),
    (
        "unknown message field",
        {**CHAT, "messages": [{"role": "user", "content": "x", "name": "a"}]},
        400,
        "name",
    ),
    (
        "image in a message",
        {**CHAT, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
        400,
        "images",
    ),
    (
        "bad tool",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]},
        400,
        "tools",
    ),
    ("tool not a function", {**CHAT, "tools": [{"type": "f"}]}, 400, "tools.0.type"),
    (
        "tool call without a name",
        {**CHAT, "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
        400,
        "messages.0.tool_calls.0.function.name",
    ),
    ("format not json", {**CHAT, "format": "yaml"}, 400, "invalid format 'yaml'"),
    ("think", {**CHAT, "think": True}, 400, "thinking"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [pytest.param(b, s, m, id=i) for i, b, s, m in BAD_CHAT]
)
def test_bad_chat(server: ServerProcess, body: dict[str, Any], status: int, message: str) -> None:
    r = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_malformed_and_missing_bodies(server: ServerProcess, path: str) -> None:
    url = f"{server.base_url}{path}"
    for content in (b'{"model": "smollm2", ', b"not json", b"[1, 2]", b""):
        r = httpx.post(url, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, (content, r.text)
        assert list(r.json()) == ["error"]


def test_show_unknown_model(server: ServerProcess) -> None:
    r = httpx.post(f"{server.base_url}/api/show", json={"model": "../../etc/passwd"})
    assert r.status_code == 404 and r.json() == {"error": "model '../../etc/passwd' not found"}


def test_prompt_longer_than_the_context(server: ServerProcess) -> None:
    long_prompt = "hello " * 10_000
    r = httpx.post(
        f"{server.base_url}/api/generate", json={**GEN, "prompt": long_prompt}, timeout=60
    )
    assert r.status_code == 400 and "context length" in r.json()["error"]
    # a smaller num_ctx lowers the limit
    r = httpx.post(f"{server.base_url}/api/chat", json={**CHAT, "options": {"num_ctx": 8}})
    assert r.status_code == 400 and "context length is 8" in r.json()["error"]
    # streaming requests are refused before the stream starts, with a real status
    r = httpx.post(
        f"{server.base_url}/api/generate", json={**GEN, "stream": True, "prompt": long_prompt}
    )
    assert r.status_code == 400 and list(r.json()) == ["error"]


def test_client_raises_response_error(server: ServerProcess) -> None:
    client = ollama.Client(host=server.base_url)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="missing", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 404 and info.value.error == "model 'missing' not found"
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="smollm2", prompt="Hi", options={"temperature": "warm"})
    assert info.value.status_code == 400


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[ServerProcess]:
    """Fails engine step 4 (the first request's), then runs one sequence at a time with one
    waiting: the fault test must run first."""
    env = {"HERON_FAULT_INJECT_STEP": "4"}
    args = ("--kv-cache-memory-mb", "64", "--max-num-seqs", "1", "--max-waiting", "1")
    with running_server(*args, env=env) as s:
        yield s


def test_engine_error_mid_stream_is_an_ndjson_line(faulty_server: ServerProcess) -> None:
    base = faulty_server.base_url
    body = {"model": "smollm2", "prompt": "Tell me a story.", "options": {"num_predict": 40}}
    r = httpx.post(f"{base}/api/generate", json=body, timeout=60)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert lines[0]["done"] is False
    assert list(lines[-1]) == ["error"] and "engine error" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines[:-1])
    # the server stays up and serves the next request
    ok = httpx.post(f"{base}/api/generate", json=GEN, timeout=60)
    assert ok.status_code == 200 and ok.json()["eval_count"] == 2


def test_queue_full_is_503_with_retry_after(faulty_server: ServerProcess) -> None:
    results: list[httpx.Response] = []

    def call(stream: bool) -> None:
        body = {**GEN, "stream": stream, "options": {"num_predict": 30}}
        results.append(httpx.post(f"{faulty_server.base_url}/api/generate", json=body, timeout=120))

    threads = [threading.Thread(target=call, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    busy = [r for r in results if r.status_code == 503]
    assert busy and any(r.status_code == 200 for r in results)
    for r in busy:  # streamed or not, refused before the stream starts
        assert r.headers["retry-after"].isdigit()
        assert list(r.json()) == ["error"] and "busy" in r.json()["error"]
