"""A tool-call format: how a model family writes calls, read back by ``CallScanner`` and
enforced by a Lark grammar for llguidance.

A run of calls is ``region_open`` + calls joined by ``separator`` + ``region_close``; each
call is ``call_open`` + ``{"name": "<tool>", "<args_key>": <arguments>}`` + ``call_close``,
with the arguments held to the tool's parameter schema by ``%json``. ``trigger`` is the
text that starts a run: with ``tool_choice`` auto the model writes freely until it writes
the trigger (a lazy lexeme), and from there the call is constrained.

Markers are matched as text (Lark string literals), never as special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heron.server.parsing import OutputParser
from heron.structured import StructuredOutputsParams
from heron.structured.schema import closed_objects
from heron.tools.scanner import CallScanner, CallSyntax
from heron.tools.spec import ToolChoice, ToolSpec

# Generated arguments use the separators json.dumps writes (what chat models were trained
# on), with no other whitespace: a small model left free to emit whitespace can loop on it.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lit(text: str) -> str:
    # JSON string escapes are what Lark's double-quoted literals accept.
    return json.dumps(text) if text else ""


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """One family's tool-call syntax (see the module docstring)."""

    name: str
    trigger: str
    triggers: tuple[tuple[str, bool], ...]  # what the parser opens a run on (see CallSyntax)
    args_key: str = "arguments"
    region_open: str = ""
    region_close: str = ""
    call_open: str = ""
    call_close: str = ""
    separator: str = "\n"

    def parser(self) -> OutputParser:
        """A fresh streaming parser of this format (one per choice)."""
        return CallScanner(CallSyntax(self.triggers, self.call_close.strip()))

    def constraint(
        self, tools: Sequence[ToolSpec], choice: ToolChoice, parallel: bool
    ) -> StructuredOutputsParams | None:
        """The grammar that enforces calls for ``choice``: auto lets the model write text
        and constrains each call it opens; required makes the whole output one call (or
        several with ``parallel``) to any tool; named, exactly one call to that tool. None for
        ``none`` or no tools."""
        if choice.mode == "none" or not tools:
            return None
        if choice.mode == "named":  # one call to that tool
            tools, parallel = [t for t in tools if t.name == choice.name], False
        return StructuredOutputsParams(grammar=self.grammar(tools, choice.mode, parallel))

    def grammar(self, tools: Sequence[ToolSpec], mode: str, parallel: bool) -> str:
        """The Lark grammar (see ``constraint``)."""
        head = self.region_open + self.call_open + '{"name": "'
        assert head.startswith(self.trigger)
        between = self.call_close + self.separator + self.call_open + '{"name": "'
        end = self.call_close + self.region_close
        calls = "call (between call)*" if parallel else "call"
        lines = [
            "%llguidance {}",
            f"calls: {calls} {_lit(end)}",
            "call: " + " | ".join(f"call_{i}" for i in range(len(tools))),
        ]
        if parallel:
            lines.append(f"between: {_lit(between)}")
        for i, tool in enumerate(tools):
            name = _lit(f'{tool.name}", "{self.args_key}": ')
            lines.append(f'call_{i}: {name} args_{i} "}}"')
            lines.append(f"args_{i}: %json {json.dumps(_styled(tool.parameters))}")
        if mode == "auto":
            lines += [
                "start: run* tail",
                "tail: TEXT",
                r"TEXT: /(.|\n)*/",
                f"opening[lazy]: TEXT {_lit(self.trigger)}",
                f"run: opening {_lit(head[len(self.trigger) :])} calls",
            ]
        else:
            lines.append(f"start: {_lit(head)} calls")
        return "\n".join(lines) + "\n"


def _styled(schema: dict[str, Any]) -> dict[str, Any]:
    # Closed objects, as for every JSON-schema constraint (see heron/structured/schema.py).
    options = dict(schema.get("x-guidance") or {}, **_JSON_STYLE)
    return {**closed_objects(schema), "x-guidance": options}


HERMES = ToolFormat(
    "hermes",
    trigger="<tool_call>",
    triggers=(("<tool_call>", True),),
    call_open="<tool_call>\n",
    call_close="\n</tool_call>",
)
LLAMA3_JSON = ToolFormat(
    "llama3_json",
    trigger='{"name"',
    triggers=(("<|python_tag|>", True), ('{"name"', False)),
    args_key="parameters",
    separator="; ",
)
MISTRAL = ToolFormat(
    "mistral",
    trigger="[TOOL_CALLS]",
    triggers=(("[TOOL_CALLS]", True),),
    region_open="[TOOL_CALLS][",
    region_close="]",
    separator=", ",
)
JSON = ToolFormat("json", trigger='{"name"', triggers=(('{"name"', False),))
