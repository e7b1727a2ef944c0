"""Bad adapters are refused with a LoRAError that names the problem, and change nothing:
no adapter is loaded, no request is queued, and the engine keeps serving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from heron import LLM
from heron.lora import LoRAError, LoRARequest
from tests.lora.adapters import greedy, lora_llm, prompts


def _edit_tensors(d: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    file = d / "adapter_model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def _edit_config(d: Path, **changes: object) -> None:
    file = d / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def wrong_shape(d: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if "q_proj.lora_B" in k)
        t[key] = torch.zeros(t[key].shape[0] + 4, t[key].shape[1])

    _edit_tensors(d, edit)


def unknown_target(d: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 64)
        t["base_model.model.lm_head.lora_B.weight"] = torch.zeros(258, 8)

    _edit_tensors(d, edit)


def missing_half(d: Path) -> None:
    _edit_tensors(d, lambda t: t.pop(next(k for k in t if "v_proj.lora_B" in k)))


def layer_out_of_range(d: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        for k in [k for k in t if ".layers.0." in k]:
            t[k.replace(".layers.0.", ".layers.9.")] = t.pop(k)

    _edit_tensors(d, edit)


def not_finite(d: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if "lora_A" in k)
        t[key][0, 0] = float("nan")

    _edit_tensors(d, edit)


def over_float16(d: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if "lora_B" in k)
        t[key][0, 0] = 1e6  # finite in float32, past float16's 65504 in the slots

    _edit_tensors(d, edit)


def truncated(d: Path) -> None:
    file = d / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:100])


def garbage_config(d: Path) -> None:
    (d / "adapter_config.json").write_text("{not json")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong shape": (wrong_shape, "do not fit the base model"),
    "unknown target": (unknown_target, "not a LoRA factor"),
    "missing half": (missing_half, "lora_B is missing"),
    "layer out of range": (layer_out_of_range, "has 3 layers"),
    "not finite": (not_finite, "not finite"),
    "over float16": (over_float16, "exceeds float16's range \\(65504\\); serve this adapter with"),
    "truncated file": (truncated, "cannot read the adapter weights"),
    "corrupt config": (garbage_config, "cannot read the adapter config"),
    "dora": (lambda d: _edit_config(d, use_dora=True), "DoRA"),
    "bias": (lambda d: _edit_config(d, bias="all"), "train biases"),
    "bad alpha": (lambda d: _edit_config(d, lora_alpha=-1), "lora_alpha"),
}


@pytest.fixture(scope="module")
def llm(llama_set: dict[str, Path]) -> LLM:
    return lora_llm(llama_set["base"], max_lora_rank=16)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_peft_adapter_is_refused(
    case: str, llm: LLM, llama_set: dict[str, Path], tmp_path: Path
) -> None:
    corrupt, message = CASES[case]
    bad = Path(shutil.copytree(llama_set["all16"], tmp_path / "bad"))
    corrupt(bad)
    expect_refused(llm, LoRARequest("bad", 99, str(bad)), message)


def expect_refused(llm: LLM, lora: LoRARequest, message: str) -> None:
    manager = llm.engine.runner.lora
    assert manager is not None
    loaded = [a.int_id for a in manager.adapters]
    p = {"prompt_token_ids": prompts(1)[0]}
    with pytest.raises(LoRAError, match=message):
        llm.generate([p, p], greedy(), lora_request=[None, lora])
    assert [a.int_id for a in manager.adapters] == loaded
    assert not llm.engine.has_unfinished_requests()
    assert llm.generate([p], greedy(2))[0].outputs[0].token_ids  # still serving


def test_rank_over_the_cap_is_refused(llama_set: dict[str, Path]) -> None:
    small = lora_llm(llama_set["base"], max_lora_rank=8)
    expect_refused(small, LoRARequest("big", 1, str(llama_set["all16"])), "over max_lora_rank 8")


def test_paths_that_hold_no_adapter(llm: LLM, llama_set: dict[str, Path], tmp_path: Path) -> None:
    expect_refused(llm, LoRARequest("x", 5, str(tmp_path / "nowhere")), "no such adapter")
    expect_refused(llm, LoRARequest("x", 5, str(llama_set["base"])), "not a LoRA adapter")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    expect_refused(llm, LoRARequest("x", 5, str(tmp_path / "fake.gguf")), "GGUF adapter")


def test_one_int_id_is_one_adapter(llm: LLM, llama_set: dict[str, Path]) -> None:
    p = [{"prompt_token_ids": prompts(1)[0]}]
    llm.generate(p, greedy(2), lora_request=LoRARequest("qv8", 42, str(llama_set["qv8"])))
    other = LoRARequest("all16", 42, str(llama_set["all16"]))
    expect_refused(llm, other, "int_id 42 is already adapter 'qv8'")


def test_float32_slots_take_what_float16_refuses(
    llama_set: dict[str, Path], tmp_path: Path
) -> None:
    big = Path(shutil.copytree(llama_set["all16"], tmp_path / "big"))
    over_float16(big)
    wide = lora_llm(llama_set["base"], lora_dtype="float32")
    p = [{"prompt_token_ids": prompts(1)[0]}]
    out = wide.generate(p, greedy(2), lora_request=LoRARequest("big", 1, str(big)))
    assert len(out[0].outputs[0].token_ids) == 2


def test_an_unknown_lora_dtype_is_refused(llama_set: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="lora_dtype must be one of auto, float16, float32"):
        lora_llm(llama_set["base"], lora_dtype="bfloat16")


def test_lora_needs_enable_lora(llama_set: dict[str, Path]) -> None:
    plain = LLM(str(llama_set["base"]), num_kv_blocks=32)
    lora = LoRARequest("qv8", 1, str(llama_set["qv8"]))
    with pytest.raises(ValueError, match="without LoRA support"):
        plain.generate([{"prompt_token_ids": [1, 2, 3]}], greedy(), lora_request=lora)
    with pytest.raises(ValueError, match="one per prompt"):
        plain.generate(["a", "b"], greedy(), lora_request=[lora])
    with pytest.raises(ValueError, match="int_id"):
        LoRARequest("x", 0, "/p")
