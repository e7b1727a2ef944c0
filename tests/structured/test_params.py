"""StructuredOutputsParams: exactly one constraint, the limits on each (exact messages), and
how far a regex's counted repetitions unroll. No model is loaded."""

from __future__ import annotations

from typing import Any

import pytest

from heron.structured import StructuredOutputsParams
from heron.structured.params import (
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MAX_GRAMMAR_BYTES,
    MAX_REGEX_CHARS,
    MAX_SCHEMA_BYTES,
)
from heron.structured.regex_size import unrolled_length


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"anyOf": [schema]}  # one dict and one list per step: two levels
    return schema


def fails(message: str, **kw: Any) -> None:
    with pytest.raises(ValueError) as info:
        StructuredOutputsParams(**kw).check()
    assert str(info.value) == message


def test_exactly_one_constraint() -> None:
    with pytest.raises(ValueError) as info:
        StructuredOutputsParams()
    assert str(info.value) == (
        "structured outputs need exactly one of json, json_object, regex, choice, grammar "
        "(got none)"
    )
    with pytest.raises(ValueError) as info:
        StructuredOutputsParams(regex="a", choice=["a"])
    assert str(info.value).endswith("(got regex, choice)")
    with pytest.raises(ValueError, match="whitespace must be 'minimal' or 'flexible'"):
        StructuredOutputsParams(json_object=True, whitespace="any")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="json must be a JSON schema: a dict, or its JSON text"):
        StructuredOutputsParams(json=5)  # type: ignore[arg-type]


def test_schema_limits() -> None:
    big = {"enum": ["x" * 1000] * (MAX_SCHEMA_BYTES // 1000 + 1)}
    fails(f"the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes", json=big)
    fails("the JSON schema must be an object", json="true")
    fails("the JSON schema must be an object", json="[1]")
    with pytest.raises(ValueError, match="^the JSON schema is not valid JSON: Expecting value"):
        StructuredOutputsParams(json='{"a":').check()
    # 32 levels of JSON nesting pass; 33 do not
    StructuredOutputsParams(json={"items": nested(16)}).check()  # 1 + (2 * 15 + 1) levels
    fails("the JSON schema nests deeper than 32 levels", json={"anyOf": [nested(16)]})
    with pytest.raises(ValueError, match="^invalid JSON schema: "):
        StructuredOutputsParams(json={"type": "nonsense"}).check()


def test_regex_limits() -> None:
    fails(f"regex must be a non-empty string of at most {MAX_REGEX_CHARS}", regex="")
    fails(
        f"regex must be a non-empty string of at most {MAX_REGEX_CHARS}",
        regex="a" * (MAX_REGEX_CHARS + 1),
    )
    fails(
        "regex '(a{1000}){1000}' repeats too much: its counted repetitions unroll to more than "
        "10000 characters",
        regex="(a{1000}){1000}",
    )
    fails(
        "the JSON schema's pattern '^(ab{99}){999}$' repeats too much: its counted repetitions "
        "unroll to more than 10000 characters",
        json={
            "type": "object",
            "properties": {"x": {"type": "string", "pattern": "^(ab{99}){999}$"}},
        },
    )
    # unbounded repetition and alternation do not explode: a DFA handles them
    StructuredOutputsParams(regex="(x+x+)+y").check()
    StructuredOutputsParams(regex=r"(\d{3}-){2}\d{4}").check()
    with pytest.raises(ValueError, match="^invalid regex: "):
        StructuredOutputsParams(regex="(ab").check()


def test_choice_and_grammar_limits() -> None:
    fails(f"choice must list between 1 and {MAX_CHOICES} strings", choice=[])
    fails(
        f"choice must list between 1 and {MAX_CHOICES} strings",
        choice=["x"] * (MAX_CHOICES + 1),
    )
    fails(
        f"each choice must be a string of at most {MAX_CHOICE_CHARS}",
        choice=["x" * (MAX_CHOICE_CHARS + 1)],
    )
    fails(f"grammar must be non-empty and at most {MAX_GRAMMAR_BYTES} bytes", grammar="  ")
    fails(
        f"grammar must be non-empty and at most {MAX_GRAMMAR_BYTES} bytes",
        grammar="a" * (MAX_GRAMMAR_BYTES + 1),
    )
    fails(
        "the grammar's regex '(a{1000}){1000}' repeats too much: its counted repetitions unroll "
        "to more than 10000 characters",
        grammar="start: X\nX: /(a{1000}){1000}/",
    )
    for repeated in ('start: ("a"~1000)~1000', 'start: [("ab"~100)~2..100]'):
        fails(
            "the grammar repeats too much: its counted repetitions unroll to more than 10000 "
            "characters",
            grammar=repeated,
        )
    with pytest.raises(ValueError, match="^invalid grammar: .*Rule 'missing' not found"):
        StructuredOutputsParams(grammar="root ::= missing").check()
    StructuredOutputsParams(grammar='root ::= "a" [b-c]+').check()  # GBNF
    StructuredOutputsParams(grammar='start: "x" NUM\nNUM: /[0-9]{2}/').check()  # Lark


def test_equal_schemas_share_a_key() -> None:
    a = StructuredOutputsParams(json={"type": "object"})
    b = StructuredOutputsParams(json='{"type":"object"}')
    assert a.key == b.key
    assert a.key != StructuredOutputsParams(json_object=True, whitespace="flexible").key


@pytest.mark.parametrize(
    ("regex", "length"),
    [
        ("abc", 3),
        (r"\d{3}-\d{4}", 8),
        ("(a{1000}){1000}", 1_000_000),
        ("(ab|c){3}", 6),
        ("a|bcd", 3),
        ("(x+x+)+y", 3),
        (r"\p{L}{5}", 5),
        ("[]a{]{4}", 4),
        ("(?:ab){2}(?i)x", 5),
        ("(?P<n>ab){2,}", 4),
        ("a{,3}", 5),  # not a count in Rust's syntax: five literal characters
        ("((a{10}){10}){10}", 1000),
    ],
)
def test_unrolled_length(regex: str, length: int) -> None:
    assert unrolled_length(regex, 10**9) == length


def test_unrolled_length_stops_past_the_limit() -> None:
    assert 100 < unrolled_length("a{99999999999}", 100) <= 10**9
    assert unrolled_length("(a{1000}){1000}" * 50, 10_000) == 1_000_000
