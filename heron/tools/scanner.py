"""A streaming tool-call parser shared by every call format.

Every format Heron reads writes a call as a JSON object ``{"name": ..., "arguments": {...}}``
(``parameters`` for Llama 3), after an opening trigger (``<tool_call>``, ``[TOOL_CALLS]``,
``<|python_tag|>``, or the object's own ``{"name"``) and maybe before a closing marker.
``CallScanner`` finds the trigger in the text, holding back any tail that could still
become one (so markup never leaks into content), and reports each call as soon as its name
is read, then its arguments fragment by fragment as they stream. A call written in another
key order is reported whole once its object is complete; anything that does not parse as
a call is given back as content.

States: TEXT (content, looking for a trigger) -> BETWEEN (after a trigger or a call:
separators, closing markers) -> HEAD (the object up to its arguments' value) -> ARGS (the
value, streamed) -> TAIL (the rest of the object) -> BETWEEN.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum

from heron.server.parsing import Event, TextPart, ToolCallPart

_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_SEPARATORS = " \t\r\n,;[]"
# A call whose name does not come first is read whole; one longer than this is not taken
# for a call (its text is content), which bounds the rescanning of a held object.
MAX_HELD_CALL_CHARS = 8192


@dataclass(frozen=True, slots=True)
class CallSyntax:
    """Where calls are in a format's text: ``triggers`` open a run of calls (``consumed``
    markers are dropped, the others start the call object itself); ``close`` follows each
    call and is dropped."""

    triggers: tuple[tuple[str, bool], ...]
    close: str = ""


class _State(Enum):
    TEXT = 0
    BETWEEN = 1
    HEAD = 2
    ARGS = 3
    TAIL = 4


class CallScanner:
    """An ``OutputParser`` for one choice's text in ``syntax``."""

    def __init__(self, syntax: CallSyntax) -> None:
        self.syntax = syntax
        self._buf = ""
        self._state = _State.TEXT
        self._index = 0  # the next call's index
        self._opened = ""  # the trigger dropped before HEAD (given back if no call follows)
        # the JSON scan of ARGS and TAIL
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._begun = False

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Event]:
        events = self._run(final=True)
        if self._buf and self._state in (_State.TEXT, _State.HEAD, _State.BETWEEN):
            events.append(TextPart(self._opened + self._buf))
        self._buf = ""
        return events

    def _run(self, final: bool) -> list[Event]:
        events: list[Event] = []
        step = {
            _State.TEXT: self._text,
            _State.BETWEEN: self._between,
            _State.HEAD: self._head,
            _State.ARGS: self._args,
            _State.TAIL: self._tail,
        }
        while self._buf and step[self._state](events, final):
            pass
        return events

    # Each step consumes from ``_buf`` and returns whether it made progress.
    def _text(self, events: list[Event], final: bool) -> bool:
        found = [(self._buf.find(t), t, c) for t, c in self.syntax.triggers]
        hits = [f for f in found if f[0] >= 0]
        if hits:
            pos, trigger, consumed = min(hits)
            if pos:
                events.append(TextPart(self._buf[:pos]))
            skip = len(trigger) if consumed else 0
            self._opened = trigger if consumed else ""
            self._buf = self._buf[pos + skip :]
            self._state = _State.BETWEEN if consumed else _State.HEAD
            return True
        keep = 0 if final else self._partial_trigger()
        cut = len(self._buf) - keep
        if cut:
            events.append(TextPart(self._buf[:cut]))
            self._buf = self._buf[cut:]
        return False

    def _partial_trigger(self) -> int:
        """The length of the longest tail of ``_buf`` that begins a trigger."""
        longest = max(len(t) for t, _ in self.syntax.triggers) - 1
        for k in range(min(longest, len(self._buf)), 0, -1):
            tail = self._buf[-k:]
            if any(t.startswith(tail) for t, _ in self.syntax.triggers):
                return k
        return 0

    def _between(self, events: list[Event], final: bool) -> bool:
        close = self.syntax.close
        buf = self._buf.lstrip(_SEPARATORS)
        while close and buf.startswith(close):
            buf = buf[len(close) :].lstrip(_SEPARATORS)
        self._buf = buf
        if close and close.startswith(buf) and final:
            self._buf = ""  # the output was cut inside a closing marker: not content
        if not self._buf or (close and close.startswith(buf)):
            return False
        if buf.startswith("{"):
            self._state = _State.HEAD
        else:  # not a call after all: the dropped marker is content again
            if self._opened:
                events.append(TextPart(self._opened))
            self._state, self._opened = _State.TEXT, ""
        return True

    def _head(self, events: list[Event], final: bool) -> bool:
        match = _HEAD.match(self._buf)
        if match:
            name = json.loads(f'"{match.group(1)}"')
            events.append(ToolCallPart(self._index, None, name))
            self._buf = self._buf[match.end() :]
            self._state, self._opened = _State.ARGS, ""
            self._depth, self._in_string, self._escaped, self._begun = 0, False, False, False
            return True
        end = _object_end(self._buf)
        if end is None and len(self._buf) > MAX_HELD_CALL_CHARS:
            events.append(TextPart(self._opened + self._buf))
            self._buf, self._state, self._opened = "", _State.TEXT, ""
            return False
        if end is None:
            return False  # incomplete: wait (``finish`` gives it back as content)
        call = _as_call(self._buf[:end])
        if call is None:
            events.append(TextPart(self._opened + self._buf[:end]))
        else:
            events.append(ToolCallPart(self._index, None, call[0]))
            events.append(ToolCallPart(self._index, None, None, call[1]))
            self._index += 1
        self._buf = self._buf[end:]
        self._state, self._opened = _State.BETWEEN, ""
        return True

    def _args(self, events: list[Event], final: bool) -> bool:
        if not self._begun:
            self._buf = self._buf.lstrip()  # the arguments text starts at its value
            if not self._buf:
                return False
        end = self._scan(ending_object=False)
        piece = self._buf if end is None else self._buf[:end]
        if piece:
            events.append(ToolCallPart(self._index, None, None, piece))
        if end is None:
            self._buf = ""
            return False
        self._buf = self._buf[end:]
        self._state = _State.TAIL
        self._depth, self._in_string, self._escaped = 1, False, False
        return True

    def _tail(self, events: list[Event], final: bool) -> bool:
        end = self._scan(ending_object=True)
        if end is None:
            self._buf = ""
            return False
        self._buf = self._buf[end:]
        self._index += 1
        self._state = _State.BETWEEN
        return True

    def _scan(self, ending_object: bool) -> int | None:
        """Where the JSON value being read ends in ``_buf`` (the arguments' value, or with
        ``ending_object`` the call object whose ``}`` closes depth 1); None if not yet.
        Mutates the scan state."""
        for i, ch in enumerate(self._buf):
            if not self._begun:
                if ch.isspace():
                    continue
                self._begun = True
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0 and not ending_object:
                        return i + 1
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                if self._depth == 0:
                    return i  # a bare value ended by its object's close
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
            elif ch == "," and self._depth == 0:
                return i
        return None


def _object_end(text: str) -> int | None:
    """The index after the JSON object that ``text`` starts with, or None if incomplete."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _as_call(text: str) -> tuple[str, str] | None:
    """(name, arguments JSON) of a whole call object, or None if it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return value["name"], arguments
    return value["name"], json.dumps(arguments, ensure_ascii=False)
