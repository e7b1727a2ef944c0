"""Verification of speculative drafts: keep the longest prefix the model agrees with.

A sampling row with ``k`` drafts ``d_0 .. d_{k-1}`` has ``k + 1`` logits rows: row ``j`` is
the distribution of the token after the known tokens and ``d_0 .. d_{j-1}``. Each row is
processed exactly as the plain sampler would process it once those drafts were output
(penalties, logit_bias, min_tokens, the grammar mask, temperature, top-k, top-p, min-p), so:

* greedy rows accept ``d_j`` while it is the row's argmax, then emit the argmax of the first
  row that disagrees (or of row ``k``): token for token what decoding one at a time gives;
* random rows run standard speculative rejection sampling. A proposer's draft is a point
  mass ``q = 1[d_j]``, so ``d_j`` is accepted with probability ``min(1, p/q) = p(d_j)``; on
  the first rejection the token is drawn from the residual ``norm(max(p - q, 0))``, which is
  ``p`` without ``d_j``; when every draft is accepted a bonus token is drawn from row ``k``.
  Each emitted token is then distributed exactly as ``p`` (the standard argument: accept
  ``p(d)`` plus reject-then-residual ``(1 - p(d)) * p(x) / (1 - p(d))``).

The output of a row is a *run*: its accepted drafts followed by one token of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from heron.request import Request
from heron.runner.sampler import Sampler, SamplerOutput, SamplingBatch
from heron.scheduler.output import ScheduledRequest

TokenLogprob = tuple[float, int, list[int], list[float]]


def expand(rows: Sequence[ScheduledRequest]) -> tuple[list[Request], list[list[int]]]:
    """The logits rows of ``rows``: each request once per verified position, with the
    drafts that precede that position (``k + 1`` rows for ``k`` drafts). Pure."""
    requests: list[Request] = []
    prefixes: list[list[int]] = []
    for s in rows:
        drafts = s.spec_token_ids
        for j in range(len(drafts) + 1):
            requests.append(s.request)
            prefixes.append(drafts[:j])
    return requests, prefixes


class RejectionSampler:
    """Verifies the drafts of a step's sampling rows with the plain sampler's processing."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def prepare(self, rows: Sequence[ScheduledRequest]) -> SamplingBatch:
        """Host work: the sampling batch of every verified position of ``rows``."""
        requests, prefixes = expand(rows)
        return self.sampler.prepare(requests, prefixes)

    def sample(
        self, logits: torch.Tensor, rows: Sequence[ScheduledRequest], batch: SamplingBatch
    ) -> SamplerOutput:
        """logits [sum(k_i + 1), vocab] (not modified), laid out as ``expand`` says.
        Returns an output whose ``runs[i]`` holds row ``i``'s accepted drafts and its own
        token (``token_ids[i]`` is that last token), with one logprob entry per token of
        the run when asked. Advances the requests' generators (or the sampler's)."""
        raw = torch.log_softmax(logits, dim=-1) if batch.max_logprobs >= 0 else None
        processed = self.sampler.process(logits, batch)
        greedy = processed.argmax(dim=-1).tolist()
        probs = None if batch.all_greedy else self.sampler.probs(processed, batch)
        runs: list[list[int]] = []
        residual_rows: list[tuple[int, int, int | None]] = []  # (run, logits row, draft)
        start = 0
        for i, s in enumerate(rows):
            drafts = s.spec_token_ids
            if s.request.sampling_params.greedy or probs is None:
                runs.append(_accept_greedy(drafts, greedy[start : start + len(drafts) + 1]))
            else:
                j = self._accept_random(s.request, drafts, probs[start : start + len(drafts)])
                runs.append(drafts[:j])
                residual_rows.append((i, start + j, drafts[j] if j < len(drafts) else None))
            start += len(drafts) + 1
        if residual_rows:
            assert probs is not None
            tokens = self._sample_residual(probs, residual_rows, [s.request for s in rows])
            for (i, _, _), token in zip(residual_rows, tokens, strict=True):
                runs[i].append(token)
        out = SamplerOutput([run[-1] for run in runs], [None] * len(runs))
        out.runs = runs
        if raw is not None:
            out.run_logprobs = _run_logprobs(raw, rows, runs, batch.max_logprobs)
        return out

    def _accept_random(self, request: Request, drafts: list[int], probs: torch.Tensor) -> int:
        """How many of ``drafts`` are accepted: ``d_j`` with probability ``p_j(d_j)``
        (``probs`` [k, vocab] un-normalised rows), stopping at the first rejection."""
        if not drafts:
            return 0
        index = torch.tensor(drafts, dtype=torch.long).unsqueeze(1)
        p_draft = probs.gather(1, index).squeeze(1) / probs.sum(dim=-1)
        gen = request.generator or self.sampler.default_generator
        uniform = torch.rand(len(drafts), generator=gen)
        accepted = (uniform < p_draft).tolist()
        return accepted.index(False) if False in accepted else len(drafts)

    def _sample_residual(
        self,
        probs: torch.Tensor,
        picks: list[tuple[int, int, int | None]],
        requests: list[Request],
    ) -> list[int]:
        """One token per pick from its logits row with the rejected draft (if any) removed,
        by the same exponential race as the plain sampler."""
        dist = probs[torch.tensor([row for _, row, _ in picks], dtype=torch.long)].clone()
        for n, (_, _, draft) in enumerate(picks):
            if draft is not None:
                dist[n, draft] = 0.0
        # A rejection with (numerically) no mass left can only follow p(d) ~ 1: fall back
        # to the row itself rather than draw from zeros.
        empty = dist.sum(dim=-1) <= 0
        if bool(empty.any()):
            full = probs[torch.tensor([row for _, row, _ in picks], dtype=torch.long)]
            dist = torch.where(empty.unsqueeze(1), full, dist)
        noise = torch.empty_like(dist)
        for n, (i, _, _) in enumerate(picks):
            gen = requests[i].generator or self.sampler.default_generator
            noise[n].exponential_(generator=gen)
        tokens: list[int] = (dist / noise).argmax(dim=-1).tolist()
        return tokens


def _accept_greedy(drafts: list[int], argmax: list[int]) -> list[int]:
    """Drafts while they equal the row's argmax, then the first disagreeing argmax."""
    j = 0
    while j < len(drafts) and drafts[j] == argmax[j]:
        j += 1
    return drafts[:j] + [argmax[j]]


def _run_logprobs(
    raw: torch.Tensor, rows: Sequence[ScheduledRequest], runs: list[list[int]], k: int
) -> list[list[TokenLogprob]]:
    """Raw logprobs of every token of every run, at the logits row that emitted it."""
    index: list[int] = []
    tokens: list[int] = []
    start = 0
    for s, run in zip(rows, runs, strict=True):
        index.extend(range(start, start + len(run)))
        tokens.extend(run)
        start += len(s.spec_token_ids) + 1
    picked = raw[torch.tensor(index, dtype=torch.long)]
    flat = Sampler.gather_logprobs(picked, torch.tensor(tokens, dtype=torch.long), k)
    out: list[list[TokenLogprob]] = []
    pos = 0
    for run in runs:
        out.append([lp for lp in flat[pos : pos + len(run)] if lp is not None])
        pos += len(run)
    return out
