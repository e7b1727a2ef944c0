"""Structured outputs in the offline engine: each kind of constraint on SmolLM2 at
temperature 0 (the output matches it and the request ends with "stop" when it is complete,
"length" when max_tokens cuts it), and unconstrained rows batched with a constrained one
give exactly the tokens they give without it."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from heron import LLM, SamplingParams
from heron.structured import StructuredOutputsParams

pytestmark = pytest.mark.slow

PROMPT = "Describe a person in JSON:"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("smollm2", kv_cache_memory_bytes=64 << 20, quantization="auto")


def run(llm: LLM, prompt: str, max_tokens: int = 40, **constraint: Any) -> tuple[str, str]:
    params = SamplingParams(
        temperature=0,
        max_tokens=max_tokens,
        structured_outputs=StructuredOutputsParams(**constraint),
    )
    out = llm.generate(prompt, params)[0].outputs[0]
    assert out.finish_reason is not None
    return out.text, out.finish_reason


def test_json_schema(llm: LLM) -> None:
    text, reason = run(llm, PROMPT, json=PERSON)
    assert reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object(llm: LLM) -> None:
    text, reason = run(llm, PROMPT, max_tokens=8, json_object=True)
    assert text.startswith("{")
    if reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert reason == "length"


def test_regex(llm: LLM) -> None:
    text, reason = run(llm, "Call me at", regex=r"\(\d{3}\) \d{3}-\d{4}")
    assert reason == "stop" and re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", text)


def test_choice(llm: LLM) -> None:
    text, reason = run(llm, "Is fire hot? Answer:", choice=["yes", "no", "maybe not"])
    assert reason == "stop" and text in ("yes", "no", "maybe not")


def test_gbnf_grammar(llm: LLM) -> None:
    gbnf = 'root ::= "colour: " colour\ncolour ::= "red" | "green" | "blue"'
    text, reason = run(llm, "Name a colour.", grammar=gbnf)
    assert reason == "stop" and re.fullmatch("colour: (red|green|blue)", text)


def test_lark_grammar(llm: LLM) -> None:
    lark = 'start: "sum=" NUM "+" NUM\nNUM: /[1-9][0-9]?/'
    text, reason = run(llm, "Add two numbers.", grammar=lark)
    assert reason == "stop" and re.fullmatch(r"sum=[1-9][0-9]?\+[1-9][0-9]?", text)


def test_truncated_constraint_ends_with_length(llm: LLM) -> None:
    text, reason = run(llm, PROMPT, max_tokens=3, json=PERSON)
    assert reason == "length" and text.startswith('{"name":"')


def test_compile_failure_is_a_value_error(llm: LLM) -> None:
    params = SamplingParams(
        max_tokens=4, structured_outputs=StructuredOutputsParams(regex="(a{1000}){1000}")
    )
    with pytest.raises(ValueError, match="repeats too much"):
        llm.generate("x", params)
    assert llm.generate("x", SamplingParams(temperature=0, max_tokens=2))[0].outputs[0].text


def test_engine_compile_failure_is_a_value_error(llm: LLM) -> None:
    # Valid without a tokenizer (the check), refused when compiled against SmolLM2's.
    bad = StructuredOutputsParams(grammar="start: <|no_such_token|>")
    bad.check()
    with pytest.raises(ValueError, match=re.escape('unknown special token: "<|no_such_token|>"')):
        llm.generate("x", SamplingParams(max_tokens=4, structured_outputs=bad))
    assert llm.generate("x", SamplingParams(temperature=0, max_tokens=2))[0].outputs[0].text


def test_unconstrained_rows_keep_their_tokens(llm: LLM) -> None:
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = ["The capital of France is", "Once upon a time", "def fib(n):"]
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, plain)]
    constrained = SamplingParams(
        temperature=0, max_tokens=24, structured_outputs=StructuredOutputsParams(json=PERSON)
    )
    mixed = llm.generate(
        [prompts[0], PROMPT, prompts[1], prompts[2]], [plain, constrained, plain, plain]
    )
    assert [mixed[i].outputs[0].token_ids for i in (0, 2, 3)] == alone
    jsonschema.validate(json.loads(mixed[1].outputs[0].text), PERSON)
