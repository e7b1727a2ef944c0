"""vLLM's adapter routes: ``POST /v1/load_lora_adapter`` {"lora_name", "lora_path"} and
``POST /v1/unload_lora_adapter`` {"lora_name"}, on the command line's model.

Both sit behind the API key like every route, and answer 403 unless the operator allowed a
directory (``--lora-dir``): only adapters under one are read. A load checks the adapter against
the base model before registering it, so a bad adapter (400) changes nothing.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from heron.config import ModelConfig
from heron.server.adapters import check_adapter, disabled_error
from heron.server.common import APIError
from heron.server.openai.protocol import _Request
from heron.server.state import ServerState
from heron.store.adapters import MAX_ADAPTER_RANK


class LoadLoRAAdapterRequest(_Request):
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(_Request):
    lora_name: str


async def load_adapter(state: ServerState, body: LoadLoRAAdapterRequest) -> PlainTextResponse:
    """Check and register the adapter. Raises APIError: 403 (disabled, path not allowed),
    400 (bad name or path, name taken, an adapter that does not fit the base model)."""
    models = state.models
    registry = models.adapters
    if not registry.dynamic:
        raise disabled_error()
    name = body.lora_name
    registry.check_new(name, models.pinned)
    path = registry.allowed_path(body.lora_path)
    lora = models.engine_config.lora
    max_rank = lora.max_lora_rank if lora is not None else MAX_ADAPTER_RANK
    held = lora.held_dtype if lora is not None else "float16"
    try:
        config = await _base_config(state)
        rank = await asyncio.to_thread(check_adapter, path, config, max_rank, held)
    except (OSError, ValueError) as exc:
        raise APIError(400, f"invalid LoRA adapter '{name}': {exc}", param="lora_path") from None
    registry.check_new(name, models.pinned)  # a load running alongside may have taken it
    registry.add(name, path, rank)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_adapter(state: ServerState, body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
    """Unregister the adapter; requests running with it finish. Raises APIError 403
    (disabled) or 404 (no such adapter)."""
    registry = state.models.adapters
    if not registry.dynamic:
        raise disabled_error()
    registry.remove(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def _base_config(state: ServerState) -> ModelConfig:
    """The command line's model's config: from its engine, else from its checkpoint."""
    loaded = state.models.pinned_model
    if loaded is not None:
        return loaded.engine.model_config
    pinned = state.models.pinned
    if pinned is None:  # check_new refused this already
        raise APIError(400, "LoRA adapters need a model on the command line")
    from heron.loader import load_checkpoint

    checkpoint = await asyncio.to_thread(load_checkpoint, pinned.path)
    return checkpoint.config


def register(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/load_lora_adapter", response_class=PlainTextResponse, tags=["openai"])
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        """Serve a LoRA adapter (under a --lora-dir directory) as the model ``lora_name``."""
        return await load_adapter(state, body)

    @app.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, tags=["openai"])
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        """Stop serving the LoRA adapter ``lora_name``."""
        return await unload_adapter(state, body)
