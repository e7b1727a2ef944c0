"""The streaming client and the run loop against a fake server (tests/bench/conftest.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from heron.bench.client import parse_ollama_line, parse_openai_line, stream_chat
from heron.bench.orchestrate import measure_level
from heron.bench.targets import free_port
from heron.bench.workload import Endpoint, Level, RequestSettings
from tests.bench.conftest import GAP_S, FakeServer

MSGS = [{"role": "user", "content": "hi"}]


def test_parse_openai_lines() -> None:
    assert parse_openai_line("") is None
    assert parse_openai_line(": keep-alive") is None
    assert parse_openai_line("data: [DONE]").done  # type: ignore[union-attr]
    e = parse_openai_line('data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}')
    assert e is not None and e.content == "Hi" and e.finish_reason is None
    u = parse_openai_line('data: {"choices":[],"usage":{"completion_tokens":9,"prompt_tokens":4}}')
    assert u is not None and (u.usage_tokens, u.prompt_tokens, u.content) == (9, 4, "")
    err = parse_openai_line('data: {"error":{"message":"boom"}}')
    assert err is not None and err.error == "boom"
    bad = parse_openai_line("data: {oops")
    assert bad is not None and bad.error is not None and "unparsable" in bad.error


def test_parse_ollama_lines() -> None:
    assert parse_ollama_line("  ") is None
    e = parse_ollama_line('{"message":{"role":"assistant","content":"Hi"},"done":false}')
    assert e is not None and (e.content, e.done) == ("Hi", False)
    end = parse_ollama_line(
        '{"done":true,"eval_count":7,"prompt_eval_count":3,"done_reason":"length"}'
    )
    assert end is not None and (end.done, end.usage_tokens, end.prompt_tokens) == (True, 7, 3)
    assert end.finish_reason == "length"
    err = parse_ollama_line('{"error":"model not found"}')
    assert err is not None and err.error == "model not found"


async def one(endpoint: Endpoint, settings: RequestSettings):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(trust_env=False) as client:
        return await stream_chat(client, endpoint, settings, MSGS, 0.0)


def test_openai_stream_times_every_chunk(fake: FakeServer) -> None:
    ep = Endpoint("fake", fake.base_url)
    r = asyncio.run(one(ep, RequestSettings(model="ok", max_tokens=4, api_key="k1")))
    assert r.ok, r.error
    assert (r.num_chunks, r.usage_tokens, r.num_tokens, r.prompt_tokens) == (4, 4, 4, 7)
    assert r.text == "t1.0 t1.1 t1.2 t1.3 "
    assert r.finish_reason == "length"
    assert r.ttft is not None and r.ttft >= GAP_S * 0.5
    gaps = [b - a for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    assert all(g >= GAP_S * 0.5 for g in gaps)  # chunks were timed as they arrived
    assert r.t_send <= r.token_times[0] <= r.token_times[-1] <= r.t_end
    assert fake.headers[-1]["authorization"] == "Bearer k1"
    body = fake.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True


def test_openai_usage_overrides_chunks(fake: FakeServer) -> None:
    ep = Endpoint("fake", fake.base_url)
    r = asyncio.run(one(ep, RequestSettings(model="two-per-chunk", max_tokens=6)))
    assert (r.num_chunks, r.num_tokens) == (3, 6)
    r = asyncio.run(one(ep, RequestSettings(model="no-usage", max_tokens=3)))
    assert r.ok and (r.usage_tokens, r.num_tokens) == (None, 3)


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("bad-request", "HTTP 400: max_tokens is too large"),
        ("mid-error", "engine failed"),
        ("cut", "stream ended before the response was complete"),
    ],
)
def test_openai_failures_are_recorded(fake: FakeServer, model: str, error: str) -> None:
    r = asyncio.run(one(Endpoint("fake", fake.base_url), RequestSettings(model=model)))
    assert not r.ok and r.error == error
    assert r.t_end >= r.t_send


def test_connection_refused_is_recorded() -> None:
    ep = Endpoint("nobody", f"http://127.0.0.1:{free_port()}")
    r = asyncio.run(one(ep, RequestSettings()))
    assert not r.ok and r.error is not None and r.error.startswith("ConnectError")


def test_timeout_is_recorded(fake: FakeServer) -> None:
    settings = RequestSettings(model="ok", max_tokens=50, timeout=0.05)
    r = asyncio.run(one(Endpoint("fake", fake.base_url), settings))
    assert r.error == "timed out after 0.05 s"


def test_ollama_stream(fake: FakeServer) -> None:
    ep = Endpoint("fake", fake.base_url, "ollama")
    r = asyncio.run(one(ep, RequestSettings(max_tokens=3)))
    assert r.ok, r.error
    assert (r.num_chunks, r.num_tokens, r.prompt_tokens, r.finish_reason) == (3, 3, 5, "length")
    assert fake.bodies[-1]["options"] == {"num_predict": 3, "temperature": 0.0}


def test_concurrent_level_runs_users_at_once(fake: FakeServer) -> None:
    ep = Endpoint("fake", fake.base_url)
    level = Level(users=4, requests_per_user=2)
    records = asyncio.run(measure_level(ep, RequestSettings(model="ok", max_tokens=3), level, "hi"))
    assert len(records) == 8 and all(r.ok for r in records)
    assert sorted((r.user, r.index) for r in records) == [
        (u, i) for u in range(4) for i in range(2)
    ]
    assert all(r.endpoint == "fake" and r.users == 4 for r in records)
    firsts = sorted(r.t_send for r in records if r.index == 0)
    assert firsts[-1] - firsts[0] < 3 * GAP_S  # all users start together
    for u in range(4):  # each user's requests run back to back
        a, b = sorted((r for r in records if r.user == u), key=lambda r: r.index)
        assert b.t_send >= a.t_end


def test_multi_turn_appends_replies(fake: FakeServer) -> None:
    ep = Endpoint("fake", fake.base_url)
    level = Level(users=1, conversations=2, turns=3)
    records = asyncio.run(measure_level(ep, RequestSettings(model="ok", max_tokens=2), level, "hi"))
    assert [(r.conversation, r.turn) for r in records] == [
        (c, t) for c in (0, 1) for t in (1, 2, 3)
    ]
    third = fake.bodies[2]["messages"]
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert third[0]["content"] == "[conversation 1] hi"  # no prefix shared across conversations
    assert fake.bodies[3]["messages"] == [{"role": "user", "content": "[conversation 2] hi"}]
    assert third[1]["content"] == "t1.0 t1.1 "  # the reply of turn 1
    assert third[3]["content"] == "t2.0 t2.1 "
    assert [r.prompt_tokens for r in records[:3]] == [7, 14, 21]


def test_each_run_of_a_multi_turn_level_has_its_own_conversations(fake: FakeServer) -> None:
    # A repeat that replayed earlier conversations would find every turn in a prefix cache.
    ep = Endpoint("fake", fake.base_url)
    level = Level(users=1, conversations=2, turns=1)
    settings = RequestSettings(model="ok", max_tokens=2)
    asyncio.run(measure_level(ep, settings, level, "hi", first_tag=3))
    assert [b["messages"][0]["content"] for b in fake.bodies[-2:]] == [
        "[conversation 3] hi",
        "[conversation 4] hi",
    ]
