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
    SignatureDelta,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
)
from heron.server.parsing import Event, TextPart
from heron.server.run import Choice


def signature(thinking: str) -> str:
    return hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()


def reply_blocks(choice: Choice) -> list[TextBlock | ThinkingBlock]:
    """A finished choice's content: its thinking block (if it thought), then its text."""
    blocks: list[TextBlock | ThinkingBlock] = []
    if choice.reasoning:
        blocks.append(
            ThinkingBlock(thinking=choice.reasoning, signature=signature(choice.reasoning))
        )
    blocks.append(TextBlock(text=choice.content))
    return blocks


class BlockStream:
    """The stream events of one reply's content blocks (mutates its own state only)."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None  # the open block's: "reasoning", "content" or None
        self.thought: list[str] = []
        self.has_text = False

    def open_text(self) -> list[BaseModel]:
        """Open a text block now (a reply that cannot think starts with one at once)."""
        return self._switch("content")

    def feed(self, events: list[Event]) -> list[BaseModel]:
        """The events that stream ``events`` (parsed text of the reply)."""
        out: list[BaseModel] = []
        for event in events:
            if not isinstance(event, TextPart) or not event.text:
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
        out = [] if self.has_text else self._switch("content")
        return out + self._close()

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
