"""The suffix and draft proposers inside the engine, on a tiny random llama: greedy output
is the same with speculation as without, and a model drafting for itself has every draft
accepted."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from heron import LLM, SamplingParams
from heron.proposer.draft import DraftProposer
from tests.models.tiny import build

pytestmark = pytest.mark.slow  # builds its model with the transformers reference

PARAMS = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llama3", tmp_path_factory.mktemp("spec") / "llama3")


def prompts() -> list[Any]:
    rng = random.Random(0)
    loop = [rng.randrange(256) for _ in range(12)]
    return [{"prompt_token_ids": [rng.randrange(256) for _ in range(n)]} for n in (5, 19, 37)] + [
        {"prompt_token_ids": loop * 4 + loop[:3]}
    ]  # repetitive: the suffix index matches


def generate(path: Path, speculative: dict[str, Any] | None) -> tuple[list[list[int]], LLM]:
    llm = LLM(str(path), num_kv_blocks=256, block_size=4, speculative_config=speculative)
    outputs = llm.generate(prompts(), PARAMS)
    return [list(o.outputs[0].token_ids) for o in outputs], llm


@pytest.fixture(scope="module")
def plain(tiny: Path) -> list[list[int]]:
    return generate(tiny, None)[0]


def test_draft_model_drafting_for_itself(tiny: Path, plain: list[list[int]]) -> None:
    spec = {"method": "draft", "model": str(tiny), "num_speculative_tokens": 4}
    got, llm = generate(tiny, spec)
    assert got == plain
    speculator = llm.engine.core.speculator
    assert speculator is not None
    counters = speculator.counters
    assert counters.num_draft_tokens > 0
    assert counters.num_accepted_tokens == counters.num_draft_tokens
    proposer = speculator.proposer
    assert isinstance(proposer, DraftProposer)
    assert not proposer.states  # every finished request's blocks were freed
    assert proposer.kv.num_free_blocks == proposer.kv.num_blocks


def test_suffix_speculation_keeps_greedy_output(tiny: Path, plain: list[list[int]]) -> None:
    got, llm = generate(tiny, {"method": "suffix", "num_speculative_tokens": 4})
    assert got == plain
    speculator = llm.engine.core.speculator
    assert speculator is not None and speculator.counters.num_draft_tokens > 0
    # run again: the finished outputs are now in the proposer's recent outputs
    again = [list(o.outputs[0].token_ids) for o in llm.generate(prompts(), PARAMS)]
    assert again == plain
