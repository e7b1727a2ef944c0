"""Endpoints, request bodies and workload levels."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.bench.workload import (
    DEFAULT_PROMPT,
    BenchError,
    Endpoint,
    Level,
    RequestSettings,
    build_workload,
    follow_up,
    load_schema,
    parse_endpoint,
    parse_users,
    run_order,
    synth_prompt,
)


def test_parse_endpoint() -> None:
    e = parse_endpoint("heron=http://127.0.0.1:11434")
    assert (e.name, e.url, e.api) == ("heron", "http://127.0.0.1:11434", "openai")
    assert e.chat_url == "http://127.0.0.1:11434/v1/chat/completions"
    o = parse_endpoint("ollama=http://127.0.0.1:11434/@ollama")
    assert (o.api, o.chat_url) == ("ollama", "http://127.0.0.1:11434/api/chat")
    v1 = parse_endpoint("ls=http://h:8080/v1@openai")
    assert v1.chat_url == "http://h:8080/v1/chat/completions"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://127.0.0.1:8080", "expected NAME=URL"),
        ("=http://x", "expected NAME=URL"),
        ("a=", "expected NAME=URL"),
        ("a=127.0.0.1:8080", "must start http"),
        ("a b=http://x", "endpoint name"),
        ("a=http://x@grpc", "unknown API"),
    ],
)
def test_parse_endpoint_errors(text: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_endpoint(text)


def test_parse_users() -> None:
    assert parse_users(["1,16", "32", " 4 8 "]) == (1, 16, 32, 4, 8)
    with pytest.raises(BenchError, match=">= 1"):
        parse_users(["0"])
    with pytest.raises(BenchError, match="whole number"):
        parse_users(["x"])


def test_build_workload_levels() -> None:
    seq = build_workload("sequential", requests=10)
    assert seq.levels == (Level(users=1, requests_per_user=10),)
    assert seq.levels[0].num_requests == 10
    sweep = build_workload("sweep")
    assert [lv.users for lv in sweep.levels] == [1, 2, 4, 8, 16, 32, 64]
    conc = build_workload("concurrent", (2, 4), requests_per_user=3)
    assert [lv.num_requests for lv in conc.levels] == [6, 12]
    mt = build_workload("multi-turn")
    assert mt.levels == (Level(users=1, conversations=5, turns=3),)
    assert mt.levels[0].num_requests == 15 and mt.levels[0].multi_turn
    with pytest.raises(BenchError, match="unknown workload"):
        build_workload("burst")
    with pytest.raises(BenchError, match="users"):
        build_workload("sweep", (0,))
    with pytest.raises(BenchError, match="repeat"):
        build_workload("sweep", repeat=0)


def test_request_bodies() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    s = RequestSettings(max_tokens=5, eos_token_ids=(2, 0))
    assert s.body("openai", msgs) == {
        "model": "smollm2",
        "messages": msgs,
        "max_tokens": 5,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "logit_bias": {"2": -100, "0": -100},
    }
    assert s.body("ollama", msgs) == {
        "model": "smollm2",
        "messages": msgs,
        "stream": True,
        "options": {"num_predict": 5, "temperature": 0.0},
    }
    off = RequestSettings(suppress_eos=False, eos_token_ids=(2,)).body("openai", msgs)
    assert "ignore_eos" not in off and "logit_bias" not in off
    only_flag = RequestSettings().body("openai", msgs)
    assert only_flag["ignore_eos"] is True and "logit_bias" not in only_flag
    with pytest.raises(BenchError):
        RequestSettings(max_tokens=0)


def test_synth_prompt() -> None:
    p = synth_prompt(500)
    assert p.endswith(DEFAULT_PROMPT)
    assert 1900 <= len(p) <= 2000  # about 4 characters per token
    assert synth_prompt(3) == DEFAULT_PROMPT  # the question alone is longer
    with pytest.raises(BenchError):
        synth_prompt(0)


def test_run_order_alternates() -> None:
    assert run_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert run_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert run_order(["a", "b", "c"], 2) == ["a", "b", "c"]


def test_follow_up_cycles() -> None:
    assert follow_up(2) != follow_up(3)
    assert follow_up(2) == follow_up(5)


def test_endpoint_checks_api() -> None:
    with pytest.raises(BenchError):
        Endpoint("x", "http://h", "grpc")


def test_json_schema_constrains_both_apis(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"type": "object", "properties": {"a": {"type": "integer"}}}')
    schema = load_schema(path)
    settings = RequestSettings(json_schema=schema)
    body = settings.body("openai", [{"role": "user", "content": "hi"}])
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "bench", "schema": schema},
    }
    assert settings.body("ollama", [])["format"] == schema
    assert "response_format" not in RequestSettings().body("openai", [])
    path.write_text("[1, 2]")
    with pytest.raises(BenchError, match="not a JSON object"):
        load_schema(path)
