"""The output parsing hook: ChainParser routing and what a choice accumulates."""

from __future__ import annotations

from heron.outputs import GenerationDelta
from heron.server.parsing import (
    ChainParser,
    Event,
    ParsedOutput,
    TextPart,
    ToolCall,
    ToolCallPart,
)
from heron.server.run import Choice


class Upper:
    """Reasoning stand-in: text before '|' is reasoning, the rest content."""

    def __init__(self) -> None:
        self.after = False

    def feed(self, text: str) -> list[Event]:
        if self.after:
            return [TextPart(text)]
        head, sep, tail = text.partition("|")
        self.after = bool(sep)
        out: list[Event] = [TextPart(head, "reasoning")]
        return [*out, TextPart(tail)] if sep else out

    def finish(self) -> list[Event]:
        return []


class Calls:
    """Tool stand-in: each '!' opens a call named 'f' with arguments '{}'; held text flushes."""

    def __init__(self) -> None:
        self.n = 0
        self.held = ""

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        for ch in text:
            if ch == "!":
                out += [ToolCallPart(self.n, None, "f"), ToolCallPart(self.n, None, None, "{}")]
                self.n += 1
            else:
                self.held += ch
        return out

    def finish(self) -> list[Event]:
        return [TextPart(self.held)] if self.held else []


def test_chain_sends_only_content_to_tools() -> None:
    chain = ChainParser(Upper(), Calls())
    events = chain.feed("th!nk|a!b") + chain.finish()
    parsed = ParsedOutput()
    parsed.add(events)
    assert "".join(parsed.reasoning) == "th!nk"
    assert "".join(parsed.content) == "ab"
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("f", "{}")]


def test_chain_without_parsers_is_content() -> None:
    chain = ChainParser(None, None)
    assert chain.feed("x") == [TextPart("x")]
    assert chain.finish() == []


def delta(text: str, finish: str | None = None) -> GenerationDelta:
    return GenerationDelta("r", 0, text, [], None, finish, None, 1, 0, 1)


def test_choice_with_tool_calls_finishes_tool_calls() -> None:
    choice = Choice(parser=ChainParser(None, Calls()))
    for d in (delta("a!"), delta("b", "stop")):
        choice.parse(d)
    assert d.finish_reason == "tool_calls"
    assert choice.content == "ab"
    assert len(choice.pending) == 3


def test_choice_without_calls_keeps_stop_and_length() -> None:
    choice = Choice(parser=ChainParser(None, Calls()))
    last = delta("ab", "stop")
    choice.parse(last)
    assert last.finish_reason == "stop"
    cut = Choice(parser=ChainParser(None, Calls()))
    truncated = delta("!", "length")
    cut.parse(truncated)
    assert truncated.finish_reason == "length"


def test_call_arguments_as_an_object() -> None:
    assert ToolCall("f", '{"a": [1]}').arguments_object() == {"a": [1]}
    assert ToolCall("f", "").arguments_object() == {}
    assert ToolCall("f", '{"a": 1').arguments_object() == {}  # cut short by max_tokens
    assert ToolCall("f", "[1, 2]").arguments_object() == {}  # not an object
