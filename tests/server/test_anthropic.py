"""The Anthropic Messages API of a real ``heron serve``, driven by the official ``anthropic``
client (which sends its key as ``x-api-key``) and by raw HTTP for bodies the client would
never build."""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import httpx
import pytest

from heron import LLM, SamplingParams
from heron.prompt import ChatRenderer
from tests.server.conftest import ServerProcess

GREEDY = {"temperature": 0}  # the client no longer has a temperature argument
SYSTEM = "You are a terse assistant."
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": [{"type": "text", "text": "Name three fruits."}]},
]
COUNT = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def template_messages(system: str | None, messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system is not None else []
    for m in messages:
        content = m["content"]
        text = content if isinstance(content, str) else "\n".join(b["text"] for b in content)
        out.append({"role": m["role"], "content": text})
    return out


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """Split a body into (event, data) frames, checking the framing of every one."""
    assert raw.endswith("\n\n")
    events = []
    for frame in raw[:-2].split("\n\n"):
        m = re.fullmatch(r"event: ([a-z_]+)\ndata: (.+)", frame)
        assert m, f"bad frame: {frame!r}"
        data = json.loads(m.group(2))
        assert data["type"] == m.group(1)
        events.append((m.group(1), data))
    return events


def stream_raw(server: ServerProcess, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream(
        "POST", f"{server.base_url}/v1/messages", json={**payload, "stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.read().decode())


def success_count(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.findall(r"^heron:request_success_total\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in found)


# ------------------------------------------------------------------------ generation
def test_greedy_message_matches_offline_chat(client: anthropic.Anthropic, offline_llm: LLM) -> None:
    msg = client.messages.create(
        model="smollm2",
        max_tokens=24,
        system=SYSTEM,
        messages=CONVERSATION,  # type: ignore[arg-type]
        extra_body=GREEDY,
    )
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == "smollm2"
    assert [block.type for block in msg.content] == ["text"]

    conversation = template_messages(SYSTEM, CONVERSATION)
    expected = offline_llm.chat(conversation, SamplingParams(temperature=0, max_tokens=24))[0]
    out = expected.outputs[0]
    assert msg.content[0].text == out.text  # type: ignore[union-attr]
    assert msg.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[out.finish_reason or ""]
    assert msg.stop_sequence is None

    prompt_ids = ChatRenderer(offline_llm.engine.tokenizer).encode(conversation)
    usage = msg.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == len(prompt_ids)
    assert usage.input_tokens >= 1
    assert usage.output_tokens == len(out.token_ids)


def test_stream_event_sequence_matches_non_streaming(server: ServerProcess) -> None:
    payload = {"model": "smollm2", "max_tokens": 24, "messages": COUNT, **GREEDY}
    whole = httpx.post(f"{server.base_url}/v1/messages", json=payload, timeout=120)
    assert whole.status_code == 200
    message = whole.json()

    events = stream_raw(server, payload)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["id"] != message["id"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["role"] == "assistant" and start["model"] == "smollm2"
    total_input = message["usage"]["input_tokens"] + message["usage"]["cache_read_input_tokens"]
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] == total_input
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert all(d["delta"]["text"] for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == message["content"][0]["text"]
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}

    final = events[-2][1]
    assert final["delta"] == {
        "stop_reason": message["stop_reason"],
        "stop_sequence": message["stop_sequence"],
    }
    assert final["usage"]["output_tokens"] == message["usage"]["output_tokens"]


def test_client_stream_helper(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "smollm2", "max_tokens": 16, "messages": COUNT}
    whole = client.messages.create(**kwargs, extra_body=GREEDY)
    with client.messages.stream(**kwargs, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequence(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "smollm2", "max_tokens": 32, "messages": COUNT}
    full = client.messages.create(**kwargs, extra_body=GREEDY).content[0].text  # type: ignore[union-attr]
    assert "5" in full, full
    msg = client.messages.create(**kwargs, stop_sequences=["5", "zebra"], extra_body=GREEDY)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "5"
    assert msg.content[0].text == full[: full.index("5")]  # type: ignore[union-attr]

    with client.messages.stream(**kwargs, stop_sequences=["5"], extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full[: full.index("5")]
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "5"


def test_max_tokens(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model="smollm2", max_tokens=3, messages=COUNT, extra_body=GREEDY)  # type: ignore[arg-type]
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.output_tokens == 3


def test_prefill_continues_the_assistant_turn(client: anthropic.Anthropic) -> None:
    messages = [*COUNT, {"role": "assistant", "content": "1, 2, 3, 4,"}]
    msg = client.messages.create(
        model="smollm2",
        max_tokens=8,
        messages=messages,  # type: ignore[arg-type]
        extra_body=GREEDY,
    )
    assert msg.content[0].text.startswith(" 5,")  # type: ignore[union-attr]


def test_sampled_message(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "smollm2",
        "max_tokens": 8,
        "messages": COUNT,
        "metadata": {"user_id": "user-1"},
    }
    msg = client.messages.create(
        **kwargs, extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 40}
    )
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= msg.usage.output_tokens <= 8


def test_count_tokens(client: anthropic.Anthropic, offline_llm: LLM) -> None:
    counted = client.messages.count_tokens(
        model="smollm2",
        system=SYSTEM,
        messages=CONVERSATION,  # type: ignore[arg-type]
    )
    expected = ChatRenderer(offline_llm.engine.tokenizer).encode(
        template_messages(SYSTEM, CONVERSATION)
    )
    assert counted.input_tokens == len(expected)
    msg = client.messages.create(
        model="smollm2",
        max_tokens=1,
        system=SYSTEM,
        messages=CONVERSATION,  # type: ignore[arg-type]
    )
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == len(expected)


def test_repeated_prompt_reads_the_prefix_cache(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Describe a heron in one sentence. " * 8}]
    usages = [
        client.messages.create(model="smollm2", max_tokens=1, messages=messages).usage  # type: ignore[arg-type]
        for _ in range(2)
    ]
    totals = {u.input_tokens + (u.cache_read_input_tokens or 0) for u in usages}
    assert len(totals) == 1
    assert (usages[1].cache_read_input_tokens or 0) > 0


def test_metrics_count_each_request_once(server: ServerProcess) -> None:
    payload = {"model": "smollm2", "max_tokens": 2, "messages": COUNT}
    before = success_count(server)
    assert httpx.post(f"{server.base_url}/v1/messages", json=payload, timeout=60).status_code == 200
    assert success_count(server) == before + 1
    stream_raw(server, payload)
    assert success_count(server) == before + 2
    bad = httpx.post(f"{server.base_url}/v1/messages", json={**payload, "model": "x"}, timeout=60)
    assert bad.status_code == 404
    assert success_count(server) == before + 2


# ------------------------------------------------------------------------- bad bodies
def post(server: ServerProcess, content: bytes | str, path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )


def valid(**kw: Any) -> str:
    return json.dumps({"model": "smollm2", "max_tokens": 4, "messages": COUNT, **kw})


def assert_error(r: httpx.Response, status: int, kind: str, *fragments: str) -> None:
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error"
    assert set(data["error"]) >= {"type", "message"}
    assert data["error"]["type"] == kind
    for fragment in fragments:
        assert fragment in data["error"]["message"], data


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{not json", ["malformed JSON"]),
        ('{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}', ["max_tokens"]),
        (valid(max_tokens="10"), ["max_tokens"]),
        (valid(max_tokens=-1), ["max_tokens"]),
        (valid(max_tokens=0), ["max_tokens"]),
        (valid(max_tokens=2**63), ["max_tokens"]),
        (valid(temperature="0"), ["temperature"]),
        (valid(temperature=2), ["temperature"]),
        (valid(top_p=0), ["top_p"]),
        (valid(stream="yes"), ["stream"]),
        (valid(messages=[]), ["messages"]),
        (valid(messages=[{"role": "user"}]), ["messages.0.content"]),
        (valid(stop_sequences="END"), ["stop_sequences"]),
        (valid(stop_sequences=[str(i) for i in range(1000)]), ["stop_sequences"]),
        (valid(tools=[{"name": "a b", "input_schema": {"type": "object"}}]), ["tool name"]),
        (valid(tool_choice={"type": "any"}), ["tool_choice"]),
        (valid(thinking={"type": "enabled", "budget_tokens": 1024}), ["thinking"]),
        (valid(service_tier="auto"), ["service_tier"]),
        (valid(container="c"), ["container"]),
        (valid(mcp_servers=[]), ["mcp_servers"]),
        (valid(metadata={"user_id": "u", "extra": 1}), ["metadata.extra"]),
        (valid(messages=[{"role": "system", "content": "x"}]), ["system"]),
        (
            valid(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            ["image", "messages.0.content"],
        ),
        (
            valid(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            ["document"],
        ),
        (valid(messages=[{"role": "user", "content": "\ud800"}]), ["Unicode"]),
        (valid(messages=[*COUNT, {"role": "assistant", "content": "Sure "}]), ["whitespace"]),
    ],
)
def test_bad_bodies_get_400_in_anthropic_shape(
    server: ServerProcess, content: str, fragments: list[str]
) -> None:
    assert_error(post(server, content), 400, "invalid_request_error", *fragments)


@pytest.mark.parametrize(
    "model", ["claude-3-opus", "../x", "../../etc/passwd", "/etc/passwd", "a\u0000b", "m" * 10_000]
)
def test_unknown_models_get_404(server: ServerProcess, model: str) -> None:
    assert_error(post(server, valid(model=model)), 404, "not_found_error", "model")
    count = json.dumps({"model": model, "messages": COUNT})
    assert_error(post(server, count, "/v1/messages/count_tokens"), 404, "not_found_error")


def test_over_long_prompt_gets_400(server: ServerProcess) -> None:
    long = [{"role": "user", "content": "word " * 20_000}]
    for stream in (False, True):
        r = post(server, valid(messages=long, stream=stream))
        assert_error(r, 400, "invalid_request_error", "prompt is too long")
    # count_tokens still counts it
    r = post(
        server, json.dumps({"model": "smollm2", "messages": long}), "/v1/messages/count_tokens"
    )
    assert r.status_code == 200 and r.json()["input_tokens"] > 20_000


def test_bad_count_tokens_bodies(server: ServerProcess) -> None:
    path = "/v1/messages/count_tokens"
    assert_error(post(server, "[]", path), 400, "invalid_request_error")
    no_messages = json.dumps({"model": "smollm2"})
    assert_error(post(server, no_messages, path), 400, "invalid_request_error", "messages")
    tools = json.dumps({"model": "smollm2", "messages": COUNT, "tools": [{"name": "f"}]})
    assert_error(post(server, tools, path), 400, "invalid_request_error", "input_schema")


def test_client_raises_typed_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="nope", max_tokens=4, messages=COUNT)  # type: ignore[arg-type]
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="smollm2",
            max_tokens=4,
            messages=COUNT,  # type: ignore[arg-type]
            tool_choice={"type": "tool", "name": "missing"},
        )
    assert "tool_choice" in bad.value.message
    with pytest.raises(anthropic.BadRequestError):
        with client.messages.stream(model="smollm2", max_tokens=10**9, messages=COUNT):  # type: ignore[arg-type]
            pass
