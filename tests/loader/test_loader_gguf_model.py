"""GGUF -> ModelConfig + HF-named weights: tiny synthetic files and SmolLM2 vs transformers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from heron.loader.gguf import GGUFError
from heron.loader.gguf_model import iter_gguf_weights, load_gguf_checkpoint

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, LAYERS = 32, 4, 2, 8, 48, 40, 2


def converter_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What HF -> GGUF converters do to llama Q/K rows: split each head's rows into the two
    rotary halves and interleave them."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tiny_model(arch: str, *, bias: bool = False, tied: bool = True) -> tuple[dict, dict, dict]:
    """(metadata, gguf tensors, expected HF tensors) for a 2-layer model."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    hf: dict[str, np.ndarray] = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN)}
    gg: dict[str, np.ndarray] = {"token_embd.weight": hf["model.embed_tokens.weight"]}
    permute = arch == "llama"
    for i in range(LAYERS):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        proj = {
            "attn_q": ("self_attn.q_proj", HEADS * HEAD_DIM, HEADS),
            "attn_k": ("self_attn.k_proj", KV_HEADS * HEAD_DIM, KV_HEADS),
            "attn_v": ("self_attn.v_proj", KV_HEADS * HEAD_DIM, 0),
        }
        for gname, (hname, rows, heads) in proj.items():
            kinds = ["weight", "bias"] if bias else ["weight"]
            for kind in kinds:
                w = rand(rows, HIDDEN) if kind == "weight" else rand(rows)
                hf[f"{p}{hname}.{kind}"] = w
                gg[f"{b}{gname}.{kind}"] = converter_permute(w, heads) if permute and heads else w
        for gname, hname, shape in (
            ("attn_output", "self_attn.o_proj", (HIDDEN, HEADS * HEAD_DIM)),
            ("ffn_gate", "mlp.gate_proj", (FFN, HIDDEN)),
            ("ffn_up", "mlp.up_proj", (FFN, HIDDEN)),
            ("ffn_down", "mlp.down_proj", (HIDDEN, FFN)),
            ("attn_norm", "input_layernorm", (HIDDEN,)),
            ("ffn_norm", "post_attention_layernorm", (HIDDEN,)),
        ):
            hf[f"{p}{hname}.weight"] = gg[f"{b}{gname}.weight"] = rand(*shape)
    hf["model.norm.weight"] = gg["output_norm.weight"] = rand(HIDDEN)
    if not tied:
        hf["lm_head.weight"] = gg["output.weight"] = rand(VOCAB, HIDDEN)
    md: dict[str, Any] = {
        f"{arch}.block_count": LAYERS,
        f"{arch}.context_length": 256,
        f"{arch}.embedding_length": HIDDEN,
        f"{arch}.feed_forward_length": FFN,
        f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 500000.0,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.eot_token_id": 3,
    }
    return md, gg, hf


MakeGGUF = Callable[..., Path]


def check_weights(path: Path, hf: dict[str, np.ndarray]) -> None:
    config, g = load_gguf_checkpoint(path)
    with g:
        got = dict(iter_gguf_weights(g, config))
    assert sorted(got) == sorted(hf)
    for name, want in hf.items():
        assert torch.equal(got[name], torch.from_numpy(want)), name


def test_tiny_llama_unpermutes_q_and_k(tmp_path: Path, make_gguf: MakeGGUF) -> None:
    md, gg, hf = tiny_model("llama")
    path = make_gguf(tmp_path / "llama.gguf", "llama", md, gg)
    config, g = load_gguf_checkpoint(path)
    g.close()
    assert config.architecture == "LlamaForCausalLM"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (VOCAB, HIDDEN, FFN)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 8)
    assert config.num_hidden_layers == LAYERS and config.max_position_embeddings == 256
    assert config.rope_theta == 500000.0 and config.rms_norm_eps == pytest.approx(1e-5)
    assert config.tie_word_embeddings and not config.attention_bias and config.rope_scaling is None
    assert config.bos_token_id == 1 and config.eos_token_ids == [2, 3]
    check_weights(path, hf)


def test_tiny_qwen2_keeps_rows_and_biases(tmp_path: Path, make_gguf: MakeGGUF) -> None:
    md, gg, hf = tiny_model("qwen2", bias=True, tied=False)
    md["qwen2.rope.scaling.type"] = "yarn"
    md["qwen2.rope.scaling.factor"] = 4.0
    md["qwen2.rope.scaling.original_context_length"] = 64
    gg["rope_freqs.weight"] = np.linspace(1, 2, HEAD_DIM // 2, dtype=np.float32)
    path = make_gguf(tmp_path / "qwen2.gguf", "qwen2", md, gg)
    config, g = load_gguf_checkpoint(path)
    g.close()
    assert config.architecture == "Qwen2ForCausalLM"
    assert config.attention_bias and not config.tie_word_embeddings
    assert config.rope_scaling == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    assert torch.equal(config.extra["rope_freqs"], torch.linspace(1, 2, HEAD_DIM // 2))
    check_weights(path, hf)  # rope_freqs is not yielded; lm_head is


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda md, gg: md.update({"llama.block_count": 1000}), "block_count is 1000"),
        (lambda md, gg: md.update({"llama.vocab_size": 41}), "does not match token_embd"),
        (lambda md, gg: md.update({"llama.attention.head_count": 8}), "config implies"),
        (lambda md, gg: md.update({"llama.context_length": 2**30}), "context_length"),
        (lambda md, gg: md.update({"tokenizer.ggml.eos_token_id": 40}), "outside the vocabulary"),
        (lambda md, gg: md.pop("llama.embedding_length"), "missing metadata"),
        (lambda md, gg: md.update({"llama.embedding_length": "32"}), "must be an integer"),
        (
            lambda md, gg: gg.update({"blk.0.mystery.weight": gg["output_norm.weight"]}),
            "no mapping",
        ),
        (lambda md, gg: gg.update({"output.weight": gg["output_norm.weight"]}), "config implies"),
    ],
)
def test_inconsistent_files_are_rejected(
    tmp_path: Path, make_gguf: MakeGGUF, edit: Callable[[dict, dict], Any], pattern: str
) -> None:
    md, gg, _ = tiny_model("llama")
    edit(md, gg)
    path = make_gguf(tmp_path / "bad.gguf", "llama", md, gg)
    with pytest.raises(GGUFError, match=pattern) as info:
        load_gguf_checkpoint(path)
    assert str(path) in str(info.value)


def test_unknown_architecture(tmp_path: Path, make_gguf: MakeGGUF) -> None:
    md, gg, _ = tiny_model("llama")
    path = make_gguf(tmp_path / "gpt9.gguf", "gpt9", md, gg)
    with pytest.raises(GGUFError, match="unsupported architecture 'gpt9'"):
        load_gguf_checkpoint(path)


def test_smollm2_config(smollm2_path: str) -> None:
    config, g = load_gguf_checkpoint(smollm2_path)
    g.close()
    assert config.architecture == "LlamaForCausalLM"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (49152, 576, 1536)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        30,
        9,
        3,
    )
    assert config.head_dim == 64 and config.max_position_embeddings == 8192
    assert config.rope_theta == 100000.0 and config.rms_norm_eps == pytest.approx(1e-5)
    assert config.tie_word_embeddings and config.bos_token_id == 1 and config.eos_token_ids == [2]


@pytest.mark.slow
def test_smollm2_weights_match_transformers(smollm2_path: str) -> None:
    import transformers as transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_path), gguf_file=os.path.basename(smollm2_path), dtype=torch.float32
    )
    reference = model.state_dict()
    del model
    config, g = load_gguf_checkpoint(smollm2_path)
    with g:
        ours = dict(iter_gguf_weights(g, config))
    assert config.tie_word_embeddings and "lm_head.weight" not in ours
    assert torch.equal(reference.pop("lm_head.weight"), ours["model.embed_tokens.weight"])
    assert sorted(ours) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
