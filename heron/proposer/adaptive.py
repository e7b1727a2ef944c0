"""When to speculate, and how far: the per-step choice of k for each decoding request.

Verifying k drafts computes k more rows in the step's forward. On a GPU, or a CPU whose
decode is bound by weight reads, those rows are nearly free. On a CPU they are not quite:
the packed quantized linears load and unpack each weight block once for up to 4-8 rows, but
every row still pays its own int8 products and its own attention over the context, so one
more row costs about a quarter of a one-row step (``VERIFY_ROW_COST``, measured with
SmolLM2-135M Q4_1 on AVX2 with a 400-700-token context: steps of 2, 5 and 8 rows took
1.3x, 2.1-2.3x and 2.4x a 1-row one). So a draft pays only when it is likely enough to be
accepted, and k is chosen by expected tokens per unit of step cost:

1. Load: with more than ``MAX_DECODING`` decoding requests nobody speculates (so a 16-user
   batch runs exactly the plain engine), and the step's drafts are capped at
   ``STEP_DRAFT_BUDGET`` in total, shared evenly (1 user: k, 4 users: 4 each, 8 users: 2).
2. Acceptance: each request estimates the chance ``a`` that its next draft is accepted,
   from running averages (per verified step) of drafts accepted and of rejections:
   ``a = accepted / (accepted + rejections)``, the estimate of a geometric run; it starts
   at 2/3 with a light weight (two drafts at one user: a first guess in open chat costs
   little, and three rejected steps in a row turn speculation off; acceptance earns more).
   With ``B`` decoding requests, a request's k maximises the step's tokens per cost,
   ``(B - 1 + E(k)) / (1 + c (B - 1) + c k)`` with ``E(k) = 1 + a + ... + a^k`` the
   expected tokens of its run and ``c = VERIFY_ROW_COST`` (the others counted without
   drafts). When no k > 0 beats none (one user: ``a`` below about ``c``), speculation is
   off for the request; it then probes with one draft after ``spec_probe_wait`` decode
   steps (and again at the next step while the proposer has nothing to offer), so a
   request whose text turns repetitive later (a quote, a code block) gets it back. The
   wait starts at ``PROBE_EVERY``; a verified step whose drafts were all rejected and that
   leaves speculation off doubles it (up to ``MAX_PROBE_WAIT``), one that accepted a
   draft halves it (down to ``PROBE_EVERY``): where probes keep failing (open chat), they
   become rare.
3. Length: never more drafts than the output has room for after the next token.

Greedy output does not depend on any of this (verification is exact); it only decides how
much work a step does. The rule is deterministic (no timings), so seeded sampling stays
reproducible.
"""

from __future__ import annotations

from heron.request import Request

MAX_DECODING = 8
STEP_DRAFT_BUDGET = 16
# The cost of one more verified row in a small step, as a fraction of a one-row step
# (0: rows taken as free, every request drafts its whole cap).
VERIFY_ROW_COST = 0.25
PROBE_EVERY = 8  # decode steps off before the first probe (and the shortest wait)
MAX_PROBE_WAIT = 32  # the longest wait after probes that keep being rejected
EMA_WEIGHT = 0.3  # weight of the newest verified step in the running averages


def step_cap(k_max: int, num_decoding: int) -> int:
    """The most drafts any one request may verify this step, given the load."""
    if num_decoding == 0 or num_decoding > MAX_DECODING:
        return 0
    return min(k_max, max(STEP_DRAFT_BUDGET // num_decoding, 1))


def best_k(acceptance: float, limit: int, num_decoding: int = 1) -> int:
    """The k in ``[0, limit]`` with the most expected tokens per step cost (module
    docstring), 0 when no k > 0 beats decoding without drafts. Pure."""
    if VERIFY_ROW_COST <= 0:  # verification taken as free: always the whole limit
        return limit
    others = max(num_decoding, 1) - 1
    base_cost = 1.0 + VERIFY_ROW_COST * others
    best, best_rate = 0, (others + 1.0) / base_cost
    expected, power = 1.0, 1.0
    for k in range(1, limit + 1):
        power *= acceptance
        expected += power
        rate = (others + expected) / (base_cost + VERIFY_ROW_COST * k)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = k, rate
    return best


def choose_k(request: Request, cap: int, num_decoding: int = 1) -> int:
    """How many drafts to ask for ``request`` this step (0: none), ``num_decoding``
    requests decoding in the step. Mutates the request's ``spec_idle_steps`` (the probe
    counter while its speculation is off; a probe is due at ``spec_probe_wait``)."""
    room = request.max_tokens - request.num_output_tokens - 1
    if cap <= 0 or room <= 0:
        return 0
    k = best_k(request.spec_acceptance, min(cap, room), num_decoding)
    if k > 0:
        request.spec_idle_steps = 0
        return k
    request.spec_idle_steps += 1
    if request.spec_idle_steps < request.spec_probe_wait:
        return 0
    request.spec_idle_steps = 0
    return 1


def proposed_nothing(request: Request, num_decoding: int = 1) -> None:
    """The proposer had nothing for ``request`` this step. If its speculation is off (this
    was a probe), probe again next step: an empty proposal costs the step nothing, and a
    probe should land where there is something to copy. Mutates ``spec_idle_steps``."""
    if best_k(request.spec_acceptance, 1, num_decoding) == 0:
        request.spec_idle_steps = request.spec_probe_wait - 1


def record(request: Request, num_drafts: int, num_accepted: int, num_decoding: int = 1) -> None:
    """Fold one verified step into the request's running averages and acceptance estimate
    (mutates ``spec_accepted``, ``spec_rejected``, ``spec_acceptance``), and adapt the wait
    before its next probe (``spec_probe_wait``: halved when a draft was accepted, doubled
    when none was and speculation is now off at ``num_decoding`` requests). A step without
    drafts tells nothing and changes nothing."""
    if num_drafts <= 0:
        return
    rejected = 1.0 if num_accepted < num_drafts else 0.0
    request.spec_accepted += EMA_WEIGHT * (num_accepted - request.spec_accepted)
    request.spec_rejected += EMA_WEIGHT * (rejected - request.spec_rejected)
    total = request.spec_accepted + request.spec_rejected
    request.spec_acceptance = request.spec_accepted / total if total > 0 else 0.0
    wait = request.spec_probe_wait
    if num_accepted > 0:
        request.spec_probe_wait = max(wait // 2, PROBE_EVERY)
    elif best_k(request.spec_acceptance, 1, num_decoding) == 0:
        request.spec_probe_wait = min(wait * 2, MAX_PROBE_WAIT)
