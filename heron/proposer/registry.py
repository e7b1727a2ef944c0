"""Proposers by name, imported lazily so an engine without speculation loads none."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from heron.proposer.base import Proposer, SpeculativeConfig

if TYPE_CHECKING:
    from heron.config import EngineConfig, ModelConfig

# method -> (module, class); each class is built as
# ``Cls(config, engine_config, target_config=...)`` (the target model's config: the draft
# model checks its vocabulary and sizes its KV pool from it; the others ignore it).
_PROPOSERS: dict[str, tuple[str, str]] = {
    "ngram": ("heron.proposer.ngram", "NgramProposer"),
    "suffix": ("heron.proposer.suffix", "SuffixProposer"),
    "draft": ("heron.proposer.draft", "DraftProposer"),
}


def build_proposer(
    config: SpeculativeConfig,
    engine_config: EngineConfig,
    target_config: ModelConfig | None = None,
) -> Proposer:
    """The proposer ``config.method`` names. Raises ValueError for an unknown method or one
    whose implementation is not available in this build."""
    entry = _PROPOSERS.get(config.method)
    if entry is None:
        raise ValueError(f"unknown speculative method {config.method!r}")
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValueError(
            f"speculative method {config.method!r} is not available in this build"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"speculative method {config.method!r} is not available in this build")
    return cast(Proposer, cls(config, engine_config, target_config=target_config))
