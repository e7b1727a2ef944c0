"""The proposer interface and the speculative-decoding configuration.

A proposer guesses up to ``k`` next tokens of each running request; the engine schedules the
guesses as tokens to compute, verifies them in the same forward pass that decodes the
request, and keeps the longest accepted prefix (plus one token of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from heron.request import Request

SPECULATIVE_METHODS = ("ngram", "suffix", "draft")
OFF = ("", "none", "off")


def check_speculative_option(value: str) -> None:
    """Raise ValueError unless ``value`` is ``ngram``, ``suffix``, ``draft:MODEL`` or
    ``none`` (syntax only: the draft model is not looked up). Here, not in ``options``,
    because the store's Modelfile parser checks it and ``options`` resolves model names
    through the store."""
    method, _, model = value.strip().partition(":")
    if method.lower() in OFF and not model:
        return
    if method not in SPECULATIVE_METHODS or (method == "draft") != bool(model):
        raise ValueError(
            f"speculative must be ngram, suffix, draft:MODEL or none, got {value[:80]!r}"
        )


# A verified step computes 1 + k tokens per request: beyond this the forward stops being
# memory-bound and a rejected guess costs real compute.
MAX_SPECULATIVE_TOKENS = 16
# The most drafts per request and step when none is given. ``suffix`` guesses only as far as
# its match is long, and the adaptive rule asks for long guesses only at high acceptance, so
# it can afford a higher cap: on the copy-edit workload 8 ran 7-14% faster than 4 (A/B in
# one process, three runs), with quoting and open chat unchanged within noise.
DEFAULT_SPECULATIVE_TOKENS = {"ngram": 4, "suffix": 8, "draft": 4}


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        """Draft token ids for each request, at most ``max_k[i]`` for ``requests[i]`` (an
        empty list proposes nothing). Must not mutate the requests."""
        ...

    def on_finished(self, request: Request) -> None:
        """``request`` finished (or was aborted); a proposer may keep its output (suffix)
        or free what it held for it (draft)."""
        ...


@dataclass(slots=True, frozen=True)
class SpeculativeConfig:
    """Which proposer guesses, and how much.

    ``num_speculative_tokens`` is the most drafts one request verifies in a step (the
    adaptive rule may use fewer); None takes the method's ``DEFAULT_SPECULATIVE_TOKENS``, so
    after construction it is always an int (``max_drafts``). ``prompt_lookup_min``/``prompt_lookup_max`` bound the n of
    the n-gram matched by ``ngram``. ``draft_model`` is the resolved path of the draft
    model for ``draft``.
    """

    method: str
    num_speculative_tokens: int | None = None
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 5
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(
                f"unknown speculative method {self.method!r}; use one of "
                f"{', '.join(SPECULATIVE_METHODS)}"
            )
        k = self.num_speculative_tokens
        if k is None:
            k = DEFAULT_SPECULATIVE_TOKENS[self.method]
            object.__setattr__(self, "num_speculative_tokens", k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"num_speculative_tokens must be an integer in [1, {MAX_SPECULATIVE_TOKENS}], "
                f"got {k!r}"
            )
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(
                f"prompt_lookup_min and prompt_lookup_max must satisfy "
                f"1 <= min <= max, got {lo!r} and {hi!r}"
            )
        if self.method == "draft" and not self.draft_model:
            raise ValueError("speculative method 'draft' needs a draft_model")
        if self.method != "draft" and self.draft_model is not None:
            raise ValueError(f"draft_model is only for method 'draft', not {self.method!r}")

    @property
    def max_drafts(self) -> int:
        """``num_speculative_tokens``, resolved (never None after construction)."""
        k = self.num_speculative_tokens
        assert k is not None
        return k
