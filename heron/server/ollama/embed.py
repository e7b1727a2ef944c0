"""Ollama's ``/api/embed`` and the older ``/api/embeddings``.

As in Ollama: ``truncate`` defaults to true (an over-long input is cut to the context,
keeping its closing special token such as BERT's ``[SEP]``; with false it is a 400); an
empty ``input`` (or ``prompt``) loads the model, sets its ``keep_alive`` and returns no
vectors; ``/api/embed`` L2-normalises every vector while ``/api/embeddings`` returns the
model's vector as it is (the same for models whose pipeline ends in ``Normalize``);
``options`` other than ``num_ctx`` do not apply to embeddings and are ignored.

Where Heron differs, on purpose: ``dimensions`` other than the model's embedding size is a
400 (Heron never shortens vectors; Ollama cuts and re-normalises them), and ``num_ctx``
above the model's context is a 400 rather than clamped.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron.server.common import APIError
from heron.server.embeddings import check_dimensions, check_dimensions_range, embed, tokenize
from heron.server.model_spec import LoadedModel
from heron.server.ollama.models import parse_keep_alive
from heron.server.ollama.options import merged_options
from heron.server.ollama.protocol import EmbeddingsRequest, EmbedRequest, Options
from heron.server.state import ServerState

logger = logging.getLogger(__name__)


def _context(options: Options | None, model: LoadedModel) -> int:
    """The context inputs are fitted to: the model's, or a lower ``num_ctx``."""
    o = merged_options(options, model)
    for key in o.model_extra or {}:
        logger.warning("invalid option provided: %s", key)
    limit = model.engine.max_model_len
    if o.num_ctx is None:
        return limit
    if not 1 <= o.num_ctx <= limit:
        raise APIError(
            400,
            f"num_ctx must be between 1 and this model's context length {limit}, got {o.num_ctx}",
            param="options.num_ctx",
        )
    return o.num_ctx


def _normalized(vectors: list[list[float]]) -> list[list[float]]:
    a = np.asarray(vectors, dtype=np.float32)  # [num_inputs, dim]
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    out: list[list[float]] = (a / np.maximum(norms, 1e-12)).tolist()
    return out


class OllamaEmbeddings:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def embed(self, req: EmbedRequest, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        check_dimensions_range(req.dimensions)
        keep_alive = parse_keep_alive(req.keep_alive)
        if isinstance(req.input, str):
            texts = [req.input] if req.input else []
        else:
            texts = list(req.input or [])
        cap = self.state.limits.max_embed_inputs
        if len(texts) > cap:
            raise APIError(
                400, f"too many inputs: {len(texts)}; at most {cap} per request are allowed"
            )
        model = await self.state.models.get(req.model, keep_alive, task="embed")
        t_loaded = time.perf_counter_ns()
        check_dimensions(model, req.dimensions)
        if not texts:
            return JSONResponse({"model": req.model, "embeddings": []})
        max_len = _context(req.options, model)
        ids = await tokenize(model, texts, req.truncate is not False, max_len)
        result = await embed(self.state, model, ids, request)
        if result is None:
            return Response(status_code=499)  # the client went away; nobody reads this
        body = {
            "model": req.model,
            "embeddings": _normalized(result.vectors),
            "total_duration": max(1, time.perf_counter_ns() - t0),
            "load_duration": max(1, t_loaded - t0),
            "prompt_eval_count": result.num_tokens,
        }
        return JSONResponse(body)

    async def embeddings(self, req: EmbeddingsRequest, request: Request) -> Response:
        keep_alive = parse_keep_alive(req.keep_alive)
        model = await self.state.models.get(req.model, keep_alive, task="embed")
        if not req.prompt:
            return JSONResponse({"embedding": []})
        max_len = _context(req.options, model)
        ids = await tokenize(model, [req.prompt], True, max_len, param="prompt")
        result = await embed(self.state, model, ids, request)
        if result is None:
            return Response(status_code=499)
        return JSONResponse({"embedding": result.vectors[0]})
