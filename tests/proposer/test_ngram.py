"""Prompt lookup, the speculative configuration, the registry and the front-door spellings."""

from __future__ import annotations

import numpy as np
import pytest

from heron.config import EngineConfig
from heron.proposer import SpeculativeConfig, build_proposer
from heron.proposer.ngram import NgramProposer, lookup
from heron.proposer.options import (
    check_speculative_option,
    parse_speculative_option,
    speculative_from_dict,
    with_modelfile_speculation,
)
from heron.request import Request
from heron.sampling_params import SamplingParams


def arr(*tokens: int) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int64)


def test_lookup_proposes_the_continuation_of_the_last_ngram() -> None:
    #          0  1  2  3  4  5  6  7  8 | the ending "1 2" occurred at 0..1, followed by 3 4 5
    tokens = arr(1, 2, 3, 4, 5, 9, 9, 1, 2)
    assert lookup(tokens, 2, 5, 3) == [3, 4, 5]
    assert lookup(tokens, 2, 5, 10) == [3, 4, 5, 9, 9, 1, 2]
    assert lookup(tokens, 3, 5, 3) == []  # "9 1 2" never occurred before


def test_lookup_prefers_the_longest_match_then_the_most_recent() -> None:
    # "7 1 2" occurs once (followed by 8); "1 2" occurs twice more recently (followed by 6)
    tokens = arr(7, 1, 2, 8, 0, 1, 2, 6, 5, 7, 1, 2)
    assert lookup(tokens, 2, 5, 1) == [8]
    assert lookup(tokens, 2, 2, 1) == [6]  # n capped at 2: the most recent "1 2"


def test_lookup_edges() -> None:
    assert lookup(arr(5), 1, 3, 4) == []
    assert lookup(arr(1, 2), 2, 3, 4) == []  # nothing before the ending
    assert lookup(arr(3, 3, 3, 3), 2, 3, 4) == [3]  # overlapping match, one token left
    assert lookup(arr(1, 2, 3, 1, 2), 2, 3, 0) == []


def test_lookup_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens = rng.integers(0, 4, size=int(rng.integers(2, 40)))
        got = lookup(tokens, 2, 4, 3)
        want: list[int] = []
        t = tokens.tolist()
        for n in range(4, 1, -1):
            if n >= len(t):
                continue
            ends = [e for e in range(n, len(t)) if t[e - n : e] == t[-n:]]
            if ends:
                want = t[ends[-1] : ends[-1] + 3]
                break
        assert got == want, t


def test_proposer_reads_prompt_and_output_and_mutates_nothing() -> None:
    proposer = build_proposer(SpeculativeConfig("ngram"), EngineConfig())
    assert isinstance(proposer, NgramProposer)
    req = Request("r", [10, 11, 12, 13, 10], SamplingParams())
    req.append_output_token(11)
    before = list(req.all_token_ids)
    assert proposer.propose([req, req], [2, 0]) == [[12, 13], []]
    assert req.all_token_ids == before and req.spec_token_ids == []


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"method": "eagle"}, "unknown speculative method"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 99}, "num_speculative_tokens"),
        ({"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup"),
        ({"method": "draft"}, "needs a draft_model"),
        ({"method": "ngram", "draft_model": "/x"}, "only for method 'draft'"),
    ],
)
def test_config_validation_names_the_problem(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SpeculativeConfig(**kwargs)  # type: ignore[arg-type]


def test_each_method_has_its_default_cap_and_an_explicit_one_wins() -> None:
    assert SpeculativeConfig("ngram").num_speculative_tokens == 4
    assert SpeculativeConfig("suffix").num_speculative_tokens == 8
    assert SpeculativeConfig("suffix").max_drafts == 8
    assert SpeculativeConfig("suffix", 3).num_speculative_tokens == 3
    assert parse_speculative_option("suffix") == SpeculativeConfig("suffix", 8)
    assert speculative_from_dict({"method": "suffix"}).num_speculative_tokens == 8
    assert speculative_from_dict({"method": "ngram"}).num_speculative_tokens == 4
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig("suffix", 0)


def test_options_spellings() -> None:
    assert parse_speculative_option(None) is None
    assert parse_speculative_option("none") is None
    assert parse_speculative_option("ngram", 6) == SpeculativeConfig("ngram", 6)
    for bad in ("eagle", "draft", "ngram:x", "draft:"):
        with pytest.raises(ValueError, match="ngram, suffix, draft:MODEL or none"):
            check_speculative_option(bad)
    with pytest.raises(FileNotFoundError):
        parse_speculative_option("draft:/no/such/model")
    cfg = speculative_from_dict({"method": "ngram", "num_speculative_tokens": 3})
    assert cfg == SpeculativeConfig("ngram", 3)
    with pytest.raises(ValueError, match="unknown speculative_config keys: bogus"):
        speculative_from_dict({"method": "ngram", "bogus": 1})
    with pytest.raises(ValueError, match="needs a 'method'"):
        speculative_from_dict({"num_speculative_tokens": 3})


def test_modelfile_parameters_configure_the_engine() -> None:
    base = EngineConfig()
    assert with_modelfile_speculation({"temperature": 0.5}, base) is base
    on = with_modelfile_speculation({"speculative": "ngram", "num_speculative_tokens": 2}, base)
    assert on.speculative == SpeculativeConfig("ngram", 2)
    off = with_modelfile_speculation({"speculative": "none"}, on)
    assert off.speculative is None
    fewer = with_modelfile_speculation({"num_speculative_tokens": 1}, on)
    assert fewer.speculative == SpeculativeConfig("ngram", 1)
