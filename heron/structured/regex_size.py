"""How far a regex's counted repetitions unroll, before the grammar engine builds it.

llguidance builds a regex's automaton lazily, token by token: ``(a{1000}){1000}`` compiles
in milliseconds and then costs seconds on the first mask (on the engine's step loop) before
the lexer gives up. Nested counts multiply, so ``unrolled_length`` reads the regex's
structure (groups, alternatives, classes, escapes, quantifiers) and counts the characters
its counted repetitions spell out: ``x{n}`` and ``x{m,n}`` count ``n`` times ``x``, ``x*``,
``x+`` and ``x?`` count ``x`` once, an alternative counts its longest branch. It reads
Rust's regex syntax (what llguidance takes) and errs on the side of a larger count.
"""

from __future__ import annotations

import re

_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_BRACED_ESCAPES = "pPxu"  # \p{Greek}, \x{10FFFF}, \u{...}


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class that opens at ``pattern[i] == "["``."""
    depth, i = 1, i + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1  # a leading "]" is a literal
    while i < len(pattern) and depth:
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        i += 1
    return i


def _escape_end(pattern: str, i: int) -> int:
    """The index after the escape that starts at ``pattern[i] == "\\"``."""
    if i + 2 < len(pattern) and pattern[i + 1] in _BRACED_ESCAPES and pattern[i + 2] == "{":
        close = pattern.find("}", i + 3)
        return len(pattern) if close < 0 else close + 1
    return i + 2


def _group_start(pattern: str, i: int) -> int:
    """The index after a group's opening: ``(``, ``(?:``, ``(?P<name>``, ``(?i)``..."""
    i += 1
    if not pattern.startswith("?", i):
        return i
    while i < len(pattern) and pattern[i] not in ":)>":
        i += 1
    return i + 1 if i < len(pattern) and pattern[i] in ":>" else i


def unrolled_length(pattern: str, limit: int) -> int:
    """The characters ``pattern``'s counted repetitions unroll to, or a number above
    ``limit`` as soon as it passes it."""
    # One frame per open group: [longest finished branch, this branch, its last atom].
    frames: list[list[int]] = [[0, 0, 0]]
    i = 0
    while i < len(pattern):
        frame, c = frames[-1], pattern[i]
        size, nxt = 1, i + 1
        if c == "\\":
            nxt = _escape_end(pattern, i)
        elif c == "[":
            nxt = _class_end(pattern, i)
        elif c == "(":
            frames.append([0, 0, 0])
            i = _group_start(pattern, i)
            continue
        elif c == ")" and len(frames) > 1:
            frames.pop()
            size = max(frame[0], frame[1])
        elif c == "|":
            frame[0], frame[1], frame[2] = max(frame[0], frame[1]), 0, 0
            i += 1
            continue
        elif c in "*+?":
            i += 1
            continue  # counts its atom once
        elif c == "{" and (m := _COUNT.match(pattern, i)):
            digits = m.group(2) or m.group(1)
            times = int(digits) if len(digits) <= 9 else limit + 1
            frame[1] += frame[2] * (times - 1)
            frame[2] *= times
            if frame[1] > limit:
                return frame[1]
            i = m.end()
            continue
        frame = frames[-1]
        frame[1] += size
        frame[2] = size
        if frame[1] > limit:
            return frame[1]
        i = nxt
    while len(frames) > 1:  # unbalanced: llguidance refuses it; count what is there
        inner = frames.pop()
        frames[-1][1] += max(inner[0], inner[1])
    return max(frames[0][0], frames[0][1])
