"""The ``suffix`` proposer: the automaton's matches and counts against brute force, long
guesses for repetitive text, none for novel text, finished outputs helping later requests,
and its memory bounds."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from heron.proposer.base import SpeculativeConfig
from heron.proposer.suffix import RecentOutputs, RequestIndex, SuffixParams, SuffixProposer
from heron.proposer.suffix_index import SuffixAutomaton
from heron.request import Request
from heron.sampling_params import SamplingParams


def make_request(rid: str, prompt: Sequence[int], output: Sequence[int] = ()) -> Request:
    request = Request(rid, list(prompt), SamplingParams())
    for token in output:
        request.append_output_token(token)
    return request


def proposer(spec_factor: float = 1.0) -> SuffixProposer:
    return SuffixProposer(SpeculativeConfig("suffix"), params=SuffixParams(spec_factor=spec_factor))


def occurrences(text: list[int], pattern: list[int]) -> int:
    n = len(pattern)
    return sum(text[i : i + n] == pattern for i in range(len(text) - n + 1))


def test_counts_and_matches_equal_brute_force() -> None:
    rng = random.Random(0)
    text = [rng.randrange(3) for _ in range(300)]
    sam = SuffixAutomaton(text, max_count_chain=10**6)
    assert sam.num_states <= 2 * len(text)
    for _ in range(300):
        pattern = [rng.randrange(3) for _ in range(rng.randrange(1, 11))]
        match = sam.longest_suffix(pattern)
        found = [n for n in range(1, len(pattern) + 1) if occurrences(text, pattern[-n:])]
        assert match.length == max(found, default=0)
        if match.length == len(pattern):
            assert sam.count[match.state] == occurrences(text, pattern)


def test_walk_follows_the_most_frequent_continuation() -> None:
    a, b, c, d = 1, 2, 3, 4
    sam = SuffixAutomaton([a, b, c, a, b, d, a, b, c])
    match = sam.longest_suffix([a, b])
    tokens, probs = sam.walk(match.state, 1, 0.0)
    assert tokens == [c] and probs == pytest.approx([2 / 3])
    # "a b c" continues with "a" once of twice seen (the last occurrence has no continuation)
    assert sam.walk(match.state, 3, 0.0) == ([c, a, b], pytest.approx([2 / 3] * 3))
    assert sam.walk(match.state, 3, 0.9) == ([], [])


def test_repeated_suffix_is_the_longest_earlier_occurrence() -> None:
    sam = SuffixAutomaton([5, 6, 7, 8, 5, 6, 7])
    assert sam.repeated_suffix().length == 3
    assert SuffixAutomaton([1, 2, 3]).repeated_suffix().length == 0


def test_agent_loop_gets_long_proposals() -> None:
    rng = random.Random(1)
    step = rng.sample(range(1000, 2000), 40)  # one tool-call round, verbatim
    prompt = [7, 8, 9] + step * 3
    request = make_request("r", prompt, step[:5])
    assert proposer().propose([request], [8]) == [step[5:13]]
    # within max_k, and a proposal of nothing where max_k is 0
    assert proposer().propose([request, request], [3, 0]) == [step[5:8], []]


def test_novel_text_gets_none() -> None:
    request = make_request("r", list(range(100, 400)), list(range(400, 420)))
    assert proposer().propose([request], [8]) == [[]]


def test_short_matches_earn_short_guesses() -> None:
    # "x y" seen once before: a two-token match may guess at most two tokens (spec_factor 1)
    request = make_request("r", [1, 2, 3, 4, 5, 6, 20, 21, 22, 1, 2])
    assert proposer().propose([request], [8]) == [[3, 4]]
    assert proposer(spec_factor=2.0).propose([request], [8]) == [[3, 4, 5, 6]]


def test_finished_output_helps_a_later_request() -> None:
    rng = random.Random(2)
    answer = rng.sample(range(1000, 2000), 30)
    p = proposer()
    first = make_request("a", [1, 2, 3], answer)
    assert p.propose([first], [4]) == [[]]  # nothing repeats within it
    later = make_request("b", [50, 51, 52] + answer[:6])
    assert p.propose([later], [4]) == [[]]  # the first is still running
    p.on_finished(first)
    assert "a" not in p.requests
    assert p.propose([later], [4]) == [answer[6:10]]


def test_incremental_update_matches_a_fresh_index() -> None:
    rng = random.Random(3)
    tokens = [rng.randrange(20) for _ in range(400)]
    p = proposer()
    request = make_request("r", tokens[:50])
    automaton = None
    for i in range(50, 400):
        got = p.propose([request], [6])
        fresh = proposer().propose([make_request("r", request.all_token_ids)], [6])
        assert got == fresh
        if automaton is not None:  # extended in place, not rebuilt
            assert p.requests["r"].automaton is automaton
        automaton = p.requests["r"].automaton
        request.append_output_token(tokens[i])
    assert p.requests["r"].num_fed == 399


def test_propose_does_not_mutate_requests() -> None:
    request = make_request("r", [1, 2, 3, 1, 2, 3, 1, 2], [3, 1])
    before = (list(request.all_token_ids), list(request.output_token_ids))
    proposer().propose([request], [4])
    assert (request.all_token_ids, request.output_token_ids) == before


def test_request_index_is_bounded() -> None:
    index = RequestIndex(max_tokens=64)
    tokens: list[int] = []
    rng = random.Random(4)
    for _ in range(1000):
        tokens.append(rng.randrange(50))
        index.sync(tokens)
        assert index.automaton.num_tokens <= 64
        assert index.automaton.num_states <= 2 * 64
    # it still holds the latest tokens
    assert index.automaton.longest_suffix(tokens[-20:]).length == 20


def test_recent_outputs_are_bounded_and_keep_the_newest() -> None:
    recent = RecentOutputs(max_requests=8, max_tokens=400)
    outputs = [[1000 * i + j for j in range(30)] for i in range(100)]
    for output in outputs:
        recent.add(output)
        assert recent.num_tokens <= 400
        held = sum(
            sum(1 for t in a.next[0] if t < 0) for a in recent.automata()
        )  # one separator per output
        assert held <= 8
    newest = recent.automata()[0]
    assert newest.longest_suffix(outputs[-1][:5]).length == 5
    assert all(a.longest_suffix(outputs[0][:5]).length <= 1 for a in recent.automata())
    recent.add(list(range(10_000)))  # a long output keeps only its tail
    assert recent.num_tokens <= 400


def test_long_runs_stay_cheap_and_still_propose() -> None:
    # A run of one token makes every suffix repeated; counts update along a capped chain.
    request = make_request("r", [9] * 3000)
    p = proposer()
    assert p.propose([request], [5]) == [[9] * 5]
    assert p.requests["r"].automaton.num_states <= 2 * 3000


def test_finished_outputs_are_indexed_lazily_and_as_if_at_once() -> None:
    """A finished output is queued, not indexed, until the automata are read; then the
    generations are what indexing each output at its finish would have built."""
    rng = random.Random(7)
    outputs = [[rng.randrange(40) for _ in range(rng.randrange(1, 60))] for _ in range(30)]
    lazy = RecentOutputs(max_requests=16, max_tokens=400)
    eager = RecentOutputs(max_requests=16, max_tokens=400)
    lazy.add(outputs[0])
    assert lazy.young.num_tokens == 0 and lazy.pending  # nothing indexed per finish
    for output in outputs[1:]:
        lazy.add(output)
    for output in outputs:
        eager.add(output)
        eager.automata()
    assert len(lazy.pending) < 8  # bounded: half the capacity waits at most
    got, want = lazy.automata(), eager.automata()
    assert not lazy.pending
    assert [(a.length, a.link, a.count, a.next) for a in got] == [
        (a.length, a.link, a.count, a.next) for a in want
    ]
