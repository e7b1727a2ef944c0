"""A model's Modelfile defaults, applied the same way by every API family.

Precedence, as in Ollama: server defaults < the model's Modelfile ``PARAMETER``s < what the
request sets. The Modelfile's ``SYSTEM`` is used when a chat has no system message, and its
``MESSAGE``s start every chat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heron.server.common import APIError
from heron.server.model_spec import LoadedModel, ModelSpec
from heron.server.state import ServerState

# Modelfile PARAMETER -> SamplingParams field, for the parameters that shape sampling.
_SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_predict": "max_tokens",
}


def sampling_defaults(spec: ModelSpec) -> dict[str, Any]:
    """The Modelfile's sampling parameters under SamplingParams' names (``num_predict`` -1/-2,
    "until the context is full", is left out; a negative seed means random)."""
    out: dict[str, Any] = {}
    for key, value in spec.parameters.items():
        name = _SAMPLING_KEYS.get(key)
        if name is None:
            continue
        if name == "max_tokens" and (not isinstance(value, int) or value <= 0):
            continue
        if name == "seed" and (not isinstance(value, int) or value < 0):
            continue
        if name == "stop":
            value = [value] if isinstance(value, str) else list(value)
        out[name] = value
    return out


def context_limit(model: LoadedModel) -> int:
    """The context a request may use: the engine's, lowered by a Modelfile ``num_ctx``."""
    limit = model.engine.max_model_len
    num_ctx = model.spec.parameters.get("num_ctx")
    if isinstance(num_ctx, int) and 0 < num_ctx < limit:
        return num_ctx
    return limit


def with_model_messages(spec: ModelSpec, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat the model sees: its Modelfile MESSAGEs first, and its SYSTEM prompt when the
    conversation brings none."""
    seeded: list[dict[str, Any]] = [dict(m) for m in spec.messages]
    if spec.system and not any(m.get("role") == "system" for m in seeded + messages):
        seeded.insert(0, {"role": "system", "content": spec.system})
    return seeded + messages


async def load_model(
    state: ServerState,
    name: str,
    not_found: Callable[[str], str] | None = None,
    task: str = "generate",
) -> LoadedModel:
    """The loaded model for a request (loading it if needed). An unknown name is a 404 whose
    message ``not_found`` words in the API family's style; a model that cannot do ``task``
    ("generate" or "embed") is a 400."""
    try:
        return await state.models.get(name, task=task)
    except APIError as exc:
        if exc.status == 404 and not_found is not None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise APIError(404, not_found(shown), "not_found", "model") from None
        raise
