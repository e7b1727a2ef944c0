"""The engine's sampling fields that every API family exposes under the same names.

``EngineFields`` is mixed into each family's request model: OpenAI's chat and completions
bodies and Anthropic's messages body take these as top-level fields (as vLLM's server
does), Ollama takes them inside ``options``. Each family's translator passes
``engine_fields(body)`` into its ``SamplingParams``. To expose a new ``SamplingParams`` field
on all three APIs, declare it here; ``SamplingParams`` validates the value and its
ValueError becomes the family's 400.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool, StrictInt

from heron.server.common import APIError

TokenId = Annotated[StrictInt, Field(ge=0)]


class EngineFields(BaseModel):
    """Fields that are Heron's (vLLM's names), not part of any family's own vocabulary."""

    min_tokens: StrictInt | None = Field(
        default=None, ge=0, description="Tokens before a stop may end."
    )
    ignore_eos: StrictBool | None = Field(default=None, description="Keep generating past EOS.")
    stop_token_ids: list[TokenId] | None = Field(default=None, description="Token ids that end it.")
    include_stop_str_in_output: StrictBool | None = None
    skip_special_tokens: StrictBool | None = Field(
        default=None, description="Leave them out of text."
    )


ENGINE_FIELD_NAMES = frozenset(EngineFields.model_fields)


def engine_fields(body: EngineFields, vocab_size: int, prefix: str = "") -> dict[str, Any]:
    """The fields the request set, as ``SamplingParams`` keyword arguments. Raises APIError
    (400, naming ``prefix + field``) for a token id outside the vocabulary."""
    given = {name: getattr(body, name) for name in ENGINE_FIELD_NAMES}
    given = {k: v for k, v in given.items() if v is not None}
    if any(t >= vocab_size for t in given.get("stop_token_ids", [])):
        raise APIError(
            400,
            f"stop_token_ids must be in [0, {vocab_size})",
            param=f"{prefix}stop_token_ids",
        )
    return given
