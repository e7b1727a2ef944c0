"""The ``suffix`` proposer: guesses from what this request and recent requests already said.

Each running request has a suffix automaton over its prompt and output, extended by the
tokens appended since its last step (never rebuilt per step). Finished requests' outputs go
into a shared index of recent outputs. To propose, each index gives the longest suffix of
the request's context that it has seen, and from there walks the most frequent continuation
while its empirical probability stays above ``min_token_prob``, for up to ``spec_factor``
times the match length (a long match earns a long guess). The guess with the most expected
accepted tokens wins. Repetitive text (agent loops, code edits, quoting) gets long guesses;
novel text gets none.

Memory is bounded: a request's automaton covers at most its last ``max_request_tokens``
tokens, and recent outputs at most ``max_cached_requests`` outputs and ``max_cached_tokens``
tokens, kept as two generations: new outputs join the young one; when it is full the old one
is dropped and the young one takes its place, so the most recent outputs always stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil
from typing import TYPE_CHECKING

from heron.proposer.suffix_index import Match, SuffixAutomaton

if TYPE_CHECKING:
    from heron.config import EngineConfig, ModelConfig
    from heron.proposer.base import SpeculativeConfig
    from heron.request import Request


@dataclass(slots=True, frozen=True)
class SuffixParams:
    """Tuning of the ``suffix`` proposer (the minimum match length is the speculative
    config's ``prompt_lookup_min``)."""

    min_token_prob: float = 0.1  # stop once the guess's cumulative probability falls below
    spec_factor: float = 1.0  # guess at most this many tokens per matched token
    max_match_len: int = 32  # context tokens looked up in recent outputs
    max_request_tokens: int = 16384
    max_cached_requests: int = 64
    max_cached_tokens: int = 65536

    def __post_init__(self) -> None:
        if not 0.0 < self.min_token_prob <= 1.0:
            raise ValueError(f"min_token_prob must be in (0, 1], got {self.min_token_prob}")
        if self.spec_factor <= 0:
            raise ValueError(f"spec_factor must be positive, got {self.spec_factor}")
        for name in ("max_match_len", "max_request_tokens", "max_cached_tokens"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2")
        if self.max_cached_requests < 2:
            raise ValueError("max_cached_requests must be at least 2")


class RequestIndex:
    """The automaton of one request's tokens, fed incrementally."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.automaton = SuffixAutomaton()
        self.num_fed = 0  # tokens of the request seen so far

    def sync(self, tokens: Sequence[int]) -> None:
        """Feed the tokens appended since the last call. Mutates the automaton; when it
        would pass ``max_tokens`` it restarts from the last ``max_tokens // 2`` tokens (so a
        restart's cost is paid for by as many appended tokens: amortized O(1) per token)."""
        n = len(tokens)
        if n < self.num_fed:  # not the sequence it was fed: start over
            self.automaton, self.num_fed = SuffixAutomaton(), 0
        if self.automaton.num_tokens + n - self.num_fed > self.max_tokens:
            keep = min(n, self.max_tokens // 2)
            self.automaton, self.num_fed = SuffixAutomaton(), n - keep
        extend = self.automaton.extend
        for i in range(self.num_fed, n):
            extend(tokens[i])
        self.num_fed = n


class RecentOutputs:
    """Outputs of recently finished requests, in two generations of automata. Each output
    ends with its own separator token (a negative id), so no match or guess crosses from one
    output into the next. Outputs are indexed lazily, in arrival order, when the automata
    are next read (or once ``max_requests`` wait): a busy engine where nobody speculates
    never pays for indexing per finished request."""

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests // 2  # per generation
        self.max_tokens = max_tokens // 2
        self.young = SuffixAutomaton()
        self.old: SuffixAutomaton | None = None
        self.num_young_requests = 0
        self.num_added = 0
        self.pending: list[list[int]] = []  # finished outputs not indexed yet, oldest first

    @property
    def num_tokens(self) -> int:
        """Tokens held, separators included (indexes what is pending first)."""
        self._flush()
        return self.young.num_tokens + (self.old.num_tokens if self.old else 0)

    def add(self, output_token_ids: Sequence[int]) -> None:
        """Queue one finished output (its last ``max_tokens - 1`` tokens when longer) for
        indexing. Mutates ``pending``; indexes the queue when it holds a generation."""
        tokens = list(output_token_ids[-(self.max_tokens - 1) :])
        if not tokens:
            return
        self.pending.append(tokens)
        if len(self.pending) >= self.max_requests:
            self._flush()

    def _flush(self) -> None:
        """Index the pending outputs in order: each joins the young generation, first
        rotating the generations if it is full. Mutates the automata and ``pending``."""
        pending, self.pending = self.pending, []
        for tokens in pending:
            full_requests = self.num_young_requests >= self.max_requests
            if full_requests or self.young.num_tokens + len(tokens) + 1 > self.max_tokens:
                self.old, self.young, self.num_young_requests = self.young, SuffixAutomaton(), 0
            self.num_added += 1
            extend = self.young.extend
            for token in tokens:
                extend(token)
            extend(-self.num_added)
            self.num_young_requests += 1

    def automata(self) -> list[SuffixAutomaton]:
        """The generations, youngest first (indexes what is pending first)."""
        self._flush()
        return [self.young] if self.old is None else [self.young, self.old]


class SuffixProposer:
    """Proposes each request's most likely continuation from suffix matches (see the
    module docstring)."""

    def __init__(
        self,
        config: SpeculativeConfig,
        engine_config: EngineConfig | None = None,
        target_config: ModelConfig | None = None,
        *,
        params: SuffixParams | None = None,
    ) -> None:
        """``engine_config`` and ``target_config`` (the target model's) are accepted for the
        registry's sake; the suffix index needs neither."""
        self.params = params or SuffixParams()
        self.min_match_len = config.prompt_lookup_min
        self.requests: dict[str, RequestIndex] = {}
        self.recent = RecentOutputs(self.params.max_cached_requests, self.params.max_cached_tokens)

    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        """Guesses for each request, at most ``max_k[i]`` tokens each. Mutates only this
        proposer's indexes (each request's is brought up to date); the requests are read."""
        return [self._propose_one(r, k) for r, k in zip(requests, max_k, strict=True)]

    def on_finished(self, request: Request) -> None:
        """Drop the request's index; its output joins the recent outputs."""
        self.requests.pop(request.request_id, None)
        self.recent.add(request.output_token_ids)

    def _propose_one(self, request: Request, max_k: int) -> list[int]:
        index = self.requests.get(request.request_id)
        if index is None:
            index = self.requests[request.request_id] = RequestIndex(self.params.max_request_tokens)
        index.sync(request.all_token_ids)
        if max_k <= 0:
            return []
        own = index.automaton
        candidates: list[tuple[SuffixAutomaton, Match]] = [(own, own.repeated_suffix())]
        context = request.all_token_ids[-self.params.max_match_len :]
        for automaton in self.recent.automata():
            candidates.append((automaton, automaton.longest_suffix(context)))
        best: list[int] = []
        best_score = 0.0
        for automaton, match in candidates:
            if match.length < self.min_match_len:
                continue
            limit = min(max_k, ceil(self.params.spec_factor * match.length))
            tokens, probs = automaton.walk(match.state, limit, self.params.min_token_prob)
            score = sum(probs)  # expected number of accepted tokens
            if score > best_score:
                best, best_score = tokens, score
        return best
