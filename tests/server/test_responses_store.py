"""The Responses API's bounded store (retrieve, input items, delete, previous_response_id),
input items, truncation, and its 400s, on a real ``heron serve`` with the official client."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from heron.server.openai.responses_protocol import ResponseObject
from heron.server.openai.responses_store import ResponseStore, StoredResponse
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120)


def assert_error(r: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], err


# ---------------------------------------------------------------------------- store
def test_stored_response_is_retrieved_and_deleted(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    resp = client.responses.create(
        model=server.model, input="Hi", max_output_tokens=8, metadata={"k": "v"}
    )
    got = client.responses.retrieve(resp.id)
    assert got.model_dump() == resp.model_dump()
    assert got.metadata == {"k": "v"}
    items = client.responses.input_items.list(resp.id)
    assert [(i.type, i.content[0].text) for i in items.data] == [("message", "Hi")]  # type: ignore[union-attr]
    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(resp.id)


def test_store_false_keeps_nothing(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(model=server.model, input="Hi", max_output_tokens=4, store=False)
    assert resp.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    r = post(server, {"model": server.model, "input": "Go on", "previous_response_id": resp.id})
    assert_error(r, 404, "previous_response_id", resp.id)


def test_previous_response_id_continues_the_conversation(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    first = client.responses.create(
        model=server.model, input="My name is Ada.", max_output_tokens=10, temperature=0
    )
    second = client.responses.create(
        model=server.model,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=10,
        temperature=0,
    )
    alone = client.responses.create(
        model=server.model, input="What is my name?", max_output_tokens=10, temperature=0
    )
    assert second.previous_response_id == first.id
    assert first.usage and second.usage and alone.usage
    # The second prompt holds the first turn (its input and output) before its own.
    grown = second.usage.input_tokens - alone.usage.input_tokens
    assert grown > first.usage.output_tokens
    # The same conversation sent as items renders the same prompt.
    replay = client.responses.create(
        model=server.model,
        input=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=10,
        temperature=0,
    )
    assert replay.usage and replay.usage.input_tokens == second.usage.input_tokens
    assert replay.output_text == second.output_text


def test_unknown_previous_response_id(server: ServerProcess) -> None:
    r = post(server, {"model": server.model, "input": "x", "previous_response_id": "resp_x"})
    assert_error(r, 404, "previous_response_id", "resp_x")


def test_store_caps() -> None:
    store = ResponseStore(max_responses=2, max_chars=100, ttl_s=60)

    def put(i: int, text: str) -> str:
        response = ResponseObject(id=f"resp_{i}", created_at=0, status="completed", model="m")
        store.put(StoredResponse(response, [{"role": "user", "content": text}], []))
        return response.id

    a, b, c = put(1, "a"), put(2, "b"), put(3, "c")
    assert store.get(a) is None and store.get(b) and store.get(c)  # the oldest went
    d = put(4, "x" * 95)  # b goes (the count cap), then c (the text cap)
    assert store.get(b) is None and store.get(c) is None and store.get(d)
    put(5, "y" * 200)  # larger than the cap alone: not kept
    assert store.get("resp_5") is None and len(store) == 1
    expired = ResponseStore(ttl_s=0)
    response = ResponseObject(id="resp_e", created_at=0, status="completed", model="m")
    expired.put(StoredResponse(response, [], []))
    assert expired.get("resp_e") is None and expired.num_chars == 0


# ------------------------------------------------------------------------- input
def test_function_call_round_trip_as_input(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
        ],
        max_output_tokens=20,
        temperature=0,
    )
    assert resp.output_text.strip()
    items = client.responses.input_items.list(resp.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]


def test_truncation_auto_drops_the_oldest_turns() -> None:
    # A small KV cache makes a short context, so that the kept turns prefill quickly.
    with running_server("--kv-cache-memory-mb", "16") as small:
        turn = "tell me more about the history of the river and its bridges " * 8
        items = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {turn}"}
            for i in range(9)
        ]
        body = {"model": small.model, "input": items, "max_output_tokens": 4}
        assert_error(post(small, body), 400, "input", "context length")
        r = post(small, {**body, "truncation": "auto"})
        assert r.status_code == 200, r.text
        assert r.json()["truncation"] == "auto"
        kept = r.json()["usage"]["input_tokens"]
        context = httpx.get(f"{small.base_url}/v1/models").json()["data"][0]["max_model_len"]
        assert kept + 4 <= context


# -------------------------------------------------------------------------- 400s
@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"foo": 1}, "foo", ["unsupported field"]),
        ({"background": True}, "background", ["unsupported field"]),
        ({"tools": [{"type": "web_search"}]}, "tools", ["web_search"]),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools", ["file_search"]),
        ({"reasoning": {"effort": "high"}}, "reasoning", ["reasoning"]),
        ({"include": ["reasoning.encrypted_content"]}, "include", ["include"]),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", []),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", []),
        ({"max_output_tokens": 10**9}, "max_output_tokens", ["at most"]),
        ({"temperature": 3.5e9}, "temperature", []),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", ["16"]),
        ({"input": []}, "input", ["empty"]),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input", ["computer"]),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input", ["item_reference"]),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input",
            ["input_image", "input.0.content"],
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            ["input_file"],
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input", ["input.0.role"]),
    ],
)
def test_bad_input_is_a_400(
    server: ServerProcess, extra: dict[str, Any], param: str, words: list[str]
) -> None:
    # A budget, so that a body wrongly accepted fails fast instead of generating at length.
    r = post(server, {"model": server.model, "input": "x", "max_output_tokens": 4, **extra})
    assert_error(r, 400, param, *words)


def test_reasoning_off_is_allowed(server: ServerProcess) -> None:
    body = {"model": server.model, "input": "x", "max_output_tokens": 2}
    r = post(server, {**body, "reasoning": {"effort": "none"}})
    assert r.status_code == 200, r.text


def test_unknown_model_is_a_404(server: ServerProcess) -> None:
    assert_error(post(server, {"model": "nope", "input": "x"}), 404, "model", "nope")
