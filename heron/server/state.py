"""Server-wide state handed to every API family's routes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.server.metrics import Metrics
    from heron.server.model_manager import ModelManager


@dataclass(slots=True)
class ServerLimits:
    """Caps on one request, each enforced as a clear 4xx."""

    max_n: int = 8
    max_tokens: int = 8192
    max_logprobs: int = 20
    max_stop_strings: int = 16
    max_body_bytes: int = 4 << 20
    max_header_bytes: int = 16 << 10
    max_waiting: int = 256  # queued requests beyond this get 503 + Retry-After
    max_embed_inputs: int = 256  # inputs in one embeddings request
    max_embed_tokens: int = 32768  # their tokens, after fitting each to the context

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class ServerState:
    models: ModelManager  # every loaded model and its engine process
    metrics: Metrics
    limits: ServerLimits = field(default_factory=ServerLimits)
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    drain_timeout_s: float = 30.0  # --shutdown-timeout: also each replica's in a rolling restart
