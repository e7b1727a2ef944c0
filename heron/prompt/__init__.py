"""Chat prompts for Heron: a model's chat template rendered over a conversation.

`ChatRenderer` is the entry point. `jinja` renders sandboxed Jinja templates (HF checkpoints,
GGUF metadata); `gotemplate` is Heron's capped Go text/template interpreter for Modelfile
TEMPLATEs, with Ollama's prompt data. Both load only when a template needs them.
"""

from __future__ import annotations

from heron.prompt.renderer import ChatRenderer, check_template

__all__ = ["ChatRenderer", "check_template"]
