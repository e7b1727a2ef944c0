"""The engine core's ``Speculator``: the proposer is asked only for requests the adaptive
rule gives drafts, so a step past the load threshold does no proposer work."""

from __future__ import annotations

from collections.abc import Sequence

from heron.config import EngineConfig
from heron.proposer import adaptive
from heron.proposer.base import SpeculativeConfig
from heron.proposer.speculator import Speculator
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams


class CountingProposer:
    """Proposes the last token again; counts the requests it was asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        self.asked += len(requests)
        return [[r.all_token_ids[-1]] * k for r, k in zip(requests, max_k, strict=True)]

    def on_finished(self, request: Request) -> None:
        pass


def decoding(rid: str) -> Request:
    request = Request(rid, [1, 2, 3], SamplingParams(max_tokens=100), max_tokens=100)
    request.status = RequestStatus.RUNNING
    request.num_computed_tokens = request.num_tokens - 1
    return request


def test_past_the_threshold_the_proposer_is_not_asked() -> None:
    proposer = CountingProposer()
    spec = Speculator(SpeculativeConfig("ngram"), EngineConfig(), proposer=proposer)
    running = [decoding(str(i)) for i in range(adaptive.MAX_DECODING + 1)]
    running[0].spec_token_ids = [7]  # left over: cleared
    for _ in range(3 * adaptive.PROBE_EVERY):  # however long: no probes either
        spec.propose(running)
        assert proposer.asked == 0
        assert all(not r.spec_token_ids for r in running)
    assert all(r.spec_idle_steps == 0 for r in running)
    spec.propose(running[:1])  # one user: a first guess
    assert proposer.asked == 1 and set(running[0].spec_token_ids) == {3}
