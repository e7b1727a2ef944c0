"""The per-step token bitmask of the batch's constrained rows, and its application.

Once per step, before the forward pass, every constrained row's matcher writes which
tokens keep its output valid into one packed bitmask. ``apply`` sets the other tokens'
logits to -inf. Rows without a constraint are not touched, and a batch without any pays
nothing.

After sampling, the engine feeds each constrained row its token (``advance``); a matcher
that has reached the end of its grammar finishes its request. Speculative paths can take
tokens back with ``LLMatcher.rollback(n)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from heron.request import Request

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class GrammarMask:
    rows: torch.Tensor  # [num_constrained] int64: rows of the step's logits
    bitmask: torch.Tensor  # [num_constrained, ceil(vocab / 32)] int32, bit set = allowed


class GrammarBitmask:
    """Fills the batch's bitmask."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32

    def fill(
        self, requests: Sequence[Request], prefixes: Sequence[Sequence[int]] | None = None
    ) -> GrammarMask | None:
        """The mask of the constrained rows of ``requests`` (the step's sampling rows, in
        order), or None when no row is constrained. A row with a ``prefixes[i]`` (drafts
        being verified, already validated against its grammar) gets the mask after them:
        its matcher consumes them and rolls back. Mutates nothing but the matchers' own
        mask caches."""
        rows = [i for i, r in enumerate(requests) if r.grammar is not None]
        if not rows:
            return None
        bitmask = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        # One row at a time on this thread: a mask costs ~0.1 ms, and a second thread pool
        # would fight the model's threads for the cores between steps.
        width = self.words * 4
        base = bitmask.data_ptr()
        for j, i in enumerate(rows):
            matcher = requests[i].grammar
            prefix = list(prefixes[i]) if prefixes is not None else []
            consumed = matcher.try_consume_tokens(prefix) if prefix else 0
            matcher.unsafe_compute_mask_ptr(base + j * width, width)
            if consumed:
                matcher.rollback(consumed)
        return GrammarMask(torch.tensor(rows, dtype=torch.long), bitmask)


def apply(logits: torch.Tensor, mask: GrammarMask) -> None:
    """Set the logits [num_rows, vocab] (float32, CPU, contiguous) of disallowed tokens to
    -inf, in place."""
    vocab = logits.shape[1]
    # Bit j of word w is token 32 * w + j: little-endian words, so the bytes' bits in
    # little-endian order are the tokens in order. numpy works on this thread: torch would
    # wake its worker threads for a few microseconds of work per row.
    packed = mask.bitmask.numpy().view(np.uint8)  # [k, words * 4]
    allowed = np.unpackbits(packed, axis=1, bitorder="little")[:, :vocab].view(np.bool_)
    values = logits.numpy()  # a view: writes land in ``logits``
    rows = mask.rows.numpy()
    constrained = values[rows]  # [k, vocab] copy
    constrained[~allowed] = -np.inf
    values[rows] = constrained


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
