"""Embeddings on a real ``heron serve``: all-minilm from the store beside smollm2 (the command
line's model), driven by the official ``openai`` and ``ollama`` clients and httpx, checked
against ``LLM.embed`` in this process. Plus the embedding engine-core loop on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest

from heron import LLM
from heron.engine.embedding_core import EmbeddingCore
from heron.engine.protocol import (
    AbortRequests,
    Embeddings,
    EmbedRequest,
    EngineCoreRequest,
    Rejected,
    Shutdown,
    decode_from_core,
    encode,
)
from heron.sampling_params import SamplingParams
from heron.store.pull import pull
from heron.store.store import ModelStore
from tests.server.conftest import ServerProcess, running_server

EMBED = "all-minilm"
TEXTS = [
    "hello world",
    "A heron stands motionless in the shallow water, waiting for a fish. " * 5,
    "x",
    "Embeddings map text to vectors; similar meanings land close together.",
]
LONG = "the heron waits " * 300  # ~900 tokens, above the model's 512
ATOL = 1e-5


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("embed-models")
    store = ModelStore(root)
    stored = pull(store, EMBED, lambda _progress: None)
    return root, str(store.model_path(stored))


@pytest.fixture(scope="module")
def embed_server(minilm_store: tuple[Path, str]) -> Iterator[ServerProcess]:
    env = {"HERON_MODELS": str(minilm_store[0])}
    with running_server("--kv-cache-memory-mb", "64", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def reference(minilm_store: tuple[Path, str]) -> LLM:
    return LLM(minilm_store[1])


def post(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=120)


def close(a: Any, b: Any) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=ATOL))


# ------------------------------------------------------------------------ clients
def test_openai_client(embed_server: ServerProcess, reference: LLM) -> None:
    client = openai.OpenAI(base_url=f"{embed_server.base_url}/v1", api_key="x", timeout=120)
    expected = reference.embed(TEXTS)
    tokens = [reference.get_tokenizer().encode(t) for t in TEXTS]
    # the client asks for base64 unless told otherwise, and decodes it
    r = client.embeddings.create(model=EMBED, input=TEXTS)
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    assert close([d.embedding for d in r.data], expected)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(map(len, tokens))
    assert r.model == EMBED
    r = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float")
    assert len(r.data) == 1 and close(r.data[0].embedding, expected[0])
    r = client.embeddings.create(model=EMBED, input=tokens, dimensions=384)
    assert close([d.embedding for d in r.data], expected)
    r = client.embeddings.create(model=EMBED, input=tokens[3])
    assert close(r.data[0].embedding, expected[3])


def test_ollama_client(embed_server: ServerProcess, reference: LLM) -> None:
    client = ollama.Client(host=embed_server.base_url, timeout=120)
    expected = reference.embed(TEXTS)
    r = client.embed(model=EMBED, input=TEXTS)
    assert r.model == EMBED and close(r.embeddings, expected)
    num_tokens = sum(len(reference.get_tokenizer().encode(t)) for t in TEXTS)
    assert r.prompt_eval_count == num_tokens
    assert r.total_duration and r.load_duration and r.load_duration < r.total_duration
    assert close(client.embed(model=EMBED, input=TEXTS[1]).embeddings, expected[1:2])
    assert close(client.embeddings(model=EMBED, prompt=TEXTS[2]).embedding, expected[2])
    # truncation is on by default: the input is cut to 512 tokens, as LLM.embed cuts it
    r = client.embed(model=EMBED, input=LONG)
    assert r.prompt_eval_count == 512 and close(r.embeddings[0], reference.embed(LONG)[0])
    # an empty input loads the model and embeds nothing, as in Ollama
    assert client.embed(model=EMBED, input="").embeddings == []
    assert client.embeddings(model=EMBED, prompt="").embedding == []


def test_model_routes(embed_server: ServerProcess) -> None:
    show = post(embed_server, "/api/show", {"model": EMBED}).json()
    assert show["capabilities"] == ["embedding"]
    assert show["details"]["family"] == "bert"
    assert show["details"]["parameter_size"] == "22.71M"
    assert post(embed_server, "/api/show", {"model": "smollm2"}).json()["capabilities"] == [
        "completion"
    ]
    post(embed_server, "/api/embed", {"model": EMBED, "input": "load"}).raise_for_status()
    ps = httpx.get(f"{embed_server.base_url}/api/ps").json()["models"]
    assert any(m["name"] == "all-minilm:latest" and m["context_length"] == 512 for m in ps)


# ------------------------------------------------------------------------- errors
def _error(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    body = r.json()["error"]
    return str(body["message"] if isinstance(body, dict) else body)


def test_errors(embed_server: ServerProcess) -> None:
    s = embed_server
    v1, embed = "/v1/embeddings", "/api/embed"
    # the wrong kind of model, both ways
    assert "does not support embeddings" in _error(post(s, v1, {"model": "smollm2", "input": "a"}))
    assert "does not support embeddings" in _error(
        post(s, embed, {"model": "smollm2", "input": "a"})
    )
    assert "does not support embeddings" in _error(
        post(s, "/api/embeddings", {"model": "smollm2", "prompt": "a"})
    )
    assert "does not support generate" in _error(
        post(s, "/api/generate", {"model": EMBED, "prompt": "hi", "stream": False})
    )
    chat = {"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
    assert "does not support generate" in _error(post(s, "/v1/chat/completions", chat))
    # empty input (OpenAI), malformed input, too many inputs or tokens
    assert "empty" in _error(post(s, v1, {"model": EMBED, "input": ""}))
    assert "empty" in _error(post(s, v1, {"model": EMBED, "input": []}))
    _error(post(s, v1, {"model": EMBED, "input": [1, "a"]}))
    _error(post(s, embed, {"model": EMBED, "input": [1]}))
    many = ["a"] * 257
    assert "too many inputs" in _error(post(s, v1, {"model": EMBED, "input": many}))
    assert "too many inputs" in _error(post(s, embed, {"model": EMBED, "input": many}))
    assert "too many tokens" in _error(post(s, embed, {"model": EMBED, "input": [LONG] * 65}))
    assert "token ids" in _error(post(s, v1, {"model": EMBED, "input": [[101, 10**6]]}))
    # dimensions: only the model's own
    assert "dimensions" in _error(post(s, v1, {"model": EMBED, "input": "a", "dimensions": 12}))
    assert "dimensions" in _error(post(s, embed, {"model": EMBED, "input": "a", "dimensions": 12}))
    # over-long input: OpenAI never cuts; Ollama cuts unless truncate is false
    assert "context length" in _error(post(s, v1, {"model": EMBED, "input": LONG}))
    long_embed = {"model": EMBED, "input": [LONG], "truncate": False}
    assert "exceeds maximum context length" in _error(post(s, embed, long_embed))
    num_ctx = {"model": EMBED, "input": "a", "options": {"num_ctx": 100000}}
    assert "num_ctx" in _error(post(s, embed, num_ctx))
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x").embeddings.create(
            model="smollm2", input="a"
        )
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=s.base_url).embed(model=EMBED, input=LONG, truncate=False)
    assert info.value.status_code == 400


# -------------------------------------------------------------------- concurrency
def test_concurrent_embeddings_beside_generation(
    embed_server: ServerProcess, reference: LLM
) -> None:
    s = embed_server
    heavy = [f"{i} {LONG}" for i in range(8)]  # 8 x 512 tokens: seconds of work
    small = [[t, f"{t} again"] for t in TEXTS]
    generate = {"model": "smollm2", "prompt": "Count to five.", "stream": False}
    generate["options"] = {"temperature": 0, "num_predict": 8}
    with ThreadPoolExecutor(8) as pool:
        big = pool.submit(post, s, "/api/embed", {"model": EMBED, "input": heavy})
        time.sleep(0.3)
        health_started = time.monotonic()
        assert httpx.get(f"{s.base_url}/health", timeout=30).status_code == 200
        health_s = time.monotonic() - health_started
        smalls = [pool.submit(post, s, "/v1/embeddings", {"model": EMBED, "input": x})
                  for x in small]  # fmt: skip
        gen = pool.submit(post, s, "/api/generate", generate)
        results = [f.result() for f in smalls]
        generated = gen.result()
        big_result = big.result()
    assert health_s < 2.0  # the event loop never waits for the engine
    assert generated.status_code == 200 and generated.json()["eval_count"] > 0
    assert big_result.status_code == 200 and len(big_result.json()["embeddings"]) == 8
    for pair, r in zip(small, results, strict=True):
        assert r.status_code == 200, r.text
        assert close([d["embedding"] for d in r.json()["data"]], reference.embed(pair))


# --------------------------------------------------------------------- engine core
class FakeEmbedder:
    """Records each batch; a vector is [number of tokens, first token]."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    def check_inputs(self, batch: list[list[int]]) -> None:
        if any(not ids for ids in batch):
            raise ValueError("an input is empty")

    def embed_token_ids(self, batch: list[list[int]]) -> list[list[float]]:
        self.batches.append(batch)
        return [[float(len(ids)), float(ids[0])] for ids in batch]


def test_engine_core_batches_everything_queued() -> None:
    server_end, core_end = Pipe()
    engine = FakeEmbedder()
    core = EmbeddingCore(engine, core_end)  # type: ignore[arg-type]
    for msg in [
        EmbedRequest("a", [[1, 2], [3]]),
        EmbedRequest("b", [[4, 5, 6]]),
        EngineCoreRequest("g", [1], SamplingParams()),
        EmbedRequest("bad", [[7], []]),
        EmbedRequest("c", [[8]]),
        EmbedRequest("gone", [[9]]),
        AbortRequests(["gone"]),
    ]:
        server_end.send_bytes(encode(msg))
    thread = threading.Thread(target=core.loop)
    thread.start()
    replies: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while len(replies) < 5 and time.monotonic() < deadline:
        if server_end.poll(0.1):
            reply = decode_from_core(server_end.recv_bytes())
            if isinstance(reply, Embeddings | Rejected):
                replies[reply.request_id] = reply
    server_end.send_bytes(encode(Shutdown()))
    thread.join(10)
    assert not thread.is_alive()
    assert engine.batches == [[[1, 2], [3], [4, 5, 6], [8]]]  # one batch for every request
    assert replies["a"] == Embeddings("a", [[2.0, 1.0], [1.0, 3.0]])
    assert replies["b"] == Embeddings("b", [[3.0, 4.0]])
    assert replies["c"] == Embeddings("c", [[1.0, 8.0]])
    assert (
        isinstance(replies["g"], Rejected) and "does not support generate" in replies["g"].message
    )
    assert replies["bad"] == Rejected("bad", "an input is empty")
    assert "gone" not in replies
