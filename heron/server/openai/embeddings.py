"""``POST /v1/embeddings``: OpenAI's embeddings over an embedding model.

As OpenAI: an empty string or an empty list is a 400, an input over the context is a 400
(never silently cut), ``dimensions`` other than the model's own size is a 400 (vectors are
not shortened), and ``encoding_format: "base64"`` gives each vector as little-endian float32
bytes, base64-encoded (the official client asks for this by default and decodes it).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron.server.common import APIError
from heron.server.defaults import load_model
from heron.server.embeddings import (
    check_count,
    check_dimensions,
    check_dimensions_range,
    check_token_ids,
    embed,
    tokenize,
)
from heron.server.openai.protocol import EmbeddingInput, EmbeddingRequest
from heron.server.state import ServerState


def _base64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _inputs(value: EmbeddingInput) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, token-id lists): exactly one is set. The validated lists are homogeneous; an
    empty list counts as texts."""
    if isinstance(value, str):
        return [value], None
    if not value or isinstance(value[0], str):
        return [str(v) for v in value], None
    if isinstance(value[0], int):
        return None, [[int(t) for t in value]]
    return None, [list(v) for v in value]


async def create_embeddings(
    state: ServerState, request: Request, body: EmbeddingRequest, not_found: Callable[[str], str]
) -> Response:
    check_dimensions_range(body.dimensions)
    texts, token_lists = _inputs(body.input)
    check_count(state, len(texts if texts is not None else token_lists or []), "input")
    if texts is not None and "" in texts:
        raise APIError(400, "input must not contain empty strings", param="input")
    model = await load_model(state, body.model, not_found, task="embed")
    check_dimensions(model, body.dimensions)
    if texts is not None:
        token_lists = await tokenize(model, texts, truncate=False)
    assert token_lists is not None
    await asyncio.to_thread(check_token_ids, model, token_lists, "input")
    result = await embed(state, model, token_lists, request)
    if result is None:
        return Response(status_code=499)  # the client went away; nobody reads this
    as_base64 = body.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.num_tokens, "total_tokens": result.num_tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})
