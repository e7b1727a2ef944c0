"""Grammar checks for speculative decoding: drafts a constraint refuses are never verified,
and a verified run is fed to the matcher token by token.

The sampler computes each verified position's mask with the matcher advanced through the
drafts before it and rolled back (``GrammarBitmask.fill``), so the matcher itself only ever
holds accepted tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from heron.request import Request
from heron.structured.bitmask import advance


def valid_drafts(request: Request, drafts: list[int]) -> list[int]:
    """The longest prefix of ``drafts`` the request's grammar allows from its current
    state, cut before any EOS (an EOS ends a constrained request through the sampler).
    All of them for an unconstrained request. Mutates nothing."""
    matcher = request.grammar
    if matcher is None or not drafts:
        return drafts
    if matcher.is_stopped():
        return []
    n = matcher.validate_tokens(drafts)
    drafts = drafts[:n]
    for j, token in enumerate(drafts):
        if token in request.eos_token_ids:
            return drafts[:j]
    return drafts


def advance_runs(
    requests: Sequence[Request], runs: Sequence[list[int]]
) -> tuple[list[list[int]], list[Request]]:
    """Feed each constrained request its run, token by token (``advance``). A run is cut
    after the token that completes (or breaks) its grammar. Returns the runs and the
    requests whose grammar is complete (they are to finish with ``stop``)."""
    out: list[list[int]] = []
    done: list[Request] = []
    for req, run in zip(requests, runs, strict=True):
        if req.grammar is None:
            out.append(run)
            continue
        for j, token in enumerate(run):
            if advance([req], [token]):
                done.append(req)
                run = run[: j + 1]
                break
        out.append(run)
    return out, done
