"""The OpenAI-compatible API of a real ``heron serve``, driven by the official ``openai``
client (and plain httpx for the wire format and for bodies the client would not send)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

from heron import LLM, SamplingParams
from heron.prompt import ChatRenderer
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def greedy(max_tokens: int, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def sse_events(server: ServerProcess, path: str, body: dict[str, Any]) -> list[str]:
    """The ``data:`` payloads of a streamed response, checking the SSE framing."""
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def post(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json"}
        return httpx.post(f"{server.base_url}{path}", content=body, headers=headers, timeout=60)
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and isinstance(err["message"], str)
    assert "Traceback" not in err["message"] and "/heron/" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- models
def test_models(client: openai.OpenAI, server: ServerProcess) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    err = assert_error(httpx.get(f"{server.base_url}/v1/models/x..y"), 404, "model")
    assert err["code"] == "model_not_found"
    # an encoded separator changes the path once decoded: refused before routing
    assert_error(httpx.get(f"{server.base_url}/v1/models/..%2Fx"), 400)


# ------------------------------------------------------------------------------- chat
def test_chat_greedy_matches_offline(
    client: openai.OpenAI, offline_llm: LLM, server: ServerProcess
) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=16,  # type: ignore[arg-type]
    )
    expected = offline_llm.chat(MESSAGES, greedy(16))[0].outputs[0]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", resp.id)
    assert resp.object == "chat.completion" and resp.model == MODEL
    assert isinstance(resp.created, int)
    (choice,) = resp.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert choice.logprobs is None
    usage = resp.usage
    assert usage is not None
    tok = offline_llm.get_tokenizer()
    assert usage.prompt_tokens == len(ChatRenderer(tok).encode(MESSAGES))
    assert usage.completion_tokens == len(expected.token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_text_parts_and_developer_role(client: openai.OpenAI, offline_llm: LLM) -> None:
    parts = [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Name three"},
                {"type": "text", "text": "colours."},
            ],
        },
    ]
    resp = client.chat.completions.create(
        model=MODEL,
        messages=parts,
        temperature=0,
        max_tokens=8,  # type: ignore[arg-type]
    )
    flat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name three\ncolours."},
    ]
    assert resp.choices[0].message.content == offline_llm.chat(flat, greedy(8))[0].outputs[0].text
    tok = offline_llm.get_tokenizer()
    num_prompt = len(ChatRenderer(tok).encode(flat))
    assert resp.usage is not None and resp.usage.prompt_tokens == num_prompt


def test_chat_stream_with_usage(client: openai.OpenAI, offline_llm: LLM) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expected = offline_llm.chat(MESSAGES, greedy(12))[0].outputs[0]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in content)
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason]
    assert finishes == [expected.finish_reason]
    assert content[-1].choices[0].finish_reason is not None  # on the last chunk of the choice
    assert last.usage.completion_tokens == len(expected.token_ids)
    assert last.usage.prompt_tokens == len(
        ChatRenderer(offline_llm.get_tokenizer()).encode(MESSAGES)
    )


def test_chat_stream_wire_format(server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    events = sse_events(server, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert {"id", "object", "created", "model", "choices"} <= set(c)
        assert "usage" not in c  # only with stream_options.include_usage
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_n2_with_seed(client: openai.OpenAI) -> None:
    def run() -> list[str]:
        resp = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            n=2,
            seed=1234,
            temperature=1.0,
            max_tokens=8,
            extra_body={"ignore_eos": True},
        )
        assert [c.index for c in resp.choices] == [0, 1]
        assert all(c.finish_reason == "length" for c in resp.choices)
        assert resp.usage is not None and resp.usage.completion_tokens == 16
        return [c.message.content or "" for c in resp.choices]

    first = run()
    assert run() == first  # the same seed gives the same choices


def test_chat_stream_n2_each_choice_finishes_once(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "n": 2,
        "seed": 5,
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = [json.loads(e) for e in sse_events(server, "/v1/chat/completions", body)[:-1]]
    roles = [
        c["choices"][0]["index"]
        for c in chunks
        if c["choices"] and "role" in c["choices"][0]["delta"]
    ]
    assert roles == [0, 1]
    finishes = [
        c["choices"][0]["index"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert sorted(finishes) == [0, 1]
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_chat_logprobs(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert resp.usage is not None and len(entries) == resp.usage.completion_tokens == 8
    for e in entries:
        assert e.logprob <= 0
        assert e.bytes is not None and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == 3
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True)
        # greedy: the sampled token is the most likely one
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
    assert "".join(e.token for e in entries) == choice.message.content
    # without top_logprobs: the sampled token only
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2,
        logprobs=True,  # type: ignore[arg-type]
    )
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and all(e.top_logprobs == [] for e in content)


def test_chat_stop_string(client: openai.OpenAI, offline_llm: LLM) -> None:
    full = offline_llm.chat(MESSAGES, greedy(16))[0].outputs[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=16,
        stop=stop,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == full[: full.index(stop)]
    assert choice.model_extra is not None and choice.model_extra["stop_reason"] == stop
    resp = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=16,
        stop=[stop, "\x00never"],
        extra_body={"include_stop_str_in_output": True},
    )
    assert resp.choices[0].message.content == full[: full.index(stop) + len(stop)]


# ------------------------------------------------------------------------ completions
def test_completion_greedy_matches_offline(client: openai.OpenAI, offline_llm: LLM) -> None:
    expected = offline_llm.generate(PROMPT, greedy(10))[0]
    resp = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=10)
    assert re.fullmatch(r"cmpl-[0-9a-f]+", resp.id) and resp.object == "text_completion"
    (choice,) = resp.choices
    assert choice.text == expected.outputs[0].text
    assert choice.finish_reason == expected.outputs[0].finish_reason
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert resp.usage.completion_tokens == len(expected.outputs[0].token_ids)
    # the same prompt as token ids
    resp = client.completions.create(
        model=MODEL, prompt=expected.prompt_token_ids, temperature=0, max_tokens=10
    )
    assert resp.choices[0].text == expected.outputs[0].text


def test_completion_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"ignore_eos": True})
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    assert resp.choices[0].finish_reason == "length"


def test_completion_batch(client: openai.OpenAI, offline_llm: LLM) -> None:
    prompts = [PROMPT, "One, two, three,"]
    resp = client.completions.create(model=MODEL, prompt=prompts, temperature=0, max_tokens=6)
    expected = offline_llm.generate(prompts, greedy(6))
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.text for c in resp.choices] == [e.outputs[0].text for e in expected]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(len(e.prompt_token_ids) for e in expected)
    assert resp.usage.completion_tokens == sum(len(e.outputs[0].token_ids) for e in expected)


def test_completion_stream(server: ServerProcess, offline_llm: LLM) -> None:
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "temperature": 0,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": 1,
    }
    events = sse_events(server, "/v1/completions", body)
    chunks = [json.loads(e) for e in events[:-1]]
    expected = offline_llm.generate(PROMPT, greedy(8))[0].outputs[0]
    assert all(c["object"] == "text_completion" for c in chunks)
    *content, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(expected.token_ids)
    assert all(c["usage"] is None for c in content)
    assert "".join(c["choices"][0]["text"] for c in content) == expected.text
    assert content[-1]["choices"][0]["finish_reason"] == expected.finish_reason
    offsets = [o for c in content for o in c["choices"][0]["logprobs"]["text_offset"]]
    tokens = [t for c in content for t in c["choices"][0]["logprobs"]["tokens"]]
    assert len(tokens) == len(expected.token_ids)
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        temperature=0,
        max_tokens=6,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value is not None and value <= 0
        assert 1 <= len(top) <= 3 and token in top
        assert max(top.values()) == pytest.approx(value)  # greedy


def test_completion_stop_and_n2_seed(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="One, two, three, four,", temperature=0, max_tokens=16, stop=[" six"]
    )
    assert resp.choices[0].finish_reason == "stop" and " six" not in resp.choices[0].text
    kw: dict[str, Any] = {"n": 2, "seed": 99, "max_tokens": 6, "extra_body": {"ignore_eos": True}}
    a = client.completions.create(model=MODEL, prompt=PROMPT, **kw)
    b = client.completions.create(model=MODEL, prompt=PROMPT, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.usage is not None and a.usage.completion_tokens == 12


def test_metrics_count_requests(client: openai.OpenAI, server: ServerProcess) -> None:
    def finished() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        found = re.findall(
            r'^heron:request_success_total\{[^}]*"length"[^}]*\} ([0-9.e+]+)$', text, re.M
        )
        return sum(float(x) for x in found)

    before = finished()
    client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert finished() == before + 1


# ----------------------------------------------------------------------------- errors
CHAT = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "functions", [{"name": "f"}]),
        ("/v1/chat/completions", "response_format", "json_object"),
        ("/v1/completions", "guided_whitespace_pattern", " "),
        ("/v1/chat/completions", "logit_bias", {"not-a-token": -100}),
        ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
        ("/v1/chat/completions", "modalities", ["text", "audio"]),
        ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
        ("/v1/chat/completions", "reasoning_effort", "low"),
        ("/v1/chat/completions", "echo", True),
        ("/v1/completions", "suffix", "!"),
        ("/v1/completions", "best_of", 3),
        ("/v1/completions", "logit_bias", {"1": "five"}),
        ("/v1/completions", "logit_bias", {"1": 500}),
    ],
)
def test_unsupported_field_is_named(
    server: ServerProcess, path: str, field: str, value: Any
) -> None:
    base = CHAT if "chat" in path else COMPLETION
    err = assert_error(post(server, path, {**base, field: value}), 400, field)
    assert field in err["message"]


def test_unsupported_field_with_official_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            },
        )
    assert info.value.status_code == 400 and info.value.param == "response_format"


def test_no_op_forms_are_accepted(server: ServerProcess) -> None:
    body = {
        **CHAT,
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "user": "u1",
    }
    assert post(server, "/v1/chat/completions", body).status_code == 200
    body = {**COMPLETION, "echo": False, "suffix": "", "best_of": 1, "logit_bias": {}}
    assert post(server, "/v1/completions", body).status_code == 200


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                }
            ],
            "messages.0.content.0",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages.0.content.0",
        ),
        ([{"role": "tool", "content": "42", "tool_call_id": "c1"}], "messages.0.tool_call_id"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c"}]}],
            "messages.1.tool_calls.0.function",
        ),
        ([{"role": "wizard", "content": "x"}], "messages.0.role"),
        ([{"role": "user", "content": 5}], "messages.0.content"),
        ([{"role": "user"}], "messages.0.content"),
        ([], "messages"),
    ],
)
def test_bad_messages(server: ServerProcess, messages: list[Any], param: str) -> None:
    assert_error(post(server, "/v1/chat/completions", {**CHAT, "messages": messages}), 400, param)


@pytest.mark.parametrize(
    ("path", "patch", "param"),
    [
        ("/v1/chat/completions", {"max_tokens": "10"}, "max_tokens"),
        ("/v1/chat/completions", {"n": "2"}, "n"),
        ("/v1/chat/completions", {"stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"n": 10**6}, "n"),
        ("/v1/chat/completions", {"n": 0}, "n"),
        ("/v1/chat/completions", {"max_tokens": -1}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": 2**63}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ("/v1/chat/completions", {"temperature": -1}, "temperature"),
        ("/v1/chat/completions", {"top_p": 1.5}, "top_p"),
        ("/v1/chat/completions", {"top_k": -2}, "top_k"),
        ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
        ("/v1/chat/completions", {"repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 10**6}, "top_logprobs"),
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/chat/completions", {"stop": ["x"] * 1000}, "stop"),
        ("/v1/chat/completions", {"stop": [""]}, "stop"),
        ("/v1/chat/completions", {"stop": 5}, "stop"),
        ("/v1/chat/completions", {"stop_token_ids": [10**9]}, "stop_token_ids"),
        ("/v1/chat/completions", {"min_tokens": 5}, "min_tokens"),
        ("/v1/chat/completions", {"seed": 2**64}, "seed"),
        ("/v1/completions", {"logprobs": 10**6}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"prompt": [1, 10**9]}, "prompt"),
        ("/v1/completions", {"prompt": [-1]}, "prompt"),
        ("/v1/completions", {"prompt": [1, "a"]}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": ["a"] * 100}, "prompt"),
        ("/v1/completions", {"max_tokens": -5}, "max_tokens"),
    ],
)
def test_bad_values(server: ServerProcess, path: str, patch: dict[str, Any], param: str) -> None:
    base = CHAT if "chat" in path else COMPLETION
    err = assert_error(post(server, path, {**base, **patch}), 400, param)
    assert err["type"] == "invalid_request_error"


def test_malformed_bodies(server: ServerProcess) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert_error(post(server, path, b'{"model": "smollm2", '), 400)
        assert_error(post(server, path, b"[1, 2]"), 400)
        assert_error(post(server, path, b'{"temperature": NaN, "model": "smollm2"}'), 400)
        r = httpx.post(
            f"{server.base_url}{path}", content=b"hello", headers={"Content-Type": "text/plain"}
        )
        assert_error(r, 400)
    assert_error(post(server, "/v1/chat/completions", {"messages": MESSAGES}), 400, "model")
    body = {**CHAT, "temperature": float("nan")}
    assert_error(
        post(server, "/v1/chat/completions", json.dumps(body).encode()), 400, "temperature"
    )


@pytest.mark.parametrize(
    "name", ["gpt-4o", "../x", "../../etc/passwd", "/etc/passwd", "a\x00b", "m" * 10_000]
)
def test_unknown_model_is_404(server: ServerProcess, name: str) -> None:
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        err = assert_error(post(server, path, {**base, "model": name}), 404, "model")
        assert err["code"] == "model_not_found" and len(err["message"]) < 200


def test_context_length_exceeded(server: ServerProcess, client: openai.OpenAI) -> None:
    long = "hello " * 20_000
    err = assert_error(
        post(server, "/v1/completions", {**COMPLETION, "prompt": long}), 400, "prompt"
    )
    assert err["code"] == "context_length_exceeded"
    messages = [{"role": "user", "content": long}]
    err = assert_error(post(server, "/v1/chat/completions", {**CHAT, "messages": messages}), 400)
    assert err["code"] == "context_length_exceeded"
    # a prompt that fits with a max_tokens that does not
    context = client.models.retrieve(MODEL).model_extra["max_model_len"]  # type: ignore[index]
    body = {**COMPLETION, "max_tokens": context}
    err = assert_error(post(server, "/v1/completions", body), 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=long, max_tokens=1)
    assert info.value.code == "context_length_exceeded"
    # still serving
    assert post(server, "/v1/completions", COMPLETION).status_code == 200


def test_engine_error_mid_stream_completions() -> None:
    """An engine failure mid-stream ends the stream with an error event, then [DONE]."""
    with running_server("--kv-cache-memory-mb", "64", env={"HERON_FAULT_INJECT_STEP": "3"}) as s:
        body = {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": 32,
            "ignore_eos": True,
            "stream": True,
        }
        events = sse_events(s, "/v1/completions", body)
        assert events[-1] == "[DONE]"
        assert len(events) >= 3  # some output came before the failure
        error = json.loads(events[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "server_error" and "engine error" in error["message"]
        assert all("choices" in json.loads(e) for e in events[:-2])
        ok = post(s, "/v1/completions", {**COMPLETION, "max_tokens": 3, "ignore_eos": True})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_logit_bias_forces_and_bans_tokens(server: ServerProcess, offline_llm: Any) -> None:
    tok = offline_llm.get_tokenizer()
    forced = tok.encode(" blue")[-1]
    body = {**COMPLETION, "max_tokens": 4, "temperature": 0, "logit_bias": {str(forced): 100}}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == tok.decode([forced] * 4)
    plain = post(server, "/v1/completions", {**COMPLETION, "max_tokens": 1, "temperature": 0})
    first = tok.encode(plain.json()["choices"][0]["text"])[-1]
    banned = {**COMPLETION, "max_tokens": 1, "temperature": 0, "logit_bias": {str(first): -100}}
    r = post(server, "/v1/completions", banned)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] != plain.json()["choices"][0]["text"]
    outside = post(server, "/v1/completions", {**COMPLETION, "logit_bias": {"50256": -100}})
    assert outside.status_code == 400 and "logit_bias" in outside.json()["error"]["message"]
