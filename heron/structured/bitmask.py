"""The per-step token bitmask of the batch's constrained rows, and its application.

Once per step, before sampling, every constrained row's matcher writes which tokens keep
its output valid into one packed bitmask (llguidance's executor fills the rows in
parallel, outside the GIL). ``apply`` sets the other tokens' logits to -inf. Rows without
a constraint are not touched, and a batch without any pays nothing.

After sampling, the engine feeds each constrained row its token (``advance``); a matcher
that has reached the end of its grammar finishes its request. Speculative paths can take
tokens back with ``LLMatcher.rollback(n)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import llguidance
import torch

from heron.request import Request

logger = logging.getLogger(__name__)

_BITS = torch.arange(32, dtype=torch.int32)  # [32]


@dataclass(slots=True)
class GrammarMask:
    rows: torch.Tensor  # [num_constrained] int64: rows of the step's logits
    bitmask: torch.Tensor  # [num_constrained, ceil(vocab / 32)] int32, bit set = allowed


class GrammarBitmask:
    """Fills the batch's bitmask. One llguidance executor, reused every step."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._executor: llguidance.LLExecutor | None = None

    def fill(self, requests: Sequence[Request]) -> GrammarMask | None:
        """The mask of the constrained rows of ``requests`` (the step's sampling rows, in
        order), or None when no row is constrained. Reads the matchers; mutates nothing."""
        rows = [i for i, r in enumerate(requests) if r.grammar is not None]
        if not rows:
            return None
        bitmask = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        pairs = [(requests[i].grammar, j) for j, i in enumerate(rows)]
        if len(pairs) == 1:
            matcher = pairs[0][0]
            assert matcher is not None
            matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), self.words * 4)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr(
                pairs,
                bitmask.data_ptr(),
                self.words * 4,
                len(rows),
            )
        return GrammarMask(torch.tensor(rows, dtype=torch.long), bitmask)


def apply(logits: torch.Tensor, mask: GrammarMask) -> None:
    """Set the logits [num_rows, vocab] of disallowed tokens to -inf, in place."""
    vocab = logits.shape[1]
    # [k, words] -> [k, words, 32] bits -> [k, words * 32] -> the vocab's width
    allowed = ((mask.bitmask.unsqueeze(-1) >> _BITS) & 1).bool().flatten(1)[:, :vocab]
    rows = logits.index_select(0, mask.rows)
    rows.masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, mask.rows, rows)


def advance(requests: Sequence[Request], tokens: Sequence[int]) -> list[Request]:
    """Feed each constrained request its sampled token. Returns the requests whose grammar
    is complete (they are to finish with ``stop``). A token the matcher refuses (only
    possible when the mask was overridden) ends the request too, with a warning."""
    done: list[Request] = []
    for req, token in zip(requests, tokens, strict=True):
        matcher = req.grammar
        if matcher is None:
            continue
        if token in req.eos_token_ids and matcher.is_accepting():
            continue  # the EOS ends the request the usual way
        if not matcher.consume_token(token):
            logger.warning(
                "request %s: token %d breaks its grammar: %s",
                req.request_id,
                token,
                matcher.get_error(),
            )
            done.append(req)
        elif matcher.is_stopped():
            done.append(req)
    return done
