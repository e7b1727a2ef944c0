"""A fake chat server for the bench client: streams a few timed chunks per request on the OpenAI
and Ollama APIs, and misbehaves on request (the model name picks the behaviour)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from heron.bench.targets import free_port

GAP_S = 0.01  # between chunks


@dataclass
class FakeServer:
    base_url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _app(server: FakeServer) -> FastAPI:
    app = FastAPI()

    async def record(request: Request) -> dict[str, Any]:
        body = await request.json()
        server.bodies.append(body)
        server.headers.append(dict(request.headers))
        return body

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await record(request)
        mode = body["model"]
        if mode == "bad-request":
            return JSONResponse({"error": {"message": "max_tokens is too large"}}, 400)
        n = body["max_tokens"]
        turn = sum(m["role"] == "user" for m in body["messages"])

        async def events() -> AsyncIterator[bytes]:
            def sse(obj: Any) -> bytes:
                return f"data: {json.dumps(obj)}\n\n".encode()

            yield sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            per_chunk = 2 if mode == "two-per-chunk" else 1
            for i in range(n // per_chunk):
                await asyncio.sleep(GAP_S)
                if mode == "mid-error" and i == 1:
                    yield sse({"error": {"message": "engine failed"}})
                    return
                text = f"t{turn}.{i} "
                yield sse({"choices": [{"index": 0, "delta": {"content": text}}]})
            if mode == "cut":
                return
            last = {"index": 0, "delta": {}, "finish_reason": "length"}
            yield sse({"choices": [last]})
            if mode != "no-usage":
                usage = {"prompt_tokens": 7 * turn, "completion_tokens": n}
                yield sse({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/api/chat")
    async def ollama_chat(request: Request) -> Response:
        body = await record(request)
        n = body["options"]["num_predict"]

        async def lines() -> AsyncIterator[bytes]:
            for i in range(n):
                await asyncio.sleep(GAP_S)
                msg = {"message": {"role": "assistant", "content": f"o{i} "}, "done": False}
                yield (json.dumps(msg) + "\n").encode()
            end = {"message": {"role": "assistant", "content": ""}, "done": True,
                   "done_reason": "length", "eval_count": n, "prompt_eval_count": 5}  # fmt: skip
            yield (json.dumps(end) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    port = free_port()
    server = FakeServer(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(_app(server), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    yield server
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeServer:
    fake_server.bodies.clear()
    fake_server.headers.clear()
    return fake_server
