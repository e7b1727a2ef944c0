"""Llama 3 (llama3 rope scaling), Mistral (sliding window) and Qwen2/2.5 (q/k/v biases, tied
embeddings, per-layer sliding windows) on tiny random weights, against transformers'
reference classes through the paged cache (``parity.py``: tolerance 1e-4, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron import LLM, SamplingParams
from tests.models.parity import check_parity
from tests.models.tiny import build

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["llama3", "mistral", "qwen2", "qwen2-swa"])
def test_logits_match_transformers(kind: str, tmp_path: Path) -> None:
    path = build(kind, tmp_path / kind)
    check_parity(path, path, kind)


def test_mistral_sliding_window_is_applied(tmp_path: Path) -> None:
    """With a window of 16 and one layer (so the receptive field is the window itself),
    tokens more than 16 back must not influence the next token, while those inside do."""
    path = build("mistral", tmp_path / "m", num_hidden_layers=1)
    llm = LLM(str(path), num_kv_blocks=64, block_size=4)
    logits: list[torch.Tensor] = []
    llm.engine.runner.logits_hook = lambda rows, lg: logits.append(lg.clone())
    params = SamplingParams(temperature=0.0, max_tokens=1)
    tail = list(range(100, 116))  # the last 16 tokens
    llm.generate([{"prompt_token_ids": [1] * 20 + tail}], params)
    llm.generate([{"prompt_token_ids": [2] * 20 + tail}], params)
    llm.generate([{"prompt_token_ids": [2] * 20 + [9] + tail[1:]}], params)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)
    assert (logits[0] - logits[2]).abs().max() > 1e-3


def test_qwen2_windows_follow_layer_types(tmp_path: Path) -> None:
    """qwen2-swa slides on layers 1 and 2 only (max_window_layers=1); Qwen2.5 as released
    (use_sliding_window false) has no window at all."""
    from heron.models.qwen2 import qwen_layer_window

    swa = LLM(str(build("qwen2-swa", tmp_path / "swa")), num_kv_blocks=16)
    layers = swa.engine.runner.model.layers
    assert [layer.self_attn.sliding_window for layer in layers] == [None, 16, 16]
    cfg = swa.engine.model_config
    del cfg.extra["hf_config"]["layer_types"]  # an older config: max_window_layers decides
    assert [qwen_layer_window(cfg, i) for i in range(3)] == [None, 16, 16]
    plain = LLM(str(build("qwen2", tmp_path / "plain")), num_kv_blocks=16)
    assert plain.engine.model_config.sliding_window is None
