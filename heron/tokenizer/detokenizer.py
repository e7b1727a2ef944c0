"""Streaming detokenization: turn generated ids into text deltas, one step at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.tokenizer.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# An unfinished UTF-8 character has at most 3 bytes, but byte-level tokens can straddle
# characters, so a run of tokens may all end mid-character. Past this many held tokens the
# trailing U+FFFD is taken as real (invalid bytes) and emitted, bounding the decode window.
MAX_HELD_TOKENS = 16


class IncrementalDetokenizer:
    """Decode a growing id sequence into text deltas.

    Invariant: `"".join(deltas) + flush() == tokenizer.decode(all_ids, skip_special_tokens)`.
    No delta ends inside a UTF-8 character: while the decoded tail is U+FFFD (an unfinished
    character), the text is held back until the next ids finish it.

    Each step decodes only a short window, not the whole sequence::

        ids:   | ... emitted ... | prefix window | pending (new) ids |
                                 ^ prefix_offset ^ read_offset       ^ len(ids)

        delta = decode(ids[prefix_offset:]) - decode(ids[prefix_offset:read_offset])

    The prefix window gives the decoder context (a leading-space strip or a byte-level merge
    behaves the same in both decodes), so the difference is exactly the new text.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Skipped ids are dropped on arrival, so a window never starts with a skipped id (which
        # would hide a leading space the full decode keeps).
        self._skip = tokenizer.all_special_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._parts)

    @property
    def num_held_tokens(self) -> int:
        """Ids received but not yet turned into emitted text."""
        return len(self._ids) - self._read_offset

    def add(self, token_ids: Sequence[int]) -> str:
        """Feed newly generated ids; return the new text ("" while a character is unfinished)."""
        # One id at a time, so text up to the last finished character is emitted even when the
        # batch as a whole ends inside a character. Each step decodes a window of a few ids.
        deltas: list[str] = []
        for token_id in token_ids:
            if token_id not in self._skip:
                self._ids.append(token_id)
                deltas.append(self._step(force=False))
        return "".join(deltas)

    def flush(self) -> str:
        """Emit any held text, unfinished characters included (as U+FFFD). Call at the end."""
        if len(self._ids) == self._read_offset:
            return ""
        return self._step(force=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def _step(self, force: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        held_back = new_text.endswith(REPLACEMENT_CHAR) and not force
        if held_back and self.num_held_tokens <= MAX_HELD_TOKENS:
            return ""
        if new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text) :]
        else:  # a decoder that rewrites earlier text: fall back to one full decode
            delta = self._decode(self._ids)[len(self.text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if delta:
            self._parts.append(delta)
        return delta
