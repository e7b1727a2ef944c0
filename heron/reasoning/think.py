"""``ThinkParser``: a reply's ``<think>...</think>`` span as reasoning, the rest as content.

The shapes it reads, from Qwen3 and DeepSeek-R1 style models:

    <think>\\nreasoning\\n</think>\\n\\nanswer      the model opens the span itself
    reasoning\\n</think>\\n\\nanswer               the prompt already ended in "<think>"
    answer                                      no span: all content

The markers and the whitespace next to them are dropped. Text is held back only while it
may still be (part of) a marker or the whitespace before one, so a marker split across any
number of pieces never leaks into either stream.
"""

from __future__ import annotations

from heron.server.parsing import Event, TextPart

START = "<think>"
END = "</think>"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ThinkParser:
    """A streaming ``OutputParser`` for one choice (mutates only itself).

    ``in_reasoning``: the prompt ended inside an open ``<think>``, so the output starts as
    reasoning. Otherwise a ``<think>`` at the very start (after whitespace) opens it, and an
    output that starts with anything else is all content.
    """

    def __init__(self, in_reasoning: bool = False) -> None:
        # "start": deciding whether the output opens with <think>; "reasoning"; "content"
        self._state = "reasoning" if in_reasoning else "start"
        self._held = ""
        self._strip = True  # drop the whitespace that follows a marker

    def feed(self, text: str) -> list[Event]:
        """Consume ``text``; returns the reasoning and content it completes."""
        self._held += text
        events: list[Event] = []
        if self._state == "start":
            self._open()
        if self._state == "reasoning":
            events += self._reason(final=False)
        if self._state == "content":
            events += self._content()
        return events

    def finish(self) -> list[Event]:
        """The output ended: what was held back goes out in the state it was in (a lone
        marker prefix is text after all; the trailing whitespace of reasoning is dropped)."""
        events: list[Event] = []
        if self._state == "start":
            self._state = "content"
        if self._state == "reasoning":
            events += self._reason(final=True)
        elif self._held:
            events.append(TextPart(self._held))
        self._held = ""
        return events

    def _open(self) -> None:
        """Leave "start" once the held text shows whether the output opens with <think>."""
        body = self._held.lstrip()
        if body.startswith(START):
            self._state, self._held, self._strip = "reasoning", body[len(START) :], True
        elif not START.startswith(body):  # not (a prefix of) the marker: plain content
            self._state, self._strip = "content", False

    def _reason(self, final: bool) -> list[Event]:
        if self._strip:
            self._held = self._held.lstrip()
            self._strip = not self._held
        end = self._held.find(END)
        if end >= 0:
            thought, self._held = self._held[:end].rstrip(), self._held[end + len(END) :]
            self._state, self._strip = "content", True
            return [TextPart(thought, "reasoning")] if thought else []
        # Keep back a possible marker prefix and the whitespace before it, unless it ended.
        keep = 0 if final else _partial_suffix(self._held, END)
        ready = self._held[: len(self._held) - keep]
        thought = ready.rstrip()
        self._held = "" if final else ready[len(thought) :] + self._held[len(ready) :]
        return [TextPart(thought, "reasoning")] if thought else []

    def _content(self) -> list[Event]:
        if self._strip:
            self._held = self._held.lstrip()
            self._strip = not self._held
        text, self._held = self._held, ""
        return [TextPart(text)] if text else []
