"""Tensor parallelism: two processes give the same greedy tokens as one, on a tiny random
model of every generating family (q/k/v biases, tied embeddings, fused Phi-3 tensors, q/k
norms, sliding windows, Gemma 3's sandwich norms), float32 and quantized."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from heron import LLM, SamplingParams
from heron.distributed.group import WorkerError
from tests.models.test_gemma3_tiny import build_gemma3
from tests.models.tiny import build, write_gguf

PARAMS = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


def prompts(num: int, length: int, seed: int) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(256) for _ in range(length)]} for _ in range(num)]


def tokens(path: Path, tp: int, batch: list[dict[str, list[int]]], **kw: object) -> list[list[int]]:
    llm = LLM(str(path), tensor_parallel_size=tp, kv_cache_memory_bytes=8 << 20, **kw)  # type: ignore[arg-type]
    try:
        if tp > 1:
            runner = llm.engine.runner
            assert runner.model.fused is None  # the fused decode path has no all-reduce
            # this rank's KV heads only
            assert runner.kv_caches.shape[4] == runner.model_config.num_key_value_heads // tp
        out = llm.generate(batch, PARAMS)  # type: ignore[arg-type]
        return [list(o.outputs[0].token_ids) for o in out]
    finally:
        llm.close()


def same_tokens(path: Path, batch: list[dict[str, list[int]]], **kw: object) -> None:
    want = tokens(path, 1, batch, **kw)
    got = tokens(path, 2, batch, **kw)
    assert got == want
    assert all(len(t) == PARAMS.max_tokens for t in want)


@pytest.mark.parametrize(
    ("kind", "quantization"),
    [("mistral", None), ("qwen2-swa", None), ("qwen3", "q8_0"), ("phi3", "q4_1")],
)
def test_tp2_matches_one_process(kind: str, quantization: str | None, tmp_path: Path) -> None:
    """Prompts past the 16-token sliding windows, prefill chunked in 24-token steps; Q8_0/Q4_1
    weights split at multiples of the 32-wide block quantize as the whole weight does. Phi-3
    loads from GGUF (fused attn_qkv and ffn_up tensors)."""
    path = build(kind, tmp_path / kind)
    if kind == "phi3":
        path = write_gguf(path, tmp_path / "phi3.gguf")
    same_tokens(path, prompts(3, 30, 1), max_num_batched_tokens=24, quantization=quantization)


def test_tp2_matches_gemma3(tmp_path: Path) -> None:
    path = build_gemma3(tmp_path / "gemma3", attn_softcap=50.0, final_softcap=30.0)
    same_tokens(path, prompts(2, 30, 2))


def test_tp2_llama_large_step_and_biases(tmp_path: Path) -> None:
    """Llama 3 with biases on q/k/v, o_proj and the MLP (o's and down's added once, by rank
    0), Q8_0, and a first step of 1600 tokens whose inputs take more than one broadcast."""
    path = build("llama3", tmp_path / "llama3", attention_bias=True, mlp_bias=True)
    same_tokens(path, prompts(8, 200, 3), quantization="q8_0")


def test_dead_worker_fails_steps_clearly(tmp_path: Path) -> None:
    """A worker that dies makes each later step raise at once (never hang), naming it."""
    path = build("llama3", tmp_path / "llama3", num_hidden_layers=1)
    llm = LLM(str(path), tensor_parallel_size=2, kv_cache_memory_bytes=8 << 20)
    try:
        worker = llm.engine.runner.tp.workers[0]  # type: ignore[union-attr]
        worker.kill()
        worker.wait()
        for _ in range(2):
            with pytest.raises(WorkerError, match="rank 1 exited"):
                llm.generate("hello", PARAMS)
    finally:
        llm.close()
