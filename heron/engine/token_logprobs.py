"""The logprobs of the tokens one sampling row produced in a step, as the protocol sends
them."""

from __future__ import annotations

from heron.engine.protocol import TokenLogprobs
from heron.request import Request
from heron.runner.sampler import SamplerOutput


def row_logprobs(
    req: Request, sampled: SamplerOutput, row: int, num_new: int
) -> list[TokenLogprobs] | None:
    """The logprobs of row ``row``'s first ``num_new`` tokens (a speculative run may be cut
    at a stop), each cut to the request's k; None when it did not ask. Pure."""
    k = req.sampling_params.logprobs
    if k is None:
        return None
    if sampled.run_logprobs is not None:
        lps = sampled.run_logprobs[row][:num_new]
    else:
        lp = sampled.logprobs[row]
        lps = [lp] if lp is not None and num_new else []
    return [TokenLogprobs(c, rank, ids[:k], vals[:k]) for c, rank, ids, vals in lps]
