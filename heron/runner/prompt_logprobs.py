"""Prompt logprobs: the logprob of each prompt token under the logits of the position before it.

Only requests that ask (``SamplingParams.prompt_logprobs``) pay for it, and only while their
prompt is being computed: the plan is built in ``prepare_inputs`` with the other host work,
and the scoring runs after the forward on the hidden rows it names, in fixed-size slices (a
2,048-token chunk times a 49k vocabulary would be 400 MB of logits at once).

A chunk covering positions ``[start, start + n)`` scores prompt tokens ``start + 1`` up to
``start + n`` (the last prompt position predicts the first output token, which the sampler
handles), so the last position of one chunk scores the first token of the next:

    prompt      | t0 t1 t2 t3 | t4 t5 t6 |      (two chunks)
    chunk 1 scores t1 t2 t3 t4, chunk 2 scores t5 t6
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from heron.request import Request
from heron.scheduler.output import ScheduledRequest

ROWS_PER_SLICE = 128


@dataclass(slots=True)
class PromptChunk:
    """The scores of consecutive prompt tokens of one request, columnar: entry ``i`` is prompt
    token ``start + 1 + i``, its logprob, its rank (1 = most likely) and the ``max_k`` most
    likely tokens at that position (the core cuts them to the request's own k)."""

    start: int
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclass(slots=True)
class PromptLogprobsPlan:
    """Which rows of the step's flat tokens score which prompt tokens."""

    rows: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    segments: list[tuple[Request, int, int]] = field(default_factory=list)  # (req, start, n)
    max_k: int = 0

    def add(self, s: ScheduledRequest, first_row: int) -> None:
        """Plan the prompt positions of ``s`` (whose tokens start at flat row ``first_row``)
        not scored yet. Mutates the plan only."""
        req = s.request
        k = req.sampling_params.prompt_logprobs
        if k is None or not req.needs_prompt_logprobs:
            return
        start = max(s.num_computed_tokens, req.num_prompt_logprobs)
        end = min(s.num_computed_tokens + s.num_scheduled_tokens, req.num_prompt_tokens - 1)
        if end <= start:
            return
        offset = first_row - s.num_computed_tokens
        self.rows.append(np.arange(start + offset, end + offset, dtype=np.int64))
        self.targets.append(np.asarray(req.prompt_token_ids[start + 1 : end + 1], dtype=np.int64))
        self.segments.append((req, start, end - start))
        self.max_k = max(self.max_k, k)

    def score(
        self, hidden: torch.Tensor, compute_logits: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[tuple[Request, PromptChunk]]:
        """Score the planned positions from ``hidden`` [num_tokens, hidden_size] with
        ``compute_logits`` (hidden rows -> fp32 logits). Pure; returns one chunk per request."""
        if not self.segments:
            return []
        rows = torch.from_numpy(np.concatenate(self.rows))
        targets = torch.from_numpy(np.concatenate(self.targets))
        chosen, ranks, top_vals, top_ids = [], [], [], []
        for lo in range(0, rows.numel(), ROWS_PER_SLICE):
            part = slice(lo, lo + ROWS_PER_SLICE)
            logprobs = torch.log_softmax(compute_logits(hidden.index_select(0, rows[part])), -1)
            c = logprobs.gather(1, targets[part].unsqueeze(1))  # [rows, 1]
            chosen.append(c.squeeze(1))
            ranks.append((logprobs > c).sum(dim=1) + 1)
            if self.max_k:
                vals, ids = logprobs.topk(self.max_k, dim=-1)
                top_vals.append(vals)
                top_ids.append(ids)
        chosen_l = torch.cat(chosen).tolist()
        ranks_l = torch.cat(ranks).tolist()
        n = len(chosen_l)
        ids_l = torch.cat(top_ids).tolist() if top_ids else [[] for _ in range(n)]
        vals_l = torch.cat(top_vals).tolist() if top_vals else [[] for _ in range(n)]
        out, at = [], 0
        for req, start, count in self.segments:
            span = slice(at, at + count)
            out.append(
                (req, PromptChunk(start, chosen_l[span], ranks_l[span], ids_l[span], vals_l[span]))
            )
            at += count
        return out
