"""The engine's user-facing behaviour on the real SmolLM2 model."""

from __future__ import annotations

import pytest

from heron import LLM, SamplingParams
from heron.request import RequestStatus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm2_path: str) -> LLM:
    return LLM(smollm2_path, kv_cache_memory_bytes=64 << 20)


def test_generate_output_shape(llm: LLM) -> None:
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    assert len(out) == 1
    o = out[0]
    assert o.finished and o.prompt == "The capital of France is"
    assert o.prompt_token_ids == llm.get_tokenizer().encode("The capital of France is")
    c = o.outputs[0]
    assert c.finish_reason in ("stop", "length") and 1 <= len(c.token_ids) <= 8
    assert c.text == llm.get_tokenizer().decode(c.token_ids)
    assert "Paris" in c.text


def test_max_tokens_length_and_ignore_eos(llm: LLM) -> None:
    c = llm.generate("Hi", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0].outputs[
        0
    ]
    assert len(c.token_ids) == 5 and c.finish_reason == "length"


def test_eos_stops_chat(llm: LLM) -> None:
    out = llm.chat(
        [{"role": "user", "content": "Say hello."}], SamplingParams(temperature=0, max_tokens=100)
    )
    c = out[0].outputs[0]
    assert c.finish_reason == "stop" and c.token_ids[-1] in llm.engine.eos_token_ids
    assert "<|im_end|>" not in c.text and c.text.strip()


def test_stop_string_truncates(llm: LLM) -> None:
    base = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=12))
    text = base[0].outputs[0].text
    word = text.split()[1]  # the second word of the greedy continuation
    c = llm.generate(
        "The capital of France is", SamplingParams(temperature=0, max_tokens=12, stop=[word])
    )[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == word
    assert c.text == text[: text.index(word)]
    c2 = llm.generate(
        "The capital of France is",
        SamplingParams(temperature=0, max_tokens=12, stop=[word], include_stop_str_in_output=True),
    )[0].outputs[0]
    assert c2.text == text[: text.index(word) + len(word)]


def test_stop_token_ids(llm: LLM) -> None:
    base = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=6))
    ids = base[0].outputs[0].token_ids
    c = llm.generate(
        "Once upon a time", SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[ids[2]])
    )[0].outputs[0]
    assert c.token_ids == ids[:3] and c.stop_reason == ids[2] and c.finish_reason == "stop"


def test_logprobs(llm: LLM) -> None:
    c = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=4, logprobs=3))[
        0
    ].outputs[0]
    assert c.logprobs is not None and len(c.logprobs) == 4
    for tok, entry in zip(c.token_ids, c.logprobs, strict=True):
        assert tok in entry and entry[tok].rank == 1  # greedy: the chosen one is the top
        assert 3 <= len(entry) <= 4
        ranks = sorted(lp.rank for t, lp in entry.items())
        assert ranks[:3] == [1, 2, 3]
        assert all(lp.logprob <= 0 for lp in entry.values())


def test_seeded_sampling_reproducible_across_batches(llm: LLM) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=1234, ignore_eos=True)
    alone = llm.generate("Write a short poem about rivers.", seeded)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.2, max_tokens=30, ignore_eos=True)
    batch = llm.generate(
        ["Tell me a joke.", "Write a short poem about rivers.", "Count to ten:", "Hello"],
        [noise, seeded, noise, noise],
    )
    assert batch[1].outputs[0].token_ids == alone
    other = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=99, ignore_eos=True)
    assert llm.generate("Write a short poem about rivers.", other)[0].outputs[0].token_ids != alone


def test_n_choices_share_prompt_blocks(llm: LLM) -> None:
    engine = llm.engine
    prompt = "Here is a long prompt that fills more than one block of the cache. " * 3
    params = SamplingParams(n=3, temperature=1.0, max_tokens=4, seed=7, ignore_eos=True)
    engine.add_request("n3", prompt, params)
    shared = None
    while engine.has_unfinished_requests():
        outs = engine.step()
        running = {r.request_id: r for r in engine.scheduler.running}
        if len(running) == 3 and shared is None:
            tables = [engine.kv_manager.get_block_ids(f"n3#{i}") for i in range(3)]
            num_full = (len(engine.tokenizer.encode(prompt)) - 1) // 16
            shared = tables[0][:num_full]
            assert tables[1][:num_full] == shared and tables[2][:num_full] == shared
            pool = engine.kv_manager.block_pool
            assert all(pool.blocks[b].ref_cnt == 3 for b in shared)
        for out in outs:
            if out.finished:
                final = out
    assert shared
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 4 for c in final.outputs)
    assert len({tuple(c.token_ids) for c in final.outputs}) > 1  # different samples
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


def test_abort_frees_blocks_at_once(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(max_tokens=50, ignore_eos=True)
    engine.add_request("ab", "Tell me everything about the ocean.", params)
    engine.step()
    req = engine.scheduler.requests["ab"]
    assert req.status == RequestStatus.RUNNING
    assert engine.kv_manager.num_free_blocks < engine.kv_manager.num_blocks
    engine.abort("ab")
    assert req.status == RequestStatus.FINISHED_ABORTED
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
    assert not engine.has_unfinished_requests()


def test_bad_input_is_a_value_error(llm: LLM) -> None:
    engine = llm.engine
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("e", [], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request("v", [10**9], SamplingParams())
    with pytest.raises(ValueError, match="context length"):
        engine.add_request("l", [1] * (engine.max_model_len + 5), SamplingParams())
    with pytest.raises(ValueError):
        SamplingParams(n=10**6)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    assert not engine.has_unfinished_requests()
