"""The OpenAI family's translation functions, without a server: request validation,
prompt building, sampling parameters, logprob shapes, and the response models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from heron.config import EngineConfig
from heron.loader import load_checkpoint
from heron.outputs import Logprob
from heron.server.common import APIError
from heron.server.model_manager import ModelManager
from heron.server.model_spec import spec_from_path
from heron.server.openai.logprobs import TokenSpeller, chat_logprobs, completion_logprobs
from heron.server.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
)
from heron.server.openai.validation import (
    chat_messages,
    check_caps,
    completion_prompts,
    reject_unsupported,
    resolve_max_tokens,
    sampling_params,
)
from heron.server.state import ServerLimits, ServerState
from heron.store.resolve import resolve_model
from heron.tokenizer import Tokenizer

VOCAB = 49152


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_checkpoint(load_checkpoint(resolve_model("smollm2")))


def state(**limits: int) -> ServerState:
    models = ModelManager(EngineConfig(), store=None)
    return ServerState(models=models, metrics=None, limits=ServerLimits(**limits))  # type: ignore[arg-type]


def chat(**kw: Any) -> ChatCompletionRequest:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body)


def completion(**kw: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "smollm2", "prompt": "hi", **kw})


def raises_400(param: str | None, kind: str = "invalid_request") -> Any:
    class Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
            assert isinstance(exc, APIError), exc
            assert (exc.status, exc.param, exc.kind) == (400, param, kind), vars(exc)
            return True

    return Check()


def test_requests_are_strict() -> None:
    for bad in ({"max_tokens": "10"}, {"n": 1.0}, {"stream": 1}, {"temperature": float("inf")}):
        with pytest.raises(ValidationError):
            chat(**bad)
    with pytest.raises(ValidationError, match="extra"):
        chat(tools_v2=[])
    assert chat(temperature=1).temperature == 1.0  # an integer is a fine number


def test_union_errors_are_one_readable_message() -> None:
    with pytest.raises(ValidationError) as info:
        completion(prompt=[1, "a"])
    (err,) = info.value.errors()
    assert err["loc"] == ("prompt",) and "token ids" in err["msg"]


def test_model_names_are_only_compared() -> None:
    s = state()
    s.models.pinned = spec_from_path(resolve_model("smollm2"), "smollm2")
    assert s.models.resolve("smollm2") is s.models.pinned
    assert s.models.resolve("SmolLM2:latest") is s.models.pinned
    for name in ("../smollm2", "/smollm2", "smollm2\x00", "x" * 10_000):
        with pytest.raises(APIError) as info:
            s.models.resolve(name)
        assert info.value.status == 404 and info.value.kind == "not_found"
        assert len(info.value.message) < 120


def test_no_op_forms_pass_and_real_uses_fail() -> None:
    reject_unsupported(chat(response_format={"type": "text"}, tools=[], tool_choice="none"))
    reject_unsupported(completion(echo=False, suffix="", best_of=2, n=2, logit_bias={}))
    with raises_400("functions"):
        reject_unsupported(chat(functions=[{"name": "f"}]))
    for kw, param in [
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
    ]:
        with raises_400(param):
            reject_unsupported(completion(**kw))


def test_caps() -> None:
    s = state(max_n=4, max_tokens=50, max_logprobs=5, max_stop_strings=2)
    check_caps(s, chat(n=4, stop=["a", "b"], logprobs=True, top_logprobs=5), 50)
    for body, max_tokens, param in [
        (chat(n=5), None, "n"),
        (chat(max_tokens=51), 51, "max_tokens"),
        (chat(max_completion_tokens=51), 51, "max_completion_tokens"),
        (chat(stop=["a", "b", "c"]), None, "stop"),
        (chat(logprobs=True, top_logprobs=6), None, "top_logprobs"),
        (chat(top_logprobs=1), None, "top_logprobs"),
        (chat(stream_options={"include_usage": True}), None, "stream_options"),
        (completion(logprobs=6), None, "logprobs"),
    ]:
        with raises_400(param):
            check_caps(s, body, max_tokens)


def test_max_tokens_against_the_context() -> None:
    s = 100  # the context length
    assert resolve_max_tokens(s, [40], None, 1000, "prompt", "max_tokens") == 60
    assert resolve_max_tokens(s, [40], None, 16, "prompt", "max_tokens") == 16
    assert resolve_max_tokens(s, [40], 60, 16, "prompt", "max_tokens") == 60
    assert resolve_max_tokens(s, [10, 99], None, 16, "prompt", "max_tokens") == 1
    with raises_400("max_tokens", "context_length"):
        resolve_max_tokens(s, [40], 61, 16, "prompt", "max_tokens")
    with raises_400("messages", "context_length"):
        resolve_max_tokens(s, [100], None, 16, "messages", "max_tokens")


def test_sampling_params_mapping() -> None:
    body = chat(
        n=2,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=-1,
        stop="END",
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        min_tokens=2,
        ignore_eos=True,
        stop_token_ids=[7],
        include_stop_str_in_output=True,
        skip_special_tokens=False,
    )
    p = sampling_params(body, max_tokens=9, logprobs=3, vocab_size=VOCAB)
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (2, 0.5, 0.9, 40, 0.05)
    assert p.seed == 2**63 - 1  # a negative int64 seed is folded into the engine's range
    assert (p.stop, p.stop_token_ids, p.max_tokens, p.min_tokens, p.logprobs) == (
        ["END"],
        [7],
        9,
        2,
        3,
    )
    assert p.ignore_eos and p.include_stop_str_in_output and not p.skip_special_tokens
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.1)
    defaults = sampling_params(chat(), max_tokens=5, logprobs=None, vocab_size=VOCAB)
    assert (defaults.temperature, defaults.n, defaults.logprobs) == (1.0, 1, None)
    with raises_400("min_tokens"):
        sampling_params(chat(min_tokens=6), max_tokens=5, logprobs=None, vocab_size=VOCAB)
    with raises_400("stop"):
        sampling_params(chat(stop=[""]), max_tokens=5, logprobs=None, vocab_size=VOCAB)
    with raises_400("stop_token_ids"):
        sampling_params(chat(stop_token_ids=[VOCAB]), max_tokens=5, logprobs=None, vocab_size=VOCAB)


def test_chat_messages() -> None:
    body = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "name": "ann",
            },
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert chat_messages(body.messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb", "name": "ann"},
        {"role": "assistant", "content": "ok"},
    ]
    for messages, param in [
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages.0.content.0",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a", "image_url": {"url": "x"}}],
                }
            ],
            "messages.0.content.0",
        ),
        ([{"role": "tool", "content": "1"}], "messages.0.tool_call_id"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], "messages.0.tool_calls"),
        ([{"role": "assistant", "content": None}], "messages.0.content"),
    ]:
        with raises_400(param):
            chat_messages(chat(messages=messages).messages)


def test_completion_prompts(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello world")
    assert completion_prompts(completion(prompt="hello world"), tokenizer, VOCAB) == [ids]
    assert completion_prompts(completion(prompt=ids), tokenizer, VOCAB) == [ids]
    assert completion_prompts(completion(prompt=["hello world", "x"]), tokenizer, VOCAB) == [
        ids,
        tokenizer.encode("x"),
    ]
    assert completion_prompts(completion(prompt=[ids, [5]]), tokenizer, VOCAB) == [ids, [5]]
    with raises_400("prompt.1"):
        completion_prompts(completion(prompt=[[1], [VOCAB]]), tokenizer, VOCAB)
    with raises_400("prompt"):
        completion_prompts(completion(prompt=[]), tokenizer, VOCAB)


def test_token_bytes_are_exact(tokenizer: Tokenizer) -> None:
    speller = TokenSpeller(tokenizer)
    text = "héllo 😀 world"
    ids = tokenizer.encode(text)
    assert b"".join(bytes(speller.bytes(t)) for t in ids) == text.encode()
    assert speller.bytes(tokenizer.token_to_id("<|im_end|>")) == list(b"<|im_end|>")  # type: ignore[arg-type]


def test_logprob_shapes(tokenizer: Tokenizer) -> None:
    speller = TokenSpeller(tokenizer)
    ids = tokenizer.encode(" Paris is")
    entries = []
    for i, t in enumerate(ids):
        other = (t + 1) % VOCAB
        # the sampled token is rank 2 the first time, rank 1 after
        if i == 0:
            entries.append({other: Logprob(-0.1, 1, None), t: Logprob(-2.5, 2, None)})
        else:
            entries.append({t: Logprob(-0.2, 1, None), other: Logprob(-3.0, 2, None)})
    out = chat_logprobs(speller, ids, entries, top_k=1)
    assert [e.token for e in out.content or []] == [tokenizer.decode([t]) for t in ids]
    first = (out.content or [])[0]
    assert first.logprob == -2.5 and [t.logprob for t in first.top_logprobs] == [-0.1]
    legacy, end = completion_logprobs(speller, ids, entries, top_k=0, offset=3)
    assert legacy.token_logprobs == [-2.5] + [-0.2] * (len(ids) - 1)
    assert all(len(top) == 1 for top in legacy.top_logprobs)  # logprobs=0: the sampled token
    assert legacy.text_offset[0] == 3 and end == 3 + len(" Paris is")
    assert completion_logprobs(speller, [ids[0]], [{ids[0]: Logprob(float("-inf"), 9, "x")}], 0, 0)[
        0
    ].token_logprobs == [-9999.0]


def test_chunk_model_keeps_explicit_nulls() -> None:
    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}
            ],
        }
    )
    dumped = chunk.model_dump(exclude_unset=True)
    assert dumped["choices"][0] == {
        "index": 0,
        "delta": {"content": "x"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert dumped["object"] == "chat.completion.chunk" and "usage" not in dumped
