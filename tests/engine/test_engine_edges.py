"""Engine edge cases on a tiny random Llama (fast): dtypes, bad ids, all-or-nothing adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron import LLM, SamplingParams
from tests.models.tiny import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build("llama3", tmp_path_factory.mktemp("tiny") / "llama3"))


GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.mark.parametrize(
    ("dtype", "kv_dtype"),
    [("float32", "bfloat16"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")],
)
def test_model_and_kv_dtypes_mix(tiny: str, dtype: str, kv_dtype: str) -> None:
    exact = LLM(tiny, num_kv_blocks=32).generate({"prompt_token_ids": [5, 6, 7]}, GREEDY)
    llm = LLM(tiny, num_kv_blocks=32, dtype=dtype, kv_cache_dtype=kv_dtype)
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, GREEDY)
    assert len(out[0].outputs[0].token_ids) == 6
    # a lower-precision cache perturbs logits slightly; the first token is far from a tie
    assert out[0].outputs[0].token_ids[0] == exact[0].outputs[0].token_ids[0]


def test_int8_needs_float32_activations(tiny: str) -> None:
    with pytest.raises(ValueError, match="int8"):
        LLM(tiny, quantization="int8", dtype="bfloat16")


def test_stop_token_id_outside_vocab_rejected(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.generate({"prompt_token_ids": [1, 2]}, SamplingParams(stop_token_ids=[10**6]))
    assert not llm.engine.has_unfinished_requests()


def test_generate_is_all_or_nothing(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    too_long = {"prompt_token_ids": [1] * (llm.engine.max_model_len + 1)}
    with pytest.raises(ValueError, match="context length"):
        llm.generate([{"prompt_token_ids": [1, 2]}, too_long], GREEDY)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv_manager.num_free_blocks == 32


def test_sequence_ids_cannot_collide(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    engine = llm.engine
    engine.add_request("x", [1, 2, 3], SamplingParams(n=2, max_tokens=3))
    with pytest.raises(ValueError, match="collides"):
        engine.add_request("x#1", [1, 2, 3], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="in use|collides"):
        engine.add_request("x", [1, 2, 3], SamplingParams(max_tokens=3))
    finals = []
    while engine.has_unfinished_requests():
        finals += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in finals] == ["x"] and len(finals[0].outputs) == 2


def test_priority_needs_priority_policy(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    with pytest.raises(ValueError, match="priority"):
        llm.generate({"prompt_token_ids": [1, 2]}, GREEDY, priority=[3])
    llm = LLM(tiny, num_kv_blocks=32, scheduling_policy="priority")
    outs = llm.generate([{"prompt_token_ids": [1, 2]}] * 2, GREEDY, priority=[3, 0])
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)


def test_stop_string_on_the_last_allowed_token_reports_stop(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    base = llm.generate({"prompt_token_ids": [9, 8, 7]}, GREEDY)[0].outputs[0]
    last_char = base.text[-1]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, stop=[last_char])
    c = llm.generate({"prompt_token_ids": [9, 8, 7]}, params)[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == last_char
    assert c.text == base.text[: base.text.index(last_char)]


def test_logprobs_decoded_tokens(tiny: str) -> None:
    llm = LLM(tiny, num_kv_blocks=32)
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True, logprobs=2)
    c = llm.generate({"prompt_token_ids": [65, 66]}, params)[0].outputs[0]
    assert c.logprobs is not None
    tok = llm.get_tokenizer()
    for entry in c.logprobs:
        for tid, lp in entry.items():
            assert lp.decoded_token == tok.decode([tid], skip_special_tokens=False)


def test_unknown_model_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LLM(str(tmp_path / "missing.gguf"))
