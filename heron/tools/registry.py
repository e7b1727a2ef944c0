"""Tool-call formats by name, imported on first use, and the pick from a chat template."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.tools.formats import ToolFormat

# name -> (module, attribute): a new format is one line here and a ToolFormat there.
FORMATS: dict[str, tuple[str, str]] = {
    "hermes": ("heron.tools.formats", "HERMES"),
    "llama3_json": ("heron.tools.formats", "LLAMA3_JSON"),
    "mistral": ("heron.tools.formats", "MISTRAL"),
    "json": ("heron.tools.formats", "JSON"),
}

# A template that writes one of these markers takes tools in that format.
_TEMPLATE_MARKERS = (
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3_json"),
    ("[TOOL_CALLS]", "mistral"),
)


def get_format(name: str) -> ToolFormat:
    """The format registered as ``name``. Raises ValueError for an unknown one."""
    if name not in FORMATS:
        raise ValueError(f"unknown tool-call format {name!r}; have {sorted(FORMATS)}")
    module, attribute = FORMATS[name]
    found: ToolFormat = getattr(importlib.import_module(module), attribute)
    return found


def detect_format(template: str | None) -> str | None:
    """The format a chat template's tool support uses, or None if it has none that Heron
    reads (then Heron's built-in tool prompt stands in)."""
    if not template:
        return None
    for marker, name in _TEMPLATE_MARKERS:
        if marker in template:
            return name
    return None
