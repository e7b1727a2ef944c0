"""The ``draft`` proposer on a tiny random llama: its drafts are what greedy decoding of the
draft model alone produces from the same context, batched, after any verification outcome
(accepted, partly rejected, all rejected), within the token budget and the pool."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from heron import LLM, SamplingParams
from heron.config import CacheConfig, EngineConfig, SchedulerConfig
from heron.loader import load_checkpoint
from heron.proposer import SpeculativeConfig, build_proposer
from heron.proposer.draft import DraftProposer
from heron.request import Request
from tests.models.tiny import build

pytestmark = pytest.mark.slow  # builds its model with the transformers reference

Greedy = Callable[[list[int], int], list[int]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llama3", tmp_path_factory.mktemp("draft") / "llama3")


@pytest.fixture(scope="module")
def greedy(tiny: Path) -> Greedy:
    """Greedy decoding of the draft model alone, through Heron's LLM."""
    llm = LLM(str(tiny), num_kv_blocks=256, block_size=4, enable_prefix_caching=False)

    def run(context: list[int], k: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=k, ignore_eos=True)
        return list(llm.generate([{"prompt_token_ids": context}], params)[0].outputs[0].token_ids)

    return run


def make_proposer(path: Path, num_blocks: int = 64, budget: int = 2048) -> DraftProposer:
    config = SpeculativeConfig("draft", num_speculative_tokens=4, draft_model=str(path))
    engine = EngineConfig(
        cache=CacheConfig(block_size=4, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget),
    )
    return DraftProposer(config, engine)


def make_request(rid: str, prompt: list[int]) -> Request:
    return Request(rid, list(prompt), SamplingParams())


def random_tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(n)]


def test_drafts_equal_greedy_decoding(tiny: Path, greedy: Greedy) -> None:
    proposer = make_proposer(tiny)
    request = make_request("r", random_tokens(21, 0))
    drafts = proposer.propose([request], [4])
    assert drafts == [greedy(request.all_token_ids, 4)]
    assert request.all_token_ids == random_tokens(21, 0)  # not mutated
    # the last draft is sampled, not fed: the cache holds everything before it
    assert proposer.states["r"].num_computed == 21 + 3


@pytest.mark.parametrize("num_accepted", [0, 2, 4])
def test_drafts_after_verification_equal_greedy_decoding(
    tiny: Path, greedy: Greedy, num_accepted: int
) -> None:
    """The target accepts some drafts and adds a token of its own (a different one where it
    rejects a draft); the next drafts continue the real context, reusing the accepted
    drafts' KV."""
    proposer = make_proposer(tiny)
    request = make_request("r", random_tokens(13, 1))
    for _ in range(3):
        drafts = proposer.propose([request], [4])[0]
        assert drafts == greedy(request.all_token_ids, 4)
        accepted = drafts[:num_accepted]
        own = (drafts[num_accepted] + 1) % 256 if num_accepted < len(drafts) else 7
        for token in [*accepted, own]:
            request.append_output_token(token)
        state = proposer.states["r"]
        num_real, before = state.num_real, state.num_computed
        proposer._sync(request)
        # the accepted drafts keep their KV; the rejected ones' is recomputed
        assert state.num_computed == min(before, num_real + num_accepted)
    assert proposer.propose([request], [4]) == [greedy(request.all_token_ids, 4)]


def test_batched_requests_of_different_lengths(tiny: Path, greedy: Greedy) -> None:
    proposer = make_proposer(tiny)
    requests = [make_request(str(i), random_tokens(n, 10 + i)) for i, n in enumerate([5, 17, 40])]
    for step in range(3):
        max_k = [4, 2, 0] if step == 0 else [3, 4, 1]
        drafts = proposer.propose(requests, max_k)
        assert drafts == [
            greedy(r.all_token_ids, k) if k else [] for r, k in zip(requests, max_k, strict=True)
        ]
        for i, (request, proposed) in enumerate(zip(requests, drafts, strict=True)):
            for token in proposed[: i + 1]:  # each accepts a different number
                request.append_output_token(token)
            request.append_output_token(42 + i)


def test_catch_up_is_split_by_the_token_budget(tiny: Path, greedy: Greedy) -> None:
    proposer = make_proposer(tiny, budget=8)
    requests = [make_request("a", random_tokens(30, 3)), make_request("b", random_tokens(11, 4))]
    drafts = proposer.propose(requests, [4, 4])
    assert drafts == [greedy(r.all_token_ids, 4) for r in requests]


def test_full_pool_proposes_nothing_for_that_request(tiny: Path, greedy: Greedy) -> None:
    proposer = make_proposer(tiny, num_blocks=4)  # 16 token slots
    short, long = make_request("s", random_tokens(5, 5)), make_request("l", random_tokens(30, 6))
    assert proposer.propose([long, short], [4, 4]) == [[], greedy(short.all_token_ids, 4)]
    for request in (long, short):
        proposer.on_finished(request)
    assert proposer.kv.num_free_blocks == 4
    assert not proposer.states


def test_drafts_stop_at_the_draft_models_context(tiny: Path, greedy: Greedy) -> None:
    proposer = make_proposer(tiny)
    request = make_request("r", random_tokens(proposer.max_model_len - 2, 7))
    assert proposer.propose([request], [4]) == [greedy(request.all_token_ids, 2)]


def test_vocabulary_mismatch_is_refused(tiny: Path) -> None:
    target = dataclasses.replace(load_checkpoint(tiny).config, vocab_size=300)
    config = SpeculativeConfig("draft", draft_model=str(tiny))
    with pytest.raises(ValueError, match="vocabulary has 258 tokens but the target's has 300"):
        DraftProposer(config, EngineConfig(cache=CacheConfig(num_blocks=8)), target)
    with pytest.raises(ValueError, match="vocabulary has 258 tokens"):  # as the engine builds it
        build_proposer(config, EngineConfig(cache=CacheConfig(num_blocks=8)), target)


def test_registry_builds_it_with_a_pool_sized_from_the_target(tiny: Path) -> None:
    config = SpeculativeConfig("draft", draft_model=str(tiny))
    engine = EngineConfig(cache=CacheConfig(block_size=4, num_blocks=64))
    assert isinstance(build_proposer(config, engine), DraftProposer)
    sized = build_proposer(config, engine, load_checkpoint(tiny).config)
    assert isinstance(sized, DraftProposer)
    # the target's 64 blocks, plus every running request's drafts (16 tokens: 4 blocks + 1)
    assert sized.runner.num_blocks == 64 + engine.scheduler.max_num_seqs * 5
    assert not sized.engine_config.cache.enable_prefix_caching
