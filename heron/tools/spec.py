"""The tools a request offers the model, and how it may use them.

A ``ToolSpec`` is one function (name, description, JSON-schema parameters) in the form all
three APIs share; ``ToolChoice`` says whether the model may call (``auto``), must not
(``none``), must call one or more (``required``) or must call one named tool (``named``).
``check_tools`` enforces Heron's limits and validates each parameter schema with the
grammar engine, raising ValueError naming the tool (every API answers it with a 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from heron.structured import StructuredOutputsParams

MAX_TOOLS = 128
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One function the model may call; ``parameters`` is the JSON schema of its arguments
    (an object)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    def to_openai(self) -> dict[str, Any]:
        """The ``{"type": "function", "function": {...}}`` form chat templates take."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode`` is auto, none, required or named (then ``name`` is the tool)."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None


def check_tools(tools: list[ToolSpec], choice: ToolChoice) -> None:
    """Enforce the limits (at most ``MAX_TOOLS``, names unique and matching
    ``NAME_PATTERN``), validate each parameters schema with the grammar engine, and check
    that a named choice names one of ``tools``. Raises ValueError naming the problem."""
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
    seen: set[str] = set()
    for tool in tools:
        if not isinstance(tool.name, str) or not NAME_PATTERN.fullmatch(tool.name):
            raise ValueError(
                f"tool name {str(tool.name)[:80]!r} must be 1 to 64 letters, digits, '_', '.' "
                "or '-'"
            )
        if tool.name in seen:
            raise ValueError(f"tool name {tool.name!r} is used twice")
        seen.add(tool.name)
        if not isinstance(tool.parameters, dict) or tool.parameters.get("type", "object") != (
            "object"
        ):
            raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of an object")
        try:
            StructuredOutputsParams(json=tool.parameters).check()
        except ValueError as exc:
            raise ValueError(f"tool {tool.name!r}: {exc}") from None
    if choice.mode == "named" and choice.name not in seen:
        raise ValueError(f"tool_choice names {str(choice.name)[:80]!r}, which is not in tools")
    if choice.mode in ("required", "named") and not tools:
        raise ValueError(f"tool_choice {choice.mode!r} needs at least one tool")
