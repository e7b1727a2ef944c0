"""GGUF LoRA adapters in llama.cpp's layout (written here with ``gguf``): the same weights
as the PEFT adapter they were converted from (Q/K rows put back in HF order), the same
outputs as the merged PEFT reference; files that are not a fitting adapter are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from heron.loader import load_checkpoint
from heron.lora import LoRAError, LoRARequest, load_adapter
from tests.lora.adapters import (
    capture_logits,
    greedy,
    lora_llm,
    merged_reference,
    prompts,
    reference_logits,
    write_gguf_adapter,
)


def _hf_config(base: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((base / "config.json").read_text())
    return config


def test_gguf_adapter_matches_peft(llama_set: dict[str, Path], tmp_path: Path) -> None:
    base, peft_dir = llama_set["base"], llama_set["all16"]
    path = write_gguf_adapter(peft_dir, tmp_path / "all16.gguf", "llama", _hf_config(base))
    config = load_checkpoint(base).config
    from_peft, from_gguf = (
        load_adapter(str(peft_dir), config, 16),
        load_adapter(str(path), config, 16),
    )
    assert from_gguf.digest == from_peft.digest  # bit for bit, scale included
    assert len(from_gguf.modules) == 3 * 7

    llm = lora_llm(base)
    captured = capture_logits(llm)
    ps = prompts(2)
    lora = LoRARequest("gguf", 3, str(path))
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], greedy(), lora_request=lora)
    ref = merged_reference(base, peft_dir)
    for prompt, out in zip(ps, outs, strict=True):
        gen = out.outputs[0].token_ids
        want = reference_logits(ref, prompt, gen)
        assert want.argmax(-1).tolist() == gen
        torch.testing.assert_close(torch.stack(captured[out.request_id]), want, atol=2e-4, rtol=0)


def test_gguf_adapter_for_another_architecture_is_refused(
    llama_set: dict[str, Path], tmp_path: Path
) -> None:
    base = llama_set["base"]
    config = load_checkpoint(base).config
    path = write_gguf_adapter(llama_set["qv8"], tmp_path / "q.gguf", "qwen2", _hf_config(base))
    with pytest.raises(LoRAError, match="does not fit a LlamaForCausalLM"):
        load_adapter(str(path), config, 16)
    good = write_gguf_adapter(llama_set["qv8"], tmp_path / "l.gguf", "llama", _hf_config(base))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(LoRAError, match="cannot read the GGUF adapter"):
        load_adapter(str(cut), config, 16)
