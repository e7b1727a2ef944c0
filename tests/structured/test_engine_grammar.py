"""The engine side of structured outputs on a one-token-per-byte vocabulary: compilation on
the worker thread and its cache, the per-step bitmask, advancing matchers, and the engine
core holding a request until its grammar is compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron.request import Request
from heron.runner.sampler import Sampler
from heron.sampling_params import SamplingParams
from heron.structured import StructuredOutputsParams
from heron.structured.bitmask import GrammarBitmask, advance, apply
from heron.structured.compiler import GrammarCompiler
from tests.models.tiny import VOCAB, save_byte_tokenizer

EOS = 257


@pytest.fixture(scope="module")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> GrammarCompiler:
    d: Path = tmp_path_factory.mktemp("bytes")
    save_byte_tokenizer(d)
    return GrammarCompiler((d / "tokenizer.json").read_text(), VOCAB, [EOS])


def constrained(compiler: GrammarCompiler, so: StructuredOutputsParams, rid: str = "r") -> Request:
    req = Request(rid, [1, 2], SamplingParams(temperature=0.0, structured_outputs=so))
    req.eos_token_ids = frozenset({EOS})
    req.grammar = compiler.submit(so).result(timeout=30)
    return req


def allowed(mask_row: torch.Tensor) -> set[int]:
    bits = ((mask_row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return {i for i in range(VOCAB) if bits[i]}


def test_mask_allows_exactly_the_grammars_next_bytes(compiler: GrammarCompiler) -> None:
    req = constrained(compiler, StructuredOutputsParams(choice=["yes", "no"]))
    mask = GrammarBitmask(VOCAB).fill([req])
    assert mask is not None and mask.rows.tolist() == [0]
    assert allowed(mask.bitmask[0]) == {ord("y"), ord("n")}


def test_unconstrained_rows_are_untouched_and_cost_nothing(compiler: GrammarCompiler) -> None:
    plain = Request("p", [1, 2], SamplingParams(temperature=0.0))
    bitmask = GrammarBitmask(VOCAB)
    assert bitmask.fill([plain, plain]) is None
    req = constrained(compiler, StructuredOutputsParams(regex="[0-9]+"))
    mask = bitmask.fill([plain, req, plain])
    assert mask is not None and mask.rows.tolist() == [1]
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    apply(logits, mask)
    assert torch.equal(logits[[0, 2]], before[[0, 2]])
    finite = set(torch.nonzero(torch.isfinite(logits[1])).flatten().tolist())
    assert finite == set(range(ord("0"), ord("9") + 1))


def test_sampler_follows_the_grammar_and_the_grammar_ends_the_request(
    compiler: GrammarCompiler,
) -> None:
    req = constrained(compiler, StructuredOutputsParams(choice=["ok"]))
    sampler = Sampler(VOCAB)
    produced = []
    for _ in range(2):
        token = sampler.sample(torch.randn(1, VOCAB), sampler.prepare([req])).token_ids[0]
        produced.append(token)
        req.append_output_token(token)
        done = advance([req], [token])
    assert bytes(produced) == b"ok"
    assert done == [req]  # "ok" is the whole grammar: the request finishes with stop


def test_eos_is_allowed_only_where_the_grammar_accepts(compiler: GrammarCompiler) -> None:
    req = constrained(compiler, StructuredOutputsParams(regex="a+"))
    bitmask = GrammarBitmask(VOCAB)
    first = bitmask.fill([req])
    assert first is not None and allowed(first.bitmask[0]) == {ord("a")}
    assert advance([req], [ord("a")]) == []
    then = bitmask.fill([req])
    assert then is not None and allowed(then.bitmask[0]) == {ord("a"), EOS}
    assert advance([req], [EOS]) == []  # accepted EOS ends it the usual way


def test_compiled_grammars_are_cached_and_copies_are_independent(
    compiler: GrammarCompiler,
) -> None:
    so = StructuredOutputsParams(json={"type": "object", "properties": {"k": {"type": "integer"}}})
    a = constrained(compiler, so, "a")
    compiles = len(compiler.compile_seconds)
    b = constrained(compiler, StructuredOutputsParams(json=so.json), "b")
    assert len(compiler.compile_seconds) == compiles  # the same digest: no second compile
    assert a.grammar.consume_token(ord("{"))
    mask = GrammarBitmask(VOCAB).fill([a, b])
    assert mask is not None
    assert allowed(mask.bitmask[1]) == {ord("{")}  # b still at the start
    assert ord("{") not in allowed(mask.bitmask[0])


def test_a_grammar_that_does_not_compile_fails_its_future(compiler: GrammarCompiler) -> None:
    with pytest.raises(ValueError, match="regex"):
        compiler.submit(StructuredOutputsParams(regex="(a")).result(timeout=30)
