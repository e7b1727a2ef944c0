"""What a request asks its output to match, in vLLM's ``structured_outputs`` names.

Exactly one of ``json`` (a JSON schema), ``json_object`` (any JSON object), ``regex``,
``choice`` (one of these strings) or ``grammar`` (Lark, or llama.cpp's GBNF) is set.
``check`` enforces Heron's limits and asks the grammar engine (llguidance) whether the
constraint compiles; it raises ``ValueError`` naming the problem, which every API answers
with a 400. ``to_grammar`` gives the llguidance grammar the engine core compiles.

Whitespace inside generated JSON is minimal by default (``{"a":1}``): a small model left
free to emit whitespace can wander into it forever. ``whitespace="flexible"`` allows it.
"""

from __future__ import annotations

import hashlib
import json as jsonlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from heron.structured.regex_size import unrolled_length

# Limits on one constraint (see the security notes: hostile schemas and regexes).
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_REGEX_CHARS = 4096
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
MAX_GRAMMAR_BYTES = 256 * 1024
# Characters a regex's counted repetitions may unroll to (``(a{1000}){1000}`` is 10**6): the
# grammar engine builds them lazily, on the step loop (see ``regex_size``).
MAX_REGEX_UNROLLED = 10_000
_LARK_REGEX = re.compile(r"/((?:[^/\\\n]|\\.)+)/")
_LARK_REPEAT = re.compile(r"~\s*(\d+)(?:\s*\.\.\s*(\d+))?")  # x~3, x~2..5

_KINDS = ("json", "json_object", "regex", "choice", "grammar")


def _schema_regexes(schema: Any) -> list[str]:
    """The regexes of a JSON schema: its ``pattern`` values and ``patternProperties`` keys."""
    found: list[str] = []
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if isinstance(value.get("pattern"), str):
                found.append(value["pattern"])
            if isinstance(value.get("patternProperties"), dict):
                found.extend(value["patternProperties"])
            stack.extend(value.values())
    return found


def _check_regex_size(regexes: list[str], what: str) -> None:
    for regex in regexes:
        if unrolled_length(regex, MAX_REGEX_UNROLLED) > MAX_REGEX_UNROLLED:
            raise ValueError(
                f"{what} {regex[:60]!r} repeats too much: its counted repetitions unroll to "
                f"more than {MAX_REGEX_UNROLLED} characters"
            )


def _grammar_growth(grammar: str) -> int:
    """How many characters a grammar's counted repetitions (Lark's ``x~n``, ``x~m..n``,
    GBNF's ``x{m,n}``) add when unrolled. Its text is read as one regex, with Lark's optional
    ``[...]`` as a group (so a class counts its characters: an overestimate)."""
    text = _LARK_REPEAT.sub(lambda m: "{" + (m.group(2) or m.group(1)) + "}", grammar)
    text = text.replace("[", "(").replace("]", ")")
    return unrolled_length(text, len(text) + MAX_REGEX_UNROLLED) - len(text)


def json_depth(node: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping once past ``limit`` (iterative: a hostile
    document cannot overflow the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        value, d = stack.pop()
        if not isinstance(value, dict | list):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, d + 1) for c in children)
    return deepest


@dataclass(slots=True)
class StructuredOutputsParams:
    """One output constraint. ``json`` may be a schema dict or its JSON text; it is kept as
    compact JSON text (in its own key order, which the output follows); equal schemas share
    one compiled grammar."""

    json: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    whitespace: Literal["minimal", "flexible"] = "minimal"
    _key: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.json, dict):
            # Refused before it is serialized: a hostile depth would overflow the encoder.
            if json_depth(self.json, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
                raise ValueError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
            self.json = jsonlib.dumps(self.json, separators=(",", ":"))
        chosen = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            names = ", ".join(chosen) if chosen else "none"
            raise ValueError(
                f"structured outputs need exactly one of {', '.join(_KINDS)} (got {names})"
            )
        if self.json is not None and not isinstance(self.json, str):
            raise ValueError("json must be a JSON schema: a dict, or its JSON text")
        if self.choice is not None and not isinstance(self.choice, list):
            raise ValueError("choice must be a list of strings")
        if self.whitespace not in ("minimal", "flexible"):
            raise ValueError("structured outputs whitespace must be 'minimal' or 'flexible'")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> str:
        """A digest of the constraint: the compiled-grammar cache's key."""
        if not self._key:
            text = self.to_grammar()
            self._key = hashlib.sha256(text.encode()).hexdigest()
        return self._key

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema this constraint stands for (json and json_object), else None."""
        if self.json_object:
            return {"type": "object"}
        if self.json is None:
            return None
        assert isinstance(self.json, str)
        value = jsonlib.loads(self.json)
        assert isinstance(value, dict)
        return value

    def check(self) -> None:
        """Enforce the size limits and validate the constraint with llguidance. Raises
        ValueError naming the problem. Mutates nothing."""
        if isinstance(self.json, str):
            if len(self.json.encode()) > MAX_SCHEMA_BYTES:
                raise ValueError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes")
            try:
                schema = jsonlib.loads(self.json)
            except ValueError as exc:
                raise ValueError(f"the JSON schema is not valid JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ValueError("the JSON schema must be an object")
            if json_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
                raise ValueError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
            _check_regex_size(_schema_regexes(schema), "the JSON schema's pattern")
        if self.regex is not None and (
            not isinstance(self.regex, str) or not self.regex or len(self.regex) > MAX_REGEX_CHARS
        ):
            raise ValueError(f"regex must be a non-empty string of at most {MAX_REGEX_CHARS}")
        if self.regex is not None:
            _check_regex_size([self.regex], "regex")
        if self.choice is not None:
            if not self.choice or len(self.choice) > MAX_CHOICES:
                raise ValueError(f"choice must list between 1 and {MAX_CHOICES} strings")
            if any(not isinstance(c, str) or len(c) > MAX_CHOICE_CHARS for c in self.choice):
                raise ValueError(f"each choice must be a string of at most {MAX_CHOICE_CHARS}")
        if self.grammar is not None and (
            not isinstance(self.grammar, str)
            or not self.grammar.strip()
            or len(self.grammar.encode()) > MAX_GRAMMAR_BYTES
        ):
            raise ValueError(f"grammar must be non-empty and at most {MAX_GRAMMAR_BYTES} bytes")
        if self.grammar is not None:
            _check_regex_size(_LARK_REGEX.findall(self.grammar), "the grammar's regex")
            if _grammar_growth(self.grammar) > MAX_REGEX_UNROLLED:
                raise ValueError(
                    "the grammar repeats too much: its counted repetitions unroll to more than "
                    f"{MAX_REGEX_UNROLLED} characters"
                )
        from heron.structured.grammar import validate

        validate(self.to_grammar(), self.kind)

    def to_grammar(self) -> str:
        """The llguidance grammar (its JSON form) for this constraint. Raises ValueError for
        a grammar that cannot be read (GBNF that does not convert)."""
        from heron.structured.grammar import to_llguidance

        return to_llguidance(self)
