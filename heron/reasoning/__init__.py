"""Reasoning parsers: how a thinking model's reply splits into its reasoning and its answer.

A registry of parsers by name, imported lazily, and ``detect``: which parser a chat
template calls for. The server (``heron/server/thinking.py``) decides per request whether
thinking is on and builds the parser that the shared generation run feeds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.server.parsing import OutputParser

# name -> (module, class); each class takes ``in_reasoning: bool``.
REASONING_PARSERS: dict[str, tuple[str, str]] = {
    "think": ("heron.reasoning.think", "ThinkParser"),
}

# What a template that lets the model think mentions: the span's marker (Qwen3, QwQ,
# DeepSeek-R1), the switch Qwen3's templates read, or Ollama's Go template field.
_THINK_MARKERS = ("<think>", "enable_thinking", ".Think")


def detect(template: str | None) -> str | None:
    """The reasoning parser a model with chat ``template`` needs, or None if it does not
    think (as far as its template says)."""
    if template and any(marker in template for marker in _THINK_MARKERS):
        return "think"
    return None


def make_parser(name: str, in_reasoning: bool) -> OutputParser:
    """A new parser ``name`` for one choice; ``in_reasoning``: the prompt left a thinking
    span open. Raises KeyError for an unknown name."""
    module, cls = REASONING_PARSERS[name]
    parser: OutputParser = getattr(importlib.import_module(module), cls)(in_reasoning)
    return parser


def opens_reasoning(prompt_tail: str) -> bool:
    """Whether a prompt ending in ``prompt_tail`` leaves a ``<think>`` span open (templates
    of DeepSeek-R1 and Qwen3's thinking-only models open it in the generation prompt)."""
    tail = prompt_tail.rstrip()
    return tail.endswith("<think>")
