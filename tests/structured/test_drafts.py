"""Speculative drafts under a grammar: refused drafts are cut, each verified position gets
the mask after the drafts before it, and the matcher only ever keeps accepted tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.structured import StructuredOutputsParams
from heron.structured.bitmask import GrammarBitmask
from heron.structured.compiler import GrammarCompiler
from heron.structured.drafts import advance_runs, valid_drafts
from tests.models.tiny import VOCAB, save_byte_tokenizer

EOS = 257


@pytest.fixture(scope="module")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> GrammarCompiler:
    d: Path = tmp_path_factory.mktemp("bytes")
    save_byte_tokenizer(d)
    return GrammarCompiler((d / "tokenizer.json").read_text(), VOCAB, [EOS])


def constrained(compiler: GrammarCompiler, choices: list[str]) -> Request:
    so = StructuredOutputsParams(choice=choices)
    req = Request("r", [1, 2], SamplingParams(temperature=0.0, structured_outputs=so))
    req.eos_token_ids = frozenset({EOS})
    req.grammar = compiler.submit(so).result(timeout=30)
    return req


def allowed(mask_row: torch.Tensor) -> set[int]:
    bits = ((mask_row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return {i for i in range(VOCAB) if bits[i]}


def b(text: str) -> list[int]:
    return list(text.encode())


def test_drafts_the_grammar_refuses_are_cut(compiler: GrammarCompiler) -> None:
    req = constrained(compiler, ["yes", "yellow"])
    assert valid_drafts(req, b("yex")) == b("ye")
    assert valid_drafts(req, b("yes") + [EOS, 5]) == b("yes")  # cut before the EOS
    plain = Request("p", [1], SamplingParams())
    assert valid_drafts(plain, [1, 2, 3]) == [1, 2, 3]


def test_each_position_is_masked_after_its_drafts(compiler: GrammarCompiler) -> None:
    req = constrained(compiler, ["yes", "yellow"])
    mask = GrammarBitmask(VOCAB).fill([req, req, req], [[], b("y"), b("ye")])
    assert mask is not None
    assert [allowed(mask.bitmask[i]) for i in range(3)] == [
        {ord("y")},
        {ord("e")},
        {ord("s"), ord("l")},
    ]
    # the matcher rolled back: it still expects the first byte
    again = GrammarBitmask(VOCAB).fill([req])
    assert again is not None and allowed(again.bitmask[0]) == {ord("y")}


def test_a_run_completing_the_grammar_is_cut_after_it(compiler: GrammarCompiler) -> None:
    req = constrained(compiler, ["yes"])
    runs, done = advance_runs([req], [b("yes") + [7]])
    assert runs == [b("yes")] and done == [req]
