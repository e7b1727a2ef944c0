"""Structured outputs through the engine core on a tiny random Llama (byte vocabulary):
requests wait for their grammar off the step loop, can be aborted while compiling, and a
grammar that fails to compile is rejected without disturbing the others."""

from __future__ import annotations

import pytest

from heron.engine.llm_engine import LLMEngine
from heron.engine.protocol import EngineCoreRequest
from heron.sampling_params import SamplingParams
from heron.structured import StructuredOutputsParams
from tests.models.tiny import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    return LLMEngine(str(build("llama3", tmp_path_factory.mktemp("tiny") / "llama3")))


def run(engine: LLMEngine) -> dict[str, str]:
    texts = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                texts[out.request_id] = out.outputs[0].text
    return texts


def test_constrained_and_free_requests_share_a_batch(engine: LLMEngine) -> None:
    free = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine.add_request("alone", [5, 6, 7], free)
    alone = run(engine)["alone"]
    so = StructuredOutputsParams(choice=["alpha", "beta"])
    engine.add_request("c", [5, 6, 7], SamplingParams(temperature=0.0, structured_outputs=so))
    engine.add_request("f", [5, 6, 7], free)
    texts = run(engine)
    assert texts["c"] in ("alpha", "beta")
    assert texts["f"] == alone  # the constrained row does not change its neighbour


def test_abort_while_compiling(engine: LLMEngine) -> None:
    so = StructuredOutputsParams(regex="[a-z]{3}")
    engine.add_request("gone", [5, 6], SamplingParams(temperature=0.0, structured_outputs=so))
    assert "gone" in engine.core.compiling
    engine.abort("gone")
    assert not engine.core.compiling and not engine.has_unfinished_requests()


def test_a_grammar_the_core_cannot_compile_is_rejected(engine: LLMEngine) -> None:
    bad = SamplingParams(temperature=0.0, structured_outputs=StructuredOutputsParams(regex="(a"))
    engine.core.add_request(EngineCoreRequest("bad", [5, 6], bad))
    while engine.core.compiling:
        engine.core.step()
    rejected = engine.core.take_rejected()
    assert [r.request_id for r in rejected] == ["bad"] and "regex" in rejected[0].message
    assert not engine.has_unfinished_requests()


def test_the_front_door_checks_constraints_before_queueing(engine: LLMEngine) -> None:
    deep: dict[str, object] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(ValueError, match="nests deeper than 32"):
        StructuredOutputsParams(json=deep)
    # A constraint that passes its own checks but not llguidance's is refused at the door.
    bad = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"$ref": "#/x"}}})
    with pytest.raises(ValueError, match="JSON schema"):
        engine.add_request("bad-ref", [5, 6], SamplingParams(structured_outputs=bad))
    assert not engine.has_unfinished_requests() and not engine.core.compiling
