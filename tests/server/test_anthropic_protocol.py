"""The Anthropic family's translation, without a server: request validation, the
conversation handed to the chat template, prefill rendering, stop reasons and usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import ValidationError

from heron.outputs import GenerationDelta
from heron.prompt import ChatRenderer
from heron.sampling_params import SamplingParams
from heron.server.anthropic.protocol import MessageCreateRequest
from heron.server.anthropic.serving import (
    chat_messages,
    encode_prompt,
    sampling_params,
    stop_reason,
    usage,
)
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel, ModelSpec
from heron.server.run import GenerationRun
from heron.server.state import ServerLimits, ServerState
from heron.tokenizer import Tokenizer


def body(**kw: Any) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hi"}],
        **kw,
    }


def first_error(data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        MessageCreateRequest.model_validate(data)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


def test_valid_request_with_blocks_and_cache_control() -> None:
    req = MessageCreateRequest.model_validate(
        body(
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Hi", "citations": None}]}
            ],
            metadata={"user_id": "u-1"},
            stop_sequences=["\n\n"],
            temperature=0,
            top_k=5,
        )
    )
    assert req.temperature == 0.0 and req.top_k == 5 and not req.stream


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        (body(max_tokens="10"), "max_tokens", "valid integer"),
        (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (body(max_tokens=-1), "max_tokens", "greater than or equal to 1"),
        (body(stream="yes"), "stream", "valid boolean"),
        (body(temperature="0"), "temperature", "valid number"),
        (body(temperature=1.5), "temperature", "less than or equal to 1"),
        (body(top_p=0), "top_p", "greater than 0"),
        (body(top_k=-1), "top_k", "greater than or equal to 0"),
        (body(messages=[]), "messages", "at least 1 item"),
        (body(messages="Hi"), "messages", "valid list"),
        (body(messages=[{"role": "bot", "content": "x"}]), "messages.0.role", "'user'"),
        (
            body(messages=[{"role": "system", "content": "x"}]),
            "messages.0.role",
            "top-level system",
        ),
        (body(messages=[{"role": "user", "content": 5}]), "messages.0.content", "string or a list"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            "messages.0.content",
            "type 'image'",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages.0.content",
            "content block 0: Field required (text)",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]),
            "messages.0.content",
            "(x)",
        ),
        (
            body(
                messages=[
                    {"role": "user", "content": [{"type": "text", "text": "a", "citations": [{}]}]}
                ]
            ),
            "messages.0.content",
            "citations are not supported",
        ),
        (body(system=[{"type": "document"}]), "system", "type 'document'"),
        (body(system=[{"type": {}, "text": "a"}]), "system", "content block 0"),
        (
            body(messages=[{"role": "user", "content": [{"type": ["x"], "text": "a"}]}]),
            "messages.0.content",
            "content block 0",
        ),
        (body(system="\ud800"), "system", "valid Unicode"),
        (body(messages=[{"role": "user", "content": "a\udfffb"}]), "messages.0.content", "Unicode"),
        (body(metadata={"user_id": "u", "tier": 1}), "metadata.tier", "Extra inputs"),
        (body(cache_control={"type": "forever"}), "cache_control.type", "'ephemeral'"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, Any], loc: str, fragment: str) -> None:
    where, msg = first_error(data)
    assert where == loc
    assert fragment in msg


@pytest.mark.parametrize(
    "field",
    [
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "inference_geo",
        "speed",
        "n",
        "logprobs",
    ],
)
def test_unsupported_fields_are_refused(field: str) -> None:
    where, msg = first_error(body(**{field: None}))
    assert where == field and msg == "Extra inputs are not permitted"


def test_conversation_for_the_template() -> None:
    req = MessageCreateRequest.model_validate(
        body(
            system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            messages=[
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "three"},
                {"role": "user", "content": "four"},
            ],
        )
    )
    assert chat_messages(req.system, req.messages) == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
    ]
    assert chat_messages(None, req.messages[:1])[0]["role"] == "user"
    assert chat_messages([], req.messages[:1])[0]["role"] == "user"
    assert chat_messages("", req.messages[:1])[0] == {"role": "system", "content": ""}


def fake_state(**limits: int) -> ServerState:
    return ServerState(
        models=cast(Any, None), metrics=cast(Any, None), limits=ServerLimits(**limits)
    )


def fake_model(parameters: dict[str, Any] | None = None) -> LoadedModel:
    engine = SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=100), max_model_len=64)
    spec = ModelSpec("m", "/nonexistent", None, 0, 0.0, parameters=parameters or {})
    return LoadedModel(spec, cast(Any, engine), pinned=True, keep_alive=0.0, expires_at=0.0)


def test_sampling_params() -> None:
    state = fake_state(max_tokens=16, max_stop_strings=2)
    req = MessageCreateRequest.model_validate(body(stop_sequences=["x"], top_k=10**30))
    params = sampling_params(state, req, fake_model())
    assert params.temperature == 1.0  # Anthropic's default
    assert params.top_k == 0  # above the vocabulary: keep every token
    assert params.stop == ["x"] and params.max_tokens == 8 and not params.include_stop_str_in_output
    model = fake_model()
    greedy = sampling_params(state, MessageCreateRequest.model_validate(body(temperature=0)), model)
    assert greedy.greedy
    # A Modelfile's parameters are the defaults; the request's fields win over them.
    modelfile = fake_model({"temperature": 0.0, "top_k": 5, "stop": ["END"]})
    plain = sampling_params(state, MessageCreateRequest.model_validate(body()), modelfile)
    assert plain.greedy and plain.top_k == 5 and plain.stop == ["END"]
    own = MessageCreateRequest.model_validate(body(temperature=0.5, stop_sequences=["x"]))
    mixed = sampling_params(state, own, modelfile)
    assert mixed.temperature == 0.5 and mixed.stop == ["x"]
    for bad, param in [
        (body(max_tokens=17), "max_tokens"),
        (body(stop_sequences=["a", "b", "c"]), "stop_sequences"),
        (body(stop_sequences=[""]), None),
    ]:
        with pytest.raises(APIError) as info:
            sampling_params(state, MessageCreateRequest.model_validate(bad), model)
        assert info.value.status == 400 and info.value.param == param


def delta(text: str, n_out: int, finish: str | None = None, stop: Any = None) -> GenerationDelta:
    return GenerationDelta("r", 0, text, [1], None, finish, stop, 10, 4, n_out)


@pytest.mark.parametrize(
    ("finish", "stop", "n_out", "expected"),
    [
        ("stop", None, 3, "end_turn"),
        ("stop", 2, 3, "end_turn"),  # a stop token id, not a stop sequence
        ("stop", "END", 3, "stop_sequence"),
        ("length", None, 8, "max_tokens"),
        ("length", None, 54, "model_context_window_exceeded"),  # 10 + 54 fills the 64 context
    ],
)
def test_stop_reason_and_usage(finish: str, stop: Any, n_out: int, expected: str) -> None:
    deltas = [delta("a", 1), delta("b", n_out, finish, stop)]
    model = fake_model()

    async def generate(*_: Any, **__: Any) -> AsyncIterator[GenerationDelta]:
        for d in deltas:
            yield d

    model.engine.generate = generate  # type: ignore[method-assign]
    observed: list[tuple[Any, ...]] = []
    state = fake_state()
    state.metrics = cast(Any, SimpleNamespace(observe_request=lambda *a: observed.append(a)))

    async def run_it() -> GenerationRun:
        run = GenerationRun(state, model, [[1] * 10], SamplingParams(), "r", 0, "messages")
        await run.collect(cast(Any, StillConnected()))
        return run

    run = asyncio.run(run_it())
    max_tokens = 8 if expected == "max_tokens" else 100
    assert stop_reason(run, max_tokens) == expected
    assert run.choices[0].output == "ab"
    assert run.choices[0].stop_string == (stop if isinstance(stop, str) else None)
    got = usage(run)
    assert (got.input_tokens, got.cache_read_input_tokens, got.output_tokens) == (6, 4, n_out)
    assert len(observed) == 1 and observed[0][2] == n_out and observed[0][-1] == finish


class StillConnected:
    """A request whose client never leaves."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    from heron.loader import load_checkpoint
    from heron.store.resolve import resolve_model

    return Tokenizer.from_checkpoint(load_checkpoint(resolve_model("smollm2")))


@pytest.fixture(scope="module")
def renderer(tokenizer: Tokenizer) -> ChatRenderer:
    return ChatRenderer(tokenizer)


def test_prompt_without_prefill_is_encode_chat(renderer: ChatRenderer) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert encode_prompt(renderer, messages) == renderer.encode(messages)


def test_prefill_continues_the_assistant_text(renderer: ChatRenderer) -> None:
    user = [{"role": "user", "content": "Count to five."}]
    ids = encode_prompt(renderer, [*user, {"role": "assistant", "content": "1, 2,"}])
    head = renderer.render(user, add_generation_prompt=True)
    assert renderer.tokenizer.decode(ids, skip_special_tokens=False) == head + "1, 2,"
    # an empty prefill is the plain generation prompt
    empty = encode_prompt(renderer, [*user, {"role": "assistant", "content": ""}])
    assert empty == renderer.encode(user)
    with pytest.raises(ValueError, match="trailing whitespace"):
        encode_prompt(renderer, [*user, {"role": "assistant", "content": "1, "}])
