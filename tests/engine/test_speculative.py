"""Speculative decoding on SmolLM2: greedy output is token for token the same with ngram
speculation on and off, through batching, chunked prefill, preemption, n > 1, stop strings,
max_tokens, logprobs, penalties and a JSON-schema constraint."""

from __future__ import annotations

import json

import pytest

from heron import LLM, SamplingParams
from heron.outputs import RequestOutput
from heron.structured import StructuredOutputsParams
from tests.models.prompts import PROMPTS

pytestmark = pytest.mark.slow

KV = 64 << 20
SPEC = {"method": "ngram", "num_speculative_tokens": 4}
CODE = (
    "def add_item(cart, item, price):\n"
    "    cart[item] = cart.get(item, 0) + price\n"
    "    return cart\n\n"
    "def remove_item(cart, item):\n"
    "    if item in cart:\n"
    "        del cart[item]\n"
    "    return cart\n"
)
COPY = f"```python\n{CODE}```\n\nThe same code with a docstring added:\n\n```python\n"
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


@pytest.fixture(scope="module")
def plain(smollm2_path: str) -> LLM:
    return LLM(smollm2_path, kv_cache_memory_bytes=KV, quantization="auto")


@pytest.fixture(scope="module")
def spec(smollm2_path: str) -> LLM:
    # A small step budget: long prompts are prefilled in chunks and drafts get cut to fit.
    return LLM(
        smollm2_path,
        kv_cache_memory_bytes=KV,
        max_num_batched_tokens=32,
        quantization="auto",
        speculative_config=SPEC,
    )


def tokens(outputs: list[RequestOutput]) -> list[list[list[int]]]:
    return [[c.token_ids for c in o.outputs] for o in outputs]


def accepted(llm: LLM) -> int:
    speculator = llm.engine.core.speculator
    assert speculator is not None
    return speculator.counters.num_accepted_tokens


def test_copy_heavy_prompt_is_identical_and_speculation_pays(plain: LLM, spec: LLM) -> None:
    before = accepted(spec)
    want = plain.generate(COPY, GREEDY)
    got = spec.generate(COPY, GREEDY)
    assert tokens(got) == tokens(want)
    assert got[0].outputs[0].text == want[0].outputs[0].text
    # the copy is long: most tokens came from accepted drafts
    assert accepted(spec) - before >= 16


def test_a_batch_is_identical(plain: LLM, spec: LLM) -> None:
    prompts = [COPY, *PROMPTS[:3]]
    assert tokens(spec.generate(prompts, GREEDY)) == tokens(plain.generate(prompts, GREEDY))


def test_preemption_is_identical(smollm2_path: str, plain: LLM) -> None:
    tiny = LLM(smollm2_path, num_kv_blocks=24, quantization="auto", speculative_config=SPEC)
    # distinct starts (no shared prefix blocks): together they need more than 24 blocks
    prompts = [COPY, "# v2\n" + COPY, *PROMPTS[:2]]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    got = tiny.generate(prompts, params)
    assert tiny.engine.scheduler.num_preemptions > 0
    assert tokens(got) == tokens(plain.generate(prompts, params))
    assert accepted(tiny) > 0


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, max_tokens=5),
        SamplingParams(temperature=0.0, max_tokens=30, n=3),
        SamplingParams(temperature=0.0, max_tokens=40, repetition_penalty=1.2, min_tokens=8),
        SamplingParams(temperature=0.0, max_tokens=30, logprobs=3),
    ],
    ids=["max_tokens", "n3", "penalties", "logprobs"],
)
def test_parameters_are_identical(plain: LLM, spec: LLM, params: SamplingParams) -> None:
    want = plain.generate(COPY, params)
    got = spec.generate(COPY, params)
    assert tokens(got) == tokens(want)
    if params.max_tokens == 5:
        assert len(got[0].outputs[0].token_ids) == 5
    if params.logprobs is not None:
        w, g = want[0].outputs[0].logprobs, got[0].outputs[0].logprobs
        assert w is not None and g is not None and len(g) == len(w)
        for a, b in zip(w, g, strict=True):
            assert a.keys() == b.keys()
            for t in a:
                assert b[t].logprob == pytest.approx(a[t].logprob, abs=1e-4)


def test_stop_strings_are_identical(plain: LLM, spec: LLM) -> None:
    text = plain.generate(COPY, GREEDY)[0].outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 6]
    assert stop.strip()
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=[stop])
    want = plain.generate(COPY, params)[0].outputs[0]
    got = spec.generate(COPY, params)[0].outputs[0]
    assert (got.text, got.token_ids, got.finish_reason) == (
        want.text,
        want.token_ids,
        want.finish_reason,
    )
    assert got.finish_reason == "stop" and len(got.token_ids) < 40


def test_json_schema_is_identical(plain: LLM, spec: LLM) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "items": {"type": "array"}},
        "required": ["name", "items"],
    }
    obj = '{"name": "cart", "items": ["apple", "pear"]}'
    prompt = f"Return {obj} as JSON: {obj}. Again: "
    params = SamplingParams(
        temperature=0.0, max_tokens=40, structured_outputs=StructuredOutputsParams(json=schema)
    )
    want = plain.generate(prompt, params)[0].outputs[0]
    before = accepted(spec)
    got = spec.generate(prompt, params)[0].outputs[0]
    assert got.token_ids == want.token_ids
    assert accepted(spec) > before  # the repeated objects were drafted under the grammar
    if want.finish_reason == "stop":
        json.loads(got.text)
