"""The adaptive rule: how many drafts each decoding request gets per step."""

from __future__ import annotations

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
    assert adaptive.choose_k(req, 4) == 4
    adaptive.record(req, 4, 0)  # nothing accepted: 1.0 -> 0.7
    assert adaptive.choose_k(req, 4) == 3
    for _ in range(5):
        adaptive.record(req, 4, 0)
    assert req.spec_acceptance < adaptive.MIN_ACCEPTANCE
    ks = [adaptive.choose_k(req, 4) for _ in range(adaptive.PROBE_EVERY)]
    assert ks == [0] * (adaptive.PROBE_EVERY - 1) + [1]
    adaptive.record(req, 1, 1)
    adaptive.record(req, 1, 1)
    assert adaptive.choose_k(req, 4) >= 2


def test_no_drafts_past_max_tokens() -> None:
    req = decoding(max_tokens=3)
    assert adaptive.choose_k(req, 4) == 2  # the next token plus two drafts reach 3
    req.append_output_token(5)
    req.append_output_token(5)
    assert adaptive.choose_k(req, 4) == 0


def test_a_step_without_drafts_changes_nothing() -> None:
    req = decoding()
    adaptive.record(req, 0, 0)
    assert req.spec_acceptance == 1.0
