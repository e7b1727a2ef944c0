"""Anthropic thinking without a server: the request's ``thinking`` field, thinking blocks in
the history, and the content blocks a reply streams (their order, deltas and signature)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from heron.server.anthropic.blocks import BlockStream, reply_blocks, signature
from heron.server.anthropic.protocol import MessageCreateRequest
from heron.server.anthropic.serving import chat_messages
from heron.server.common import APIError
from heron.server.parsing import ParsedOutput, TextPart
from heron.server.run import Choice


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 2048, "messages": [{"role": "user", "content": "Hi"}], **kw}


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled", "budget_tokens": 1024},
        {"type": "enabled", "budget_tokens": 1024, "display": "summarized"},
        {"type": "disabled"},
        {"type": "adaptive"},
    ],
)
def test_thinking_configs_are_accepted(thinking: dict[str, Any]) -> None:
    req = MessageCreateRequest.model_validate(body(thinking=thinking))
    assert req.thinking is not None and req.thinking.type == thinking["type"]


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled", "budget_tokens": 1023},
        {"type": "enabled"},
        {"type": "enabled", "budget_tokens": 2000, "display": "omitted"},
        {"type": "between_tools"},
        {"type": "on"},
        {"type": "disabled", "budget_tokens": 1024},
    ],
)
def test_bad_thinking_configs_are_refused(thinking: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        MessageCreateRequest.model_validate(body(thinking=thinking))
    assert all(e["loc"][0] == "thinking" for e in info.value.errors())


def test_thinking_blocks_in_the_history_reach_the_template() -> None:
    req = MessageCreateRequest.model_validate(
        body(
            messages=[
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "they greet", "signature": "x"},
                        {"type": "redacted_thinking", "data": "opaque"},
                        {"type": "text", "text": "Hello"},
                    ],
                },
                {"role": "user", "content": "Again"},
            ]
        )
    )
    messages = chat_messages(req.system, req.messages)
    assistant = messages[1]
    assert assistant == {"role": "assistant", "content": "Hello", "reasoning_content": "they greet"}


def test_thinking_blocks_from_the_user_are_a_400() -> None:
    thought = {"type": "thinking", "thinking": "t", "signature": ""}
    req = MessageCreateRequest.model_validate(
        body(messages=[{"role": "user", "content": [thought]}])
    )
    with pytest.raises(APIError) as info:
        chat_messages(req.system, req.messages)
    assert info.value.status == 400 and info.value.param == "messages.0"


def test_thinking_blocks_are_not_allowed_in_the_system_prompt() -> None:
    with pytest.raises(ValidationError):
        MessageCreateRequest.model_validate(
            body(system=[{"type": "thinking", "thinking": "t", "signature": ""}])
        )


def dumped(events: list[Any]) -> list[dict[str, Any]]:
    return [e.model_dump() for e in events]


def test_blocks_stream_thinking_then_text_with_a_signature() -> None:
    stream = BlockStream()
    out = stream.feed([TextPart("plan", "reasoning"), TextPart(" more", "reasoning")])
    out += stream.feed([TextPart("answer")])
    out += stream.finish()
    assert [(e["type"], e.get("index")) for e in dumped(out)] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),  # the signature, just before the block stops
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    events = dumped(out)
    assert events[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[1]["delta"] == {"type": "thinking_delta", "thinking": "plan"}
    assert events[3]["delta"] == {"type": "signature_delta", "signature": signature("plan more")}
    assert events[5]["content_block"] == {"type": "text", "text": ""}
    assert events[6]["delta"] == {"type": "text_delta", "text": "answer"}


def test_a_reply_that_only_thought_still_ends_with_a_text_block() -> None:
    stream = BlockStream()
    out = dumped(stream.feed([TextPart("hmm", "reasoning")]) + stream.finish())
    assert [e["type"] for e in out][-3:] == [
        "content_block_stop",
        "content_block_start",
        "content_block_stop",
    ]
    assert out[-2]["content_block"] == {"type": "text", "text": ""}


def test_a_text_block_opened_first_takes_the_whole_reply() -> None:
    stream = BlockStream()
    out = dumped(stream.open_text() + stream.feed([TextPart("a"), TextPart("b")]) + stream.finish())
    assert [e["type"] for e in out] == ["content_block_start"] + ["content_block_delta"] * 2 + [
        "content_block_stop"
    ]


def test_reply_blocks() -> None:
    choice = Choice(parser=object(), parsed=ParsedOutput(content=["c"], reasoning=["r"]))  # type: ignore[arg-type]
    blocks = [b.model_dump() for b in reply_blocks(choice)]
    assert blocks == [
        {"type": "thinking", "thinking": "r", "signature": signature("r")},
        {"type": "text", "text": "c"},
    ]
    assert [b.model_dump() for b in reply_blocks(Choice(text=["plain"]))] == [
        {"type": "text", "text": "plain"}
    ]
