"""server/thinking.py without a server: which requests think, what the template gets, and
the parser each choice is given."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from heron.reasoning.think import ThinkParser
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel
from heron.server.parsing import ChainParser, TextPart
from heron.server.thinking import Thinking, effort_choice, resolve_thinking

QWEN3ISH = "{% if enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"


def model(template: str | None, prompt_text: str = "assistant\n") -> LoadedModel:
    engine = SimpleNamespace(
        renderer=SimpleNamespace(template=template),
        tokenizer=SimpleNamespace(decode=lambda ids, skip_special_tokens=True: prompt_text),
    )
    return cast(LoadedModel, SimpleNamespace(name="m:latest", cache={}, engine=engine))


def test_effort_choice() -> None:
    assert effort_choice(None) is None
    assert effort_choice("none") is False
    assert all(effort_choice(e) is True for e in ("minimal", "low", "medium", "high", "max"))
    assert effort_choice(None, False) is False  # vLLM's chat_template_kwargs.enable_thinking
    assert effort_choice("high", True) is True and effort_choice("none", False) is False
    with pytest.raises(APIError) as info:
        effort_choice("none", True)
    assert info.value.param == "chat_template_kwargs.enable_thinking"


@pytest.mark.parametrize("enabled", [None, True, False])
def test_a_thinking_model_takes_every_choice(enabled: bool | None) -> None:
    thinking = resolve_thinking(model(QWEN3ISH), enabled, "think")
    assert thinking == Thinking("think", enabled)
    expected: dict[str, Any] = {} if enabled is None else {"enable_thinking": enabled}
    assert thinking.template_kwargs == expected


def test_a_model_that_does_not_think() -> None:
    plain = model("{{ messages }}")
    with pytest.raises(APIError) as info:
        resolve_thinking(plain, True, "thinking", "shown")
    assert info.value.status == 400 and info.value.param == "thinking"
    assert info.value.message == '"shown" does not support thinking (thinking)'
    for enabled in (None, False):  # nothing to turn off, nothing to pass the template
        thinking = resolve_thinking(plain, enabled, "think")
        assert thinking.template_kwargs == {}
        assert thinking.parser_factory(plain, [1]) is None


def test_parsers_per_choice() -> None:
    opened = model(QWEN3ISH, "<|im_start|>assistant\n<think>\n")
    factory = resolve_thinking(opened, None, "think").parser_factory(opened, [1, 2])
    assert factory is not None
    first, second = factory(), factory()
    assert isinstance(first, ThinkParser) and first is not second
    assert first.feed("r</think>c") == [TextPart("r", "reasoning"), TextPart("c")]
    off = resolve_thinking(opened, False, "think")
    assert off.parser_factory(opened, [1]) is None  # thinking off: all text is content
    tools = ThinkParser  # any parser factory stands in for the tool-call parser
    chained = resolve_thinking(opened, True, "think").parser_factory(opened, [1], tools)
    assert chained is not None and isinstance(chained(), ChainParser)
    assert off.parser_factory(opened, [1], tools) is tools
