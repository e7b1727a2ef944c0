"""Batched sampling, split into host-side ``prepare`` and device-side ``sample``.

Per-row parameters are tensors, so one call handles greedy and random rows, penalties,
top-k/top-p/min-p and min_tokens together. Seeded rows draw their noise from their own
generator, so a seeded request gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from heron.request import Request
from heron.runner.prompt_logprobs import PromptChunk
from heron.structured.bitmask import GrammarBitmask, GrammarMask, apply

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplingBatch:
    temperature: torch.Tensor  # [num_rows] (0 rows are greedy)
    all_greedy: bool
    top_k: torch.Tensor | None  # [num_rows] int64, vocab size where disabled
    top_p: torch.Tensor | None  # [num_rows]
    min_p: torch.Tensor | None  # [num_rows]
    # penalties: None when no row uses any
    repetition: torch.Tensor | None  # [num_rows]
    presence: torch.Tensor | None
    frequency: torch.Tensor | None
    output_counts: torch.Tensor | None  # [num_rows, vocab] counts of generated tokens
    seen_mask: torch.Tensor | None  # [num_rows, vocab] token in prompt or output
    suppress: list[tuple[int, list[int]]]  # (row, token ids masked until min_tokens)
    bias: list[tuple[int, torch.Tensor, torch.Tensor]]  # (row, token ids, added values)
    generators: list[tuple[int, torch.Generator]]  # seeded rows
    max_logprobs: int  # largest ``logprobs`` asked for, -1 when none
    grammar: GrammarMask | None = None  # constrained rows' allowed tokens (structured outputs)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    # per row: (sampled logprob, sampled rank, top ids, top logprobs) or None
    logprobs: list[tuple[float, int, list[int], list[float]] | None]
    # the step's prompt scores (SamplingParams.prompt_logprobs), set by the runner; these
    # come from prefill rows, sampled or not
    prompt_logprobs: list[tuple[Request, PromptChunk]] = field(default_factory=list)
    # A step that verified speculative drafts (heron/runner/rejection.py): per row, its
    # accepted drafts then its own token (``token_ids`` holds that last one), and the
    # logprobs of each token of the run when asked. None on a plain step.
    runs: list[list[int]] | None = None
    run_logprobs: list[list[tuple[float, int, list[int], list[float]]]] | None = None


class Sampler:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.default_generator = torch.Generator()
        self.grammar_bitmask = GrammarBitmask(vocab_size)

    def seed(self, seed: int) -> None:
        self.default_generator.manual_seed(seed)

    def prepare(
        self, requests: list[Request], prefixes: Sequence[Sequence[int]] | None = None
    ) -> SamplingBatch:
        """Host work, once per step: turn each row's request into batch tensors.

        ``prefixes[i]`` (speculative verification) are tokens row ``i`` counts as generated
        after its request's output: penalties, min_tokens and the grammar mask see the row
        exactly as the sampler would once those tokens were appended. Mutates nothing."""
        if prefixes is None:
            prefixes = [()] * len(requests)
        params = [r.sampling_params for r in requests]
        n, vocab = len(requests), self.vocab_size
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
        all_greedy = all(p.greedy for p in params)
        top_k = top_p = min_p = None
        if any(p.top_k > 0 for p in params if not p.greedy):
            top_k = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params])
        if any(p.top_p < 1.0 for p in params if not p.greedy):
            top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
        if any(p.min_p > 0.0 for p in params if not p.greedy):
            min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32)
        repetition = presence = frequency = counts = seen = None
        if any(p.needs_penalties for p in params):
            repetition = torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32)
            presence = torch.tensor([p.presence_penalty for p in params], dtype=torch.float32)
            frequency = torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32)
            counts = torch.zeros(n, vocab, dtype=torch.float32)
            seen = torch.zeros(n, vocab, dtype=torch.bool)
            for i, r in enumerate(requests):
                if not r.sampling_params.needs_penalties:
                    continue
                extra = list(prefixes[i])
                out = torch.tensor(r.output_token_ids + extra, dtype=torch.long)
                counts[i].index_add_(0, out, torch.ones(len(out)))
                seen[i, torch.tensor(r.all_token_ids + extra, dtype=torch.long)] = True
        suppress = []
        for i, r in enumerate(requests):
            p = r.sampling_params
            if r.num_output_tokens + len(prefixes[i]) < p.min_tokens:
                ids = list(p.stop_token_ids) + ([] if p.ignore_eos else list(r.eos_token_ids))
                if ids:
                    suppress.append((i, ids))
        bias = [
            (
                i,
                torch.tensor(list(p.logit_bias), dtype=torch.long),
                torch.tensor(list(p.logit_bias.values()), dtype=torch.float32),
            )
            for i, p in enumerate(params)
            if p.logit_bias
        ]
        generators = [(i, r.generator) for i, r in enumerate(requests) if r.generator is not None]
        max_logprobs = max((p.logprobs for p in params if p.logprobs is not None), default=-1)
        return SamplingBatch(
            temperature,
            all_greedy,
            top_k,
            top_p,
            min_p,
            repetition,
            presence,
            frequency,
            counts,
            seen,
            suppress,
            bias,
            generators,
            max_logprobs,
            self.grammar_bitmask.fill(requests, prefixes),
        )

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """logits [num_rows, vocab] fp32 (not modified). Returns one token per row."""
        raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.max_logprobs >= 0 else None
        logits = self.process(logits, batch)
        greedy_tokens = logits.argmax(dim=-1)
        if batch.all_greedy:
            tokens = greedy_tokens
        else:
            tokens = torch.where(
                batch.temperature == 0, greedy_tokens, self._sample_random(logits, batch)
            )
        token_list = tokens.tolist()
        logprobs: list[tuple[float, int, list[int], list[float]] | None] = [None] * len(token_list)
        if raw_logprobs is not None:
            logprobs = self.gather_logprobs(raw_logprobs, tokens, batch.max_logprobs)
        return SamplerOutput(token_list, logprobs)

    @staticmethod
    def process(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """A copy of logits [num_rows, vocab] with penalties, logit_bias, min_tokens and
        the grammar mask applied: a greedy row's token is its argmax."""
        logits = logits.clone()
        if batch.repetition is not None:
            assert batch.seen_mask is not None and batch.output_counts is not None
            rep = batch.repetition.unsqueeze(1)
            penalised = torch.where(logits > 0, logits / rep, logits * rep)
            logits = torch.where(batch.seen_mask, penalised, logits)
            logits -= batch.frequency.unsqueeze(1) * batch.output_counts  # type: ignore[union-attr]
            logits -= batch.presence.unsqueeze(1) * (batch.output_counts > 0)  # type: ignore[union-attr]
        for row, bias_ids, values in batch.bias:
            logits[row].index_add_(0, bias_ids, values)
        for row, ids in batch.suppress:
            logits[row, ids] = _NEG_INF
        if batch.grammar is not None:
            apply(logits, batch.grammar)
        return logits

    def _sample_random(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        probs = self.probs(logits, batch)
        # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p.
        noise = torch.empty_like(probs).exponential_(generator=self.default_generator)
        for row, gen in batch.generators:
            noise[row].exponential_(generator=gen)
        return (probs / noise).argmax(dim=-1)

    @staticmethod
    def probs(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The distribution a random row samples from, given its ``process``ed logits:
        temperature, top-k, top-p, then min-p. Rows are not renormalised after min-p (the
        tokens it drops get 0); a greedy row is treated as temperature 1."""
        temp = torch.where(batch.temperature == 0, 1.0, batch.temperature).unsqueeze(1)
        logits = logits / temp
        if batch.top_k is not None or batch.top_p is not None:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
            if batch.top_k is not None:
                ranks = torch.arange(logits.shape[-1]).unsqueeze(0)
                drop |= ranks >= batch.top_k.unsqueeze(1)
            if batch.top_p is not None:
                probs_sorted = sorted_logits.masked_fill(drop, _NEG_INF).softmax(dim=-1)
                # Drop a token when the mass before it already reaches top_p (keeps the first).
                mass_before = probs_sorted.cumsum(dim=-1) - probs_sorted
                drop |= mass_before >= batch.top_p.unsqueeze(1)
            sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
            logits = torch.full_like(logits, _NEG_INF).scatter(-1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        if batch.min_p is not None:
            threshold = batch.min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
            probs = probs.masked_fill(probs < threshold, 0.0)
        return probs

    @staticmethod
    def gather_logprobs(
        logprobs: torch.Tensor, tokens: torch.Tensor, k: int
    ) -> list[tuple[float, int, list[int], list[float]] | None]:
        chosen = logprobs.gather(1, tokens.unsqueeze(1))  # [rows, 1]
        ranks = (logprobs > chosen).sum(dim=1) + 1
        top_vals, top_ids = logprobs.topk(max(k, 1), dim=-1)
        chosen_l, ranks_l = chosen.squeeze(1).tolist(), ranks.tolist()
        ids_l, vals_l = top_ids[:, :k].tolist(), top_vals[:, :k].tolist()
        return [(chosen_l[i], ranks_l[i], ids_l[i], vals_l[i]) for i in range(len(chosen_l))]
