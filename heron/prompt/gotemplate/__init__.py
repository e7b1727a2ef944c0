"""Render Ollama-style Go text/template prompt templates (a Modelfile's `TEMPLATE`) safely.

Heron's own interpreter for the subset of Go's text/template that model templates use: text,
`{{ pipeline }}` actions with `{{-`/`-}}` whitespace trimming, `{{/* comments */}}`, fields
(`.A.B`, `$.A`, `$x.A`, `(pipeline).A`), variables (`$x := ...`, `$x = ...`), `if`/`else if`/
`else`, `with`/`else with`/`else`, `range` (lists, maps in key order, ints; `else`, `break`,
`continue`), pipes, parenthesised pipelines, literals, and the functions of `funcs.FUNCS` plus
`and`/`or` (lazy, as Go evaluates them). `define`, `template` and `block` are refused at parse
time.

Templates come from model files, so they are untrusted: data is reached only through dict keys,
list indices and `Record` fields, and the source (64 KiB), output (1 MiB), loop iterations
(100,000 per render), nesting (100) and evaluation steps are capped. Every failure, syntax or
runtime, is a `TemplateError` (a ValueError) naming the line and column.

Modules: `values` (data model, Go's printing and JSON), `funcs` (built-in functions), `nodes`
(syntax tree), `parse` (lexer and parser), `interpreter` (execution, `GoTemplate`), `ollama`
(Ollama's prompt data and `render_ollama_prompt`).
"""

from __future__ import annotations

from .interpreter import (
    MAX_ITERATIONS,
    MAX_OUTPUT_BYTES,
    MAX_SOURCE_BYTES,
    GoTemplate,
    is_go_template,
)
from .ollama import render_ollama_prompt
from .parse import MAX_DEPTH
from .values import TemplateError

__all__ = [
    "MAX_DEPTH",
    "MAX_ITERATIONS",
    "MAX_OUTPUT_BYTES",
    "MAX_SOURCE_BYTES",
    "GoTemplate",
    "TemplateError",
    "is_go_template",
    "render_ollama_prompt",
]
