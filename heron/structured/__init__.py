"""Structured outputs: constraints (``params``), their llguidance grammars (``grammar``),
compilation off the step loop (``compiler``) and the per-step token bitmask (``bitmask``)."""

from heron.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
