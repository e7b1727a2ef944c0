"""Speculative decoding as the front doors spell it: ``heron serve --speculative``,
``LLM(speculative_config=...)`` and the Modelfile's ``PARAMETER speculative``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from heron.proposer.base import OFF, SpeculativeConfig
from heron.proposer.base import check_speculative_option as check_speculative_option

if TYPE_CHECKING:
    from heron.config import EngineConfig

_FIELDS = {f.name for f in dataclasses.fields(SpeculativeConfig)}


def parse_speculative_option(
    value: str | None, num_speculative_tokens: int | None = None
) -> SpeculativeConfig | None:
    """``ngram`` / ``suffix`` / ``draft:MODEL`` (MODEL resolved like any model name) /
    ``none``. Raises ValueError for a bad value, FileNotFoundError for an unknown draft
    model."""
    if value is None:
        return None
    check_speculative_option(value)
    method, _, model = value.strip().partition(":")
    if method.lower() in OFF:
        return None
    k = {} if num_speculative_tokens is None else {"num_speculative_tokens": num_speculative_tokens}
    draft = None
    if model:
        from heron.store.resolve import resolve_model

        draft = resolve_model(model)
    return SpeculativeConfig(method, draft_model=draft, **k)


def speculative_from_dict(options: Mapping[str, Any]) -> SpeculativeConfig:
    """vLLM's ``speculative_config`` dict: ``{"method": "ngram", "num_speculative_tokens":
    4, ...}`` (``model`` names the draft model, as in vLLM). Raises ValueError naming an
    unknown key or a bad value."""
    fields = dict(options)
    model = fields.pop("model", None)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown speculative_config keys: {', '.join(unknown)}")
    if "method" not in fields:
        raise ValueError("speculative_config needs a 'method' (ngram, suffix or draft)")
    if model is not None:
        from heron.store.resolve import resolve_model

        fields["draft_model"] = resolve_model(str(model))
    return SpeculativeConfig(**fields)


def with_modelfile_speculation(parameters: Mapping[str, Any], config: EngineConfig) -> EngineConfig:
    """``config`` with the speculation a Modelfile's ``speculative`` and
    ``num_speculative_tokens`` parameters ask for (they win over the server's). Raises
    ValueError / FileNotFoundError for a bad value."""
    method = parameters.get("speculative")
    k = parameters.get("num_speculative_tokens")
    if method is None and k is None:
        return config
    if method is None:
        if config.speculative is None or k is None:
            return config
        spec = dataclasses.replace(config.speculative, num_speculative_tokens=k)
        return dataclasses.replace(config, speculative=spec)
    return dataclasses.replace(config, speculative=parse_speculative_option(str(method), k))
