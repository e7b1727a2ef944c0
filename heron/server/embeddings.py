"""Embedding requests, shared by the OpenAI and Ollama routes.

A request runs as: check ``dimensions`` and the number of inputs -> load the model (a 400 if
it is not an embedding model) -> tokenize off the event loop and fit each input to the
context (cut, or a 400 when truncation is off) -> check the total tokens -> one ``embed``
call to the model's engine process, which batches it with every other embed request queued
there.

Tokenizing runs in a thread through the tokenizers library's batch call, which lets go of
the GIL while it works: its one-text call keeps the GIL, so a thread alone would still hold
the event loop (a 4 MB input: about 8 s without an answer, even to /health).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request

from heron.engine.protocol import EngineRequestError
from heron.server.common import APIError, until_disconnected
from heron.server.model_spec import LoadedModel
from heron.server.state import ServerState
from heron.tokenizer.fit import fit_to_context, special_suffix_len


@dataclass(slots=True)
class Embedded:
    vectors: list[list[float]]
    num_tokens: int  # tokens embedded, after fitting to the context


def embedding_dim(model: LoadedModel) -> int:
    dim = model.engine.embedding_dim
    assert dim is not None, "an embedding model always knows its dimension"
    return dim


# No embedding model has more; a larger ``dimensions`` is refused before any model loads.
MAX_DIMENSIONS = 1 << 16


def check_dimensions_range(dimensions: int | None, param: str = "dimensions") -> None:
    """The cheap check, before the model is loaded: a size some model could have."""
    if dimensions is not None and not 1 <= dimensions <= MAX_DIMENSIONS:
        raise APIError(
            400, f"dimensions must be in [1, {MAX_DIMENSIONS}], got {dimensions}", param=param
        )


def check_dimensions(model: LoadedModel, dimensions: int | None, param: str = "dimensions") -> None:
    """Vectors are never shortened: ``dimensions`` must be the model's own, if given."""
    dim = embedding_dim(model)
    if dimensions is not None and dimensions != dim:
        raise APIError(
            400,
            f"dimensions must be this model's embedding size {dim}, got {dimensions}",
            param=param,
        )


def check_count(state: ServerState, count: int, param: str) -> None:
    if count == 0:
        raise APIError(400, "input must not be empty", param=param)
    cap = state.limits.max_embed_inputs
    if count > cap:
        raise APIError(
            400, f"too many inputs: {count}; at most {cap} per request are allowed", param=param
        )


def _suffix_len(model: LoadedModel) -> int:
    n = model.cache.get("embed.suffix_len")
    if n is None:
        n = model.cache["embed.suffix_len"] = special_suffix_len(model.engine.tokenizer)
    assert isinstance(n, int)
    return n


def _leading_space(model: LoadedModel) -> str:
    """What ``Tokenizer.encode`` puts before a text that starts with a space ("" or " ",
    which some SentencePiece vocabularies need), found once per model by comparing it with
    the backend's own encoding."""
    lead = model.cache.get("embed.leading_space")
    if lead is None:
        tokenizer = model.engine.tokenizer
        ids = tokenizer.encode(" a", add_special_tokens=False)
        plain = list(tokenizer.backend.encode(" a", add_special_tokens=False).ids)
        lead = model.cache["embed.leading_space"] = "" if ids == plain else " "
    assert isinstance(lead, str)
    return lead


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be tokenized
        raise ValueError(f"text is not valid Unicode: {exc.reason}") from None


async def tokenize(
    model: LoadedModel,
    texts: Sequence[str],
    truncate: bool,
    max_len: int | None = None,
    param: str = "input",
) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's special tokens), fitted to ``max_len``
    (default: the model's context). Runs in a thread. Over-long input without truncation, or
    text that cannot be tokenized, is a 400."""
    tokenizer = model.engine.tokenizer
    limit = max_len or model.engine.max_model_len
    suffix = _suffix_len(model)
    lead = _leading_space(model)

    def run() -> list[list[int]]:
        for t in texts:
            _check_unicode(t)
        # Tokenizer.encode's ids: a text with a leading space gets ``lead`` before it.
        prepared = [lead + t if t.startswith(" ") else t for t in texts]
        encodings = tokenizer.backend.encode_batch(prepared, add_special_tokens=True)
        return [fit_to_context(list(e.ids), limit, truncate, suffix) for e in encodings]

    try:
        return await asyncio.to_thread(run)
    except ValueError as exc:
        kind = "context_length" if "context length" in str(exc) else "invalid_request"
        raise APIError(400, str(exc), kind, param=param) from None


def check_token_ids(model: LoadedModel, inputs: Sequence[Sequence[int]], param: str) -> None:
    """Token-id inputs as given: non-empty, in the vocabulary, within the context."""
    vocab = model.engine.model_config.vocab_size
    limit = model.engine.max_model_len
    for i, ids in enumerate(inputs):
        if not ids:
            raise APIError(400, f"input {i} is empty", param=param)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"token ids must be in [0, {vocab})", param=param)
        if len(ids) > limit:
            raise APIError(
                400,
                f"input {i} has {len(ids)} tokens, above this model's context length {limit}",
                "context_length",
                param=param,
            )


async def embed(
    state: ServerState, model: LoadedModel, inputs: list[list[int]], request: Request
) -> Embedded | None:
    """Embed fitted token-id inputs; 400 beyond the token cap, 500 if the engine fails.
    None when the client went away first (the request is withdrawn; nobody reads a reply)."""
    total = sum(len(ids) for ids in inputs)
    cap = state.limits.max_embed_tokens
    if total > cap:
        raise APIError(
            400, f"too many tokens: {total}; at most {cap} per request are allowed", param="input"
        )
    started = time.monotonic()
    try:
        vectors = await until_disconnected(request, model.engine.embed(inputs))
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the handler itself is being cancelled, not just the work
        return None
    except EngineRequestError as exc:
        raise APIError(500, str(exc), "server_error") from None
    except ValueError as exc:  # the engine rejected the input
        raise APIError(400, str(exc), param="input") from None
    state.metrics.observe_request(
        model_name=model.name,
        prompt_tokens=total,
        generation_tokens=0,
        ttft_s=None,
        itl_s=[],
        e2e_s=time.monotonic() - started,
        finish_reason="stop",
    )
    return Embedded(vectors, total)
