"""When to speculate, and how far: the per-step choice of k for each decoding request.

Verifying k drafts computes k more rows in the step's forward. With few rows the forward is
memory-bound (every weight is read once whatever the row count), so the extra rows are
nearly free and each accepted draft saves a whole step; with a full batch the weights are
already amortised and rejected rows are pure cost. The rule, deterministic and per step:

1. Load: with more than ``MAX_DECODING`` decoding requests nobody speculates (so a 16-user
   batch runs exactly the plain engine), and the step's drafts are capped at
   ``STEP_DRAFT_BUDGET`` in total, shared evenly (1 user: k, 4 users: 4 each, 8 users: 2).
2. Acceptance: each request keeps a running acceptance rate (an exponential average of
   accepted / proposed per verified step, starting at 1). Its k is the cap scaled by that
   rate, rounded up; below ``MIN_ACCEPTANCE`` speculation is off for the request, and
   after ``PROBE_EVERY`` decode steps off it tries one draft again, so a request whose text
   turns repetitive later (a quote, a code block) gets speculation back.
3. Length: never more drafts than the output has room for after the next token.

Greedy output does not depend on any of this (verification is exact); it only decides how
much work a step does.
"""

from __future__ import annotations

import math

from heron.request import Request

MAX_DECODING = 8
STEP_DRAFT_BUDGET = 16
MIN_ACCEPTANCE = 0.2
PROBE_EVERY = 16
EMA_WEIGHT = 0.3  # weight of the newest verified step in the running acceptance rate


def step_cap(k_max: int, num_decoding: int) -> int:
    """The most drafts any one request may verify this step, given the load."""
    if num_decoding == 0 or num_decoding > MAX_DECODING:
        return 0
    return min(k_max, max(STEP_DRAFT_BUDGET // num_decoding, 1))


def choose_k(request: Request, cap: int) -> int:
    """How many drafts to ask for ``request`` this step (0: none). Mutates the request's
    ``spec_idle_steps`` (the probe counter while its speculation is off)."""
    room = request.max_tokens - request.num_output_tokens - 1
    if cap <= 0 or room <= 0:
        return 0
    if request.spec_acceptance < MIN_ACCEPTANCE:
        request.spec_idle_steps += 1
        if request.spec_idle_steps < PROBE_EVERY:
            return 0
        request.spec_idle_steps = 0
        return 1
    return min(math.ceil(cap * request.spec_acceptance), room)


def record(request: Request, num_drafts: int, num_accepted: int) -> None:
    """Fold one verified step into the request's running acceptance rate (mutates
    ``spec_acceptance``). A step without drafts tells nothing and changes nothing."""
    if num_drafts <= 0:
        return
    rate = num_accepted / num_drafts
    request.spec_acceptance += EMA_WEIGHT * (rate - request.spec_acceptance)
