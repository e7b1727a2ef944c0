"""The adaptive rule: how many drafts each decoding request gets per step."""

from __future__ import annotations

import pytest

from heron.proposer import adaptive
from heron.request import Request
from heron.sampling_params import SamplingParams


def decoding(max_tokens: int = 100) -> Request:
    return Request("r", [1, 2, 3], SamplingParams(max_tokens=max_tokens), max_tokens=max_tokens)


def test_load_caps_and_turns_speculation_off() -> None:
    assert adaptive.step_cap(4, 1) == 4
    assert adaptive.step_cap(8, 4) == 4
    assert adaptive.step_cap(4, 8) == 2
    assert adaptive.step_cap(4, adaptive.MAX_DECODING + 1) == 0
    assert adaptive.step_cap(4, 16) == 0
    assert adaptive.step_cap(4, 0) == 0


def test_k_shrinks_with_acceptance_then_probes() -> None:
    req = decoding()
    assert 0 < adaptive.choose_k(req, 4) < 4  # a fresh request starts with few drafts (a = 2/3)
    for _ in range(8):
        adaptive.record(req, 1, 1)
    assert adaptive.choose_k(req, 4) == 4  # earned
    adaptive.record(req, 4, 2)  # two accepted, then a rejection
    assert 0.4 < req.spec_acceptance < 0.9
    assert 0 < adaptive.choose_k(req, 4) < 4
    for _ in range(6):
        adaptive.record(req, 4, 0)
    assert req.spec_acceptance < adaptive.VERIFY_ROW_COST  # below break-even: off
    assert req.spec_probe_wait > adaptive.PROBE_EVERY  # and rejected: probes wait longer
    ks = [adaptive.choose_k(req, 4) for _ in range(req.spec_probe_wait)]
    assert ks == [0] * (req.spec_probe_wait - 1) + [1]
    for _ in range(6):
        adaptive.record(req, 4, 4)  # the text turned repetitive: everything accepted
    assert adaptive.choose_k(req, 4) == 4


def test_acceptance_is_accepted_over_trials() -> None:
    """The estimate of a geometric run: drafts accepted over accepted plus rejections."""
    req = decoding()
    for _ in range(50):
        adaptive.record(req, 4, 3)  # three accepted, the fourth rejected, every step
    assert abs(req.spec_acceptance - 0.75) < 1e-6


def test_best_k_weighs_expected_tokens_against_row_cost() -> None:
    c = adaptive.VERIFY_ROW_COST
    assert adaptive.best_k(1.0, 4) == 4
    assert adaptive.best_k(0.0, 4) == 0
    assert adaptive.best_k(c * 0.9, 4) == 0  # one draft costs more than it brings
    assert adaptive.best_k(0.95, 8) > adaptive.best_k(0.7, 8) > 0
    # More requests in the step: the step's cost is shared, so drafts need more acceptance.
    assert adaptive.best_k(0.6, 4, num_decoding=1) > 0
    assert adaptive.best_k(0.6, 4, num_decoding=8) == 0
    assert adaptive.best_k(0.99, 4, num_decoding=8) > 0


def test_a_probe_that_finds_nothing_is_retried_next_step() -> None:
    req = decoding()
    for _ in range(6):
        adaptive.record(req, 4, 0)
    ks = [adaptive.choose_k(req, 4) for _ in range(req.spec_probe_wait)]
    assert ks[-1] == 1
    adaptive.proposed_nothing(req)  # nothing to copy yet: probe again at once
    assert adaptive.choose_k(req, 4) == 1
    adaptive.record(req, 1, 0)  # a probe that was rejected waits a full period again
    assert [adaptive.choose_k(req, 4) for _ in range(3)] == [0, 0, 0]


def test_a_few_rejections_turn_a_new_request_off() -> None:
    """The 2/3 prior is light: first drafts that are rejected stop the drafting within three
    verified steps (open chat pays for a few rows), one that is accepted earns more."""
    req = decoding()
    ks = []
    for _ in range(3):
        ks.append(adaptive.choose_k(req, 4))
        adaptive.record(req, ks[-1], 0)
    assert all(k > 0 for k in ks) and sum(ks) <= 4
    assert adaptive.choose_k(req, 4) == 0
    lucky = decoding()
    first = adaptive.choose_k(lucky, 4)
    adaptive.record(lucky, first, first)
    assert adaptive.choose_k(lucky, 4) > first


def probe_gaps(req: Request, accept: bool, num_probes: int) -> list[int]:
    """Decode steps from one probe to the next, each probe accepted or rejected."""
    gaps = []
    for _ in range(num_probes):
        steps = 1
        while adaptive.choose_k(req, 4) == 0:
            steps += 1
        gaps.append(steps)
        adaptive.record(req, 1, 1 if accept else 0)
    return gaps


def test_rejected_probes_back_off_and_accepted_ones_come_back() -> None:
    req = decoding(max_tokens=10_000)
    for _ in range(3):
        adaptive.record(req, 1, 0)  # off (the last of them doubles the wait)
    p, top = adaptive.PROBE_EVERY, adaptive.MAX_PROBE_WAIT
    assert probe_gaps(req, accept=False, num_probes=5) == [2 * p, top, top, top, top]
    # The text turns repetitive: an accepted probe halves the wait, and drafting resumes
    # once the estimate says it pays.
    adaptive.record(req, 1, 1)
    assert req.spec_probe_wait == top // 2
    assert probe_gaps(req, accept=True, num_probes=3)[1:] == [1, 1]
    assert req.spec_probe_wait == p
    assert adaptive.choose_k(req, 4) >= 2


def test_speculation_on_keeps_probing_when_on() -> None:
    req = decoding()
    for _ in range(6):
        adaptive.record(req, 4, 4)
    adaptive.proposed_nothing(req)  # on: an empty proposal changes nothing
    assert req.spec_idle_steps == 0


def test_free_rows_take_the_whole_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adaptive, "VERIFY_ROW_COST", 0.0)
    assert adaptive.best_k(0.0, 3) == 3


def test_no_drafts_past_max_tokens() -> None:
    req = decoding(max_tokens=3)
    req.spec_acceptance = 1.0  # drafts always accepted: only the room limits them
    assert adaptive.choose_k(req, 4) == 2  # the next token plus two drafts reach 3
    req.append_output_token(5)
    req.append_output_token(5)
    assert adaptive.choose_k(req, 4) == 0


def test_a_step_without_drafts_changes_nothing() -> None:
    req = decoding()
    before = req.spec_acceptance
    adaptive.record(req, 0, 0)
    assert req.spec_acceptance == before
