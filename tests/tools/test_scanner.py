"""The streaming tool-call parsers: every format, and every split of the text into two
pieces gives the same content and calls as the whole text (no markup leaks)."""

from __future__ import annotations

import json

import pytest

from heron.server.parsing import Event, ParsedOutput, TextPart, ToolCallPart
from heron.tools.registry import detect_format, get_format

CASES = [
    (
        "hermes",
        'Sure. <tool_call>\n{"name": "get", "arguments": {"city": "Paris", "n": [1, {"a": "}"}]}}'
        '\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>',
        "Sure. ",
        [("get", {"city": "Paris", "n": [1, {"a": "}"}]}), ("b", {})],
    ),
    (
        "hermes",
        'a < b <tool_call>\n{"arguments": {"x": "\\"q"}, "name": "f"}\n</tool_call> done',
        "a < b done",
        [("f", {"x": '"q'})],
    ),
    ("hermes", "no calls <tool_ here", "no calls <tool_ here", []),
    ("hermes", "<tool_call>oops</tool_call>", "<tool_call>oops</tool_call>", []),
    (
        "llama3_json",
        '<|python_tag|>{"name": "get", "parameters": {"city": "Oslo"}}; '
        '{"name": "b", "parameters": {"k": 2}}',
        "",
        [("get", {"city": "Oslo"}), ("b", {"k": 2})],
    ),
    (
        "llama3_json",
        '{"name": "get", "parameters": {"q": "x"}}',
        "",
        [("get", {"q": "x"})],
    ),
    (
        "mistral",
        'ok[TOOL_CALLS][{"name": "get", "arguments": {"a": 1}}, {"name": "b", "arguments": {}}]',
        "ok",
        [("get", {"a": 1}), ("b", {})],
    ),
    ("json", '{"name": "get", "arguments": {"a": true}}', "", [("get", {"a": True})]),
]


def parse(fmt: str, pieces: list[str]) -> tuple[list[Event], ParsedOutput]:
    parser = get_format(fmt).parser()
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    parsed = ParsedOutput()
    parsed.add(events)
    return events, parsed


def summary(parsed: ParsedOutput) -> tuple[str, list[tuple[str, object]]]:
    calls = [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls]
    return "".join(parsed.content), calls


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_whole_text(fmt: str, text: str, content: str, calls: list[tuple[str, object]]) -> None:
    _, parsed = parse(fmt, [text])
    assert summary(parsed) == (content, calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_every_split_matches(
    fmt: str, text: str, content: str, calls: list[tuple[str, object]]
) -> None:
    for cut in range(1, len(text)):
        events, parsed = parse(fmt, [text[:cut], text[cut:]])
        assert summary(parsed) == (content, calls), cut
        firsts = [e for e in events if isinstance(e, ToolCallPart) and e.name is not None]
        assert [e.index for e in firsts] == list(range(len(calls)))


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES[:1] + CASES[4:5])
def test_character_stream(
    fmt: str, text: str, content: str, calls: list[tuple[str, object]]
) -> None:
    events, parsed = parse(fmt, list(text))
    assert summary(parsed) == (content, calls)
    texts = [e.text for e in events if isinstance(e, TextPart)]
    assert not any("<tool" in t or "python_tag" in t for t in texts)
    args = [e for e in events if isinstance(e, ToolCallPart) and e.name is None]
    assert len(args) > 3  # the arguments arrived in fragments, not at the end


def test_truncated_call_keeps_what_was_read() -> None:
    _, parsed = parse("hermes", ['<tool_call>\n{"name": "get", "arguments": {"ci'])
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get", '{"ci')]
    _, parsed = parse("hermes", ["hi <tool_call>\n{"])
    assert "".join(parsed.content) == "hi <tool_call>{"  # separators after a marker drop


def test_output_cut_inside_a_closing_marker_leaks_nothing() -> None:
    call = '<tool_call>\n{"name": "get", "arguments": {"a": 1}}\n</tool_call>'
    for cut in range(1, len("\n</tool_call>")):
        text = call + "\n" + call[: len(call) - cut]
        _, parsed = parse("hermes", [text])
        assert "".join(parsed.content) == "", cut
    _, parsed = parse("hermes", [call + call[:-3]])
    assert "".join(parsed.content) == ""
    assert [c.name for c in parsed.tool_calls] == ["get", "get"]


def test_detect_format() -> None:
    assert detect_format("{{ '<tool_call>' }}") == "hermes"
    assert detect_format("<|python_tag|>") == "llama3_json"
    assert detect_format("[TOOL_CALLS]") == "mistral"
    assert detect_format("<|im_start|>{{ m.content }}") is None
    assert detect_format(None) is None
    with pytest.raises(ValueError, match="unknown tool-call format"):
        get_format("nope")


def test_arguments_start_at_their_value() -> None:
    _, parsed = parse(
        "hermes", ['<tool_call>\n{"name": "f", "arguments":', ' {"a": 1}}\n</tool_call>']
    )
    assert [c.arguments for c in parsed.tool_calls] == ['{"a": 1}']


def test_a_long_object_that_is_not_a_call_is_content() -> None:
    text = '<tool_call>{"arguments": "' + "x" * 9000
    parser = get_format("hermes").parser()
    assert parser.feed(text[:20]) == []  # could still be a call: held
    given_back = parser.feed(text[20:])  # too long for one: content, before the end
    assert [e.text for e in given_back if isinstance(e, TextPart)] == [text]
    assert parser.feed(" and more") + parser.finish() == [TextPart(" and more")]
