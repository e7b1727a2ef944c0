"""Per-choice output parsing: the model's text split into content, reasoning and tool calls.

The shared generation run (``heron/server/run.py``) feeds each choice's new text to one
``OutputParser`` made by the request's parser factory, and hands the resulting events to
the API families, which only translate them into their shapes. A ``ChainParser`` puts a
reasoning parser first and sends only its content on to the tool-call parser.

Parsers are streaming: ``feed`` may hold back text that could still turn out to be
markup (a marker's prefix), and ``finish`` releases whatever is left at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias


@dataclass(slots=True)
class TextPart:
    """Text for the answer (``content``) or the model's thinking (``reasoning``)."""

    text: str
    kind: Literal["content", "reasoning"] = "content"


@dataclass(slots=True)
class ToolCallPart:
    """A piece of the tool call at ``index`` (0, 1, ... within the choice). The first part
    of a call carries its ``name`` (and ``id`` where the model's format has one); later
    parts carry only further ``arguments`` text (a JSON object, in fragments)."""

    index: int
    id: str | None
    name: str | None
    arguments: str = ""


Event: TypeAlias = TextPart | ToolCallPart


class OutputParser(Protocol):
    """Turns one choice's text, as it streams, into events."""

    def feed(self, text: str) -> list[Event]:
        """Consume ``text`` (the choice's next piece); returns the events it completes.
        May keep text back until it knows whether it is markup."""
        ...

    def finish(self) -> list[Event]:
        """The output has ended: returns the events for whatever was held back."""
        ...


ParserFactory: TypeAlias = Callable[[], OutputParser]


class ChainParser:
    """A reasoning parser, then a tool-call parser on its content (either may be None)."""

    def __init__(self, reasoning: OutputParser | None, tools: OutputParser | None) -> None:
        self.reasoning = reasoning
        self.tools = tools

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = [TextPart(text)]
        if self.reasoning:
            events = self.reasoning.feed(text)
        return self._through_tools(events)

    def finish(self) -> list[Event]:
        events = self._through_tools(self.reasoning.finish() if self.reasoning else [])
        if self.tools:
            events.extend(self.tools.finish())
        return events

    def _through_tools(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if self.tools and isinstance(event, TextPart) and event.kind == "content":
                out.extend(self.tools.feed(event.text))
            elif not (isinstance(event, TextPart) and not event.text):
                out.append(event)
        return out


@dataclass(slots=True)
class ToolCall:
    """One whole tool call of a choice: ``arguments`` is the JSON text as the model wrote
    it (the families give it their ids and shapes)."""

    name: str
    arguments: str = ""
    id: str | None = None

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object; a call cut short (not a whole JSON object, e.g. by
        max_tokens) gets the empty one."""
        try:
            value = json.loads(self.arguments or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class ParsedOutput:
    """What a choice's events add up to."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, events: list[Event]) -> None:
        """Accumulate ``events`` (mutates the lists)."""
        for event in events:
            if isinstance(event, TextPart):
                (self.content if event.kind == "content" else self.reasoning).append(event.text)
            elif event.index >= len(self.tool_calls):
                self.tool_calls.append(ToolCall(event.name or "", event.arguments, event.id))
            else:
                self.tool_calls[event.index].arguments += event.arguments
