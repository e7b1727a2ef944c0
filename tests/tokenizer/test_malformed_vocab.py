"""Malformed or unsupported GGUF tokenizer metadata is refused with a clear ValueError."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from heron.tokenizer import Tokenizer
from heron.tokenizer.gguf_vocab import MAX_VOCAB_SIZE

from .helpers import spm_metadata


def gpt2_metadata(**extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab"],
        "tokenizer.ggml.token_type": [3, 1, 1, 1, 1, 1],
        "tokenizer.ggml.merges": ["a b", "Ġ ab"],
        "tokenizer.ggml.eos_token_id": 0,
    }
    metadata.update(extra)
    return metadata


def test_minimal_gpt2_vocab_works() -> None:
    tok = Tokenizer.from_gguf_metadata(gpt2_metadata())
    assert tok.encode("ab ab<|endoftext|>") == [3, 5, 0]
    assert tok.decode([3, 5, 0]) == "ab ab"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tokenizer.ggml.model": "bert"}, "unsupported .*'bert'"),
        ({"tokenizer.ggml.model": None}, "unsupported .*None"),
        ({"tokenizer.ggml.tokens": []}, "tokens is missing or empty"),
        ({"tokenizer.ggml.tokens": None}, "tokens is missing or empty"),
        ({"tokenizer.ggml.tokens": "abc"}, "must be a list of strings"),
        ({"tokenizer.ggml.tokens": ["<|endoftext|>", 7, "b", "ab", "Ġ", "Ġab"]}, "entry 1 is int"),
        ({"tokenizer.ggml.tokens": ["x" * 5000] * 6}, "5000 characters"),
        ({"tokenizer.ggml.token_type": [3, 1, 1]}, "token_type has 3 entries but .* 6"),
        ({"tokenizer.ggml.token_type": [3, 1, 1, 1, 1, 9]}, "entry 5 is 9"),
        ({"tokenizer.ggml.token_type": [3, 1, 1, 1, 1, "1"]}, "entry 5 is '1'"),
        ({"tokenizer.ggml.eos_token_id": 6}, r"eos_token_id is 6, not a token id in \[0, 6\)"),
        ({"tokenizer.ggml.bos_token_id": -1}, "bos_token_id is -1"),
        ({"tokenizer.ggml.bos_token_id": True}, "bos_token_id is True"),
        ({"tokenizer.ggml.unknown_token_id": "0"}, "unknown_token_id is '0'"),
        ({"tokenizer.ggml.eot_token_id": 10**12}, "eot_token_id"),
        ({"tokenizer.ggml.merges": None}, "merges is missing"),
        ({"tokenizer.ggml.merges": ["ab"]}, "entry 0 .* is not 'left right'"),
        ({"tokenizer.ggml.add_bos_token": "yes"}, "add_bos_token must be a bool"),
    ],
)
def test_malformed_gpt2_metadata(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_gguf_metadata(gpt2_metadata(**changes))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tokenizer.ggml.scores": None}, "scores is missing"),
        ({"tokenizer.ggml.scores": [0.0, 1.0]}, "scores has 2 entries"),
        ({"tokenizer.ggml.scores": [float("nan")] * 304}, "not finite"),
        ({"tokenizer.ggml.add_space_prefix": 1}, "add_space_prefix must be a bool"),
    ],
)
def test_malformed_llama_metadata(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_gguf_metadata(spm_metadata(**changes))


def test_absurd_vocab_size_is_refused() -> None:
    tokens = ["a"] * (MAX_VOCAB_SIZE + 1)  # one shared str: cheap to build
    with pytest.raises(ValueError, match="more than the limit"):
        Tokenizer.from_gguf_metadata(gpt2_metadata(**{"tokenizer.ggml.tokens": tokens}))


def test_tolerated_oddities_warn(caplog: pytest.LogCaptureFixture) -> None:
    metadata = gpt2_metadata(
        **{
            "tokenizer.ggml.padding_token_id": 99,  # common in the wild: dropped, not fatal
            "tokenizer.ggml.tokens": ["<|endoftext|>", "a", "b", "ab", "Ġ", "a"],  # repeated "a"
            "tokenizer.ggml.merges": ["a b", "x y", "Ġ ab"],  # "x y" names unknown tokens
            "tokenizer.ggml.pre": "no-such-pre",
        }
    )
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.from_gguf_metadata(metadata)
    assert tok.pad_token_id is None
    assert tok.vocab_size == 6  # every id still exists
    assert tok.encode("aab") == [1, 3]
    for needle in ("padding_token_id", "repeats 1 tokens", "skipped 2 GGUF merges", "no-such-pre"):
        assert needle in caplog.text


def test_lone_surrogate_is_a_value_error(smollm2) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="Unicode"):
        smollm2.encode("bad \ud800 text")
