"""A reply's content blocks as Anthropic streams them: a block opens when the kind of text
changes (thinking, then text), deltas go to the open block, and a thinking block ends with
its ``signature_delta``. The non-streamed reply builds the same blocks at once.

Heron's signatures are a digest of the thinking text: clients pass them back unchanged, and
Heron has no proof of origin to give (a thinking block in the history is never checked).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from heron.server.anthropic.protocol import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJSONDelta,
    SignatureDelta,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from heron.server.anthropic.tools import call_id, tool_use_blocks
from heron.server.parsing import Event, ToolCallPart
from heron.server.run import Choice


def signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()


def reply_blocks(choice: Choice) -> list[TextBlock | ThinkingBlock | ToolUseBlock]:
    """A finished choice's content: its thinking block (if it thought), its text (unless
    the reply is only tool calls), then its tool_use blocks."""
    blocks: list[TextBlock | ThinkingBlock | ToolUseBlock] = []
    if choice.reasoning:
        blocks.append(
            ThinkingBlock(thinking=choice.reasoning, signature=signature(choice.reasoning))
        )
    if choice.content or not choice.tool_calls:
        blocks.append(TextBlock(text=choice.content))
    blocks += tool_use_blocks(choice)
    return blocks


class BlockStream:
    """The stream events of one reply's content blocks (mutates its own state only)."""

    def __init__(self, choice: Choice | None = None) -> None:
        self.choice = choice  # whose tool calls get their ids here
        self.index = -1
        self.kind: str | None = None  # the open block's: "reasoning", "content", "tool"
        self.thought: list[str] = []
        self.has_text = False
        self.has_calls = False

    def open_text(self) -> list[BaseModel]:
        """Open a text block now (a reply that cannot think starts with one at once)."""
        return self._switch("content")

    def feed(self, events: list[Event]) -> list[BaseModel]:
        """The events that stream ``events`` (parsed text of the reply)."""
        out: list[BaseModel] = []
        for event in events:
            if isinstance(event, ToolCallPart):
                out += self._call(event)
                continue
            if not event.text:
                continue
            out += self._switch(event.kind)
            if event.kind == "reasoning":
                self.thought.append(event.text)
                delta: BaseModel = ThinkingDelta(thinking=event.text)
            else:
                delta = TextDelta(text=event.text)
            out.append(ContentBlockDeltaEvent(index=self.index, delta=delta))  # type: ignore[arg-type]
        return out

    def finish(self) -> list[BaseModel]:
        """Close the open block; a reply always ends with a text block (maybe empty), as
        the non-streamed reply has one."""
        out = [] if self.has_text or self.has_calls else self._switch("content")
        return out + self._close()

    def _call(self, part: ToolCallPart) -> list[BaseModel]:
        """A tool call's first piece opens its tool_use block; the rest stream its input."""
        out: list[BaseModel] = []
        if part.name is not None:
            assert self.choice is not None
            out += self._close()
            self.index += 1
            self.kind, self.has_calls = "tool", True
            call = self.choice.tool_calls[part.index]
            block = ToolUseBlock(id=call_id(call), name=part.name, input={})
            out.append(ContentBlockStartEvent(index=self.index, content_block=block))
        if part.arguments:
            delta = InputJSONDelta(partial_json=part.arguments)
            out.append(ContentBlockDeltaEvent(index=self.index, delta=delta))
        return out

    def _switch(self, kind: str) -> list[BaseModel]:
        if kind == self.kind:
            return []
        out = self._close()
        self.index += 1
        self.kind = kind
        block: TextBlock | ThinkingBlock
        if kind == "reasoning":
            block = ThinkingBlock(thinking="", signature="")
        else:
            block, self.has_text = TextBlock(text=""), True
        out.append(ContentBlockStartEvent(index=self.index, content_block=block))
        return out

    def _close(self) -> list[BaseModel]:
        if self.kind is None:
            return []
        out: list[BaseModel] = []
        if self.kind == "reasoning":
            sig = SignatureDelta(signature=signature("".join(self.thought)))
            out.append(ContentBlockDeltaEvent(index=self.index, delta=sig))
            self.thought = []
        out.append(ContentBlockStopEvent(index=self.index))
        self.kind = None
        return out
