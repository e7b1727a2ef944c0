"""The engine core's side of prompt logprobs: the runner's per-chunk scores are gathered here
until the request's first output, which carries them once (``EngineCoreOutput.prompt_logprobs``).
"""

from __future__ import annotations

from collections.abc import Iterable

from heron.engine.protocol import PromptLogprobs
from heron.request import Request
from heron.runner.prompt_logprobs import PromptChunk


class PromptLogprobsCollector:
    """Scores of the requests whose prompt is still being computed, keyed by request id."""

    def __init__(self) -> None:
        self._parts: dict[str, PromptLogprobs] = {}

    def __len__(self) -> int:
        return len(self._parts)

    def add(self, chunks: Iterable[tuple[Request, PromptChunk]]) -> None:
        """Append each chunk to its request's scores, cut to the request's own k. Mutates
        ``Request.num_prompt_logprobs`` (so that a recompute scores nothing twice)."""
        for req, chunk in chunks:
            if chunk.start != req.num_prompt_logprobs:
                raise RuntimeError(
                    f"prompt logprobs of {req.request_id!r} out of order: got position "
                    f"{chunk.start}, expected {req.num_prompt_logprobs}"
                )
            k = req.sampling_params.prompt_logprobs or 0
            parts = self._parts.setdefault(req.request_id, PromptLogprobs([], [], [], []))
            parts.logprobs.extend(chunk.logprobs)
            parts.ranks.extend(chunk.ranks)
            parts.top_ids.extend(ids[:k] for ids in chunk.top_ids)
            parts.top_logprobs.extend(vals[:k] for vals in chunk.top_logprobs)
            req.num_prompt_logprobs += len(chunk.logprobs)

    def take(self, req: Request, first_output: bool) -> PromptLogprobs | None:
        """The scores to send with ``req``'s output this step: all of them on its first
        output (``first_output``: it had no output tokens before this step; empty lists for a
        one-token prompt) when it asked, else None. Forgets them."""
        if req.sampling_params.prompt_logprobs is None or not first_output:
            return None
        return self._parts.pop(req.request_id, None) or PromptLogprobs([], [], [], [])

    def drop(self, request_ids: Iterable[str]) -> None:
        """Forget the scores of requests that ended before their first output."""
        for rid in request_ids:
            self._parts.pop(rid, None)
