"""Constraints to llguidance grammars, and their validation.

llguidance is the grammar engine: it compiles JSON schemas, regexes and Lark grammars
against the tokenizer and computes, per step, the bitmask of tokens that keep the output
valid. Heron never writes its own schema-to-grammar compiler; it only picks llguidance's
options (minimal JSON whitespace) and its resource limits.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import llguidance

from heron.structured.schema import closed_objects

if TYPE_CHECKING:
    from heron.structured.params import StructuredOutputsParams


def parser_limits() -> llguidance.LLParserLimits:
    """The work one grammar may cost. Lexer fuel bounds compile time (about 50k units per
    millisecond, so 2M is ~40 ms) and per-step mask work; the grammar size bounds memory."""
    return llguidance.LLParserLimits(
        initial_lexer_fuel=2_000_000,
        step_lexer_fuel=400_000,
        step_max_items=100_000,
        max_lexer_states=100_000,
        max_grammar_size=200_000,
    )


def _lark_literal(text: str) -> str:
    # JSON string escapes are what Lark's double-quoted literals accept.
    return json.dumps(text)


def to_llguidance(params: StructuredOutputsParams) -> str:
    """The llguidance grammar (JSON text) for ``params``. Raises ValueError when a GBNF
    grammar cannot be converted or a schema is not a JSON object."""
    ws = {"whitespace_flexible": params.whitespace == "flexible"}
    schema = params.schema()
    if schema is not None:
        if params.json is not None:
            schema = closed_objects(schema)
        try:
            return str(llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=ws))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid JSON schema: {exc}") from None
    if params.regex is not None:
        return str(llguidance.LLMatcher.grammar_from_regex(params.regex))
    if params.choice is not None:
        lark = "start: " + " | ".join(_lark_literal(c) for c in params.choice)
        return str(llguidance.LLMatcher.grammar_from_lark(lark))
    assert params.grammar is not None
    try:
        return str(llguidance.grammar_from("grammar", params.grammar))
    except ValueError as exc:
        raise ValueError(f"invalid grammar: {exc}") from None


@functools.lru_cache(maxsize=256)
def validate(grammar: str, kind: str) -> None:
    """Ask llguidance whether ``grammar`` compiles within ``parser_limits``, without a
    tokenizer (the engine core compiles it against the tokenizer). Raises ValueError.
    Grammars that passed are remembered (a failure raises, so it is never cached)."""
    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=parser_limits())
    if error:
        what = {"json": "JSON schema", "json_object": "JSON schema"}.get(kind, kind)
        raise ValueError(f"invalid {what}: {error.strip()[:500]}")
