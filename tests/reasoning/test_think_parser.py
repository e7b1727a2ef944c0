"""ThinkParser: reasoning and content split the same however the text arrives, and no
marker (or part of one) leaks into either stream."""

from __future__ import annotations

import itertools

import pytest

from heron.reasoning import detect, make_parser, opens_reasoning
from heron.reasoning.think import ThinkParser
from heron.server.parsing import ChainParser, Event, ParsedOutput, TextPart

# (output, prompt left <think> open, reasoning, content)
CASES = [
    ("<think>\nplan a b\n</think>\n\nthe answer", False, "plan a b", "the answer"),
    ("  <think>x</think>y", False, "x", "y"),
    ("plan\n</think>\n\nanswer", True, "plan", "answer"),
    ("no thinking here", False, "", "no thinking here"),
    ("  leading space kept", False, "", "  leading space kept"),
    ("<thinking> is not the marker", False, "", "<thinking> is not the marker"),
    ("<think>cut short by max_tokens", False, "cut short by max_tokens", ""),
    ("cut short </thi", True, "cut short </thi", ""),
    ("<think></think>only content", False, "", "only content"),
    ("<thi", False, "", "<thi"),
    ("a < b </ c </think> d", True, "a < b </ c", "d"),
    ("<think>a</think>b </think> c", False, "a", "b </think> c"),
    ("<think>\n\n</think>\n\n", False, "", ""),
    ("é 😀 </think> ü", True, "é 😀", "ü"),
]


def run(pieces: list[str], in_reasoning: bool) -> tuple[str, str, list[Event]]:
    parser = ThinkParser(in_reasoning)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    out = ParsedOutput()
    out.add(events)
    return "".join(out.reasoning), "".join(out.content), events


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), CASES)
def test_whole_text(text: str, in_reasoning: bool, reasoning: str, content: str) -> None:
    assert run([text], in_reasoning)[:2] == (reasoning, content)


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), CASES)
def test_one_character_at_a_time(
    text: str, in_reasoning: bool, reasoning: str, content: str
) -> None:
    got_reasoning, got_content, events = run(list(text), in_reasoning)
    assert (got_reasoning, got_content) == (reasoning, content)
    for event in events:  # nothing empty; no marker fragment unless the answer has one
        assert isinstance(event, TextPart) and event.text
        assert "<" not in event.text or "<" in reasoning + content


@pytest.mark.parametrize(("text", "in_reasoning", "reasoning", "content"), CASES)
def test_every_split_in_two_and_three(
    text: str, in_reasoning: bool, reasoning: str, content: str
) -> None:
    for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
        pieces = [text[:i], text[i:j], text[j:]]
        assert run(pieces, in_reasoning)[:2] == (reasoning, content), pieces


def test_reasoning_streams_before_the_end_marker() -> None:
    parser = ThinkParser()
    assert parser.feed("<think>step one") == [TextPart("step one", "reasoning")]
    # the whitespace and the "</th" might start the end marker: held back
    assert parser.feed(" </th") == []
    assert parser.feed("ink>\nok") == [TextPart("ok")]
    assert parser.finish() == []


def test_a_marker_prefix_that_is_not_one_is_released() -> None:
    parser = ThinkParser(in_reasoning=True)
    assert parser.feed("x </") == [TextPart("x", "reasoning")]
    assert parser.feed("b>") == [TextPart(" </b>", "reasoning")]


def test_content_after_the_span_streams_at_once() -> None:
    parser = ThinkParser()
    parser.feed("<think>a</think>")
    assert parser.feed("\n\nhello") == [TextPart("hello")]
    assert parser.feed(" </think>") == [TextPart(" </think>")]


def test_chained_with_no_tool_parser() -> None:
    chain = ChainParser(ThinkParser(), None)
    events = chain.feed("<think>r</think>c") + chain.finish()
    assert events == [TextPart("r", "reasoning"), TextPart("c")]


def test_detect_and_registry() -> None:
    assert detect("{% if enable_thinking %}x{% endif %}") == "think"
    assert detect("<|im_start|>assistant\n<think>\n") == "think"
    assert detect("{{ if .Think }}thinking{{ end }}") == "think"
    assert detect("<|im_start|>{{ message['content'] }}") is None
    assert detect(None) is None
    assert isinstance(make_parser("think", True), ThinkParser)
    with pytest.raises(KeyError):
        make_parser("nope", False)


def test_opens_reasoning() -> None:
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_reasoning("<|im_start|>assistant\n")
