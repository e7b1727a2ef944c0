"""Prompt lookup: propose what followed the last time the text's ending appeared.

For each request, the last ``n`` tokens (``n`` from ``prompt_lookup_max`` down to
``prompt_lookup_min``) are searched for in its prompt and output so far; the tokens after
the most recent earlier occurrence are the drafts:

    tokens:  ... a b c d e ... x a b c | (now)       last 3 tokens "a b c"
                   ^^^^^ match, followed by "d e ..."  -> drafts d e ...

Copy-heavy work (editing a given file, quoting, repeating an earlier turn) continues
earlier text for long stretches, and each accepted draft saves a decode step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from heron.proposer.base import SpeculativeConfig

if TYPE_CHECKING:
    from heron.config import EngineConfig, ModelConfig
    from heron.request import Request


def lookup(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest
    suffix of ``tokens`` (``min_n <= n <= max_n`` tokens) found in it; [] when none. Pure.

    Vectorised: for every end position ``e`` (the match would be ``tokens[e - n : e]`` and
    its continuation ``tokens[e:]``), the match length is the number of leading trues of
    ``tokens[e - j] == tokens[L - j]`` for ``j = 1 .. max_n``.
    """
    length = len(tokens)
    if k <= 0 or length <= min_n:
        return []
    max_n = min(max_n, length - 1)
    ends = np.arange(1, length)  # a continuation is never empty: e <= L - 1
    match_len = np.zeros(length - 1, dtype=np.int64)
    alive = np.ones(length - 1, dtype=bool)
    for j in range(1, max_n + 1):
        valid = ends - j >= 0
        same = np.zeros(length - 1, dtype=bool)
        same[valid] = tokens[ends[valid] - j] == tokens[length - j]
        alive &= same
        if not alive.any():
            break
        match_len += alive
    best = int(match_len.max())
    if best < min_n:
        return []
    end = int(ends[np.flatnonzero(match_len == best)[-1]])
    out: list[int] = tokens[end : end + k].tolist()
    return out


class NgramProposer:
    """The ``ngram`` method. Stateless: it reads each request's tokens."""

    def __init__(
        self,
        config: SpeculativeConfig,
        engine_config: EngineConfig,
        target_config: ModelConfig | None = None,  # not needed: prompt lookup has no model
    ) -> None:
        self.min_n = config.prompt_lookup_min
        self.max_n = config.prompt_lookup_max

    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        """Drafts per request (see ``lookup``); mutates nothing."""
        return [
            lookup(np.asarray(r.all_token_ids, dtype=np.int64), self.min_n, self.max_n, k)
            for r, k in zip(requests, max_k, strict=True)
        ]

    def on_finished(self, request: Request) -> None:
        """Nothing is kept per request."""
