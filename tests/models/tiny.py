"""Tiny random-weight checkpoints built with transformers' own reference classes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB = 258  # 256 byte tokens + <s> + </s>
PHI3_ORIGINAL_CONTEXT = 64  # the tiny phi3's longrope switches factor sets here


def save_byte_tokenizer(directory: Path) -> None:
    """A byte-level tokenizer with no merges: one token per byte, ids 0..255."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_map = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_map)}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False})
    )


def _byte_of(ch: str) -> int:
    # ByteLevel maps printable bytes to themselves and the rest to U+0100 onwards.
    code = ord(ch)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def build(kind: str, directory: Path, **overrides: Any) -> Path:
    """Save a seeded tiny model of ``kind`` to ``directory``.

    Kinds: llama3 (llama3 rope scaling), mistral (16-token sliding window), qwen2 (Qwen2.5
    style: q/k/v biases, tied embeddings, theta 1e6), qwen2-swa (a 16-token window on layers
    1 and 2 only), qwen3 (q/k norms, head_dim 32 != hidden / heads), phi3 (Phi-3.5/Phi-4-mini
    style: longrope with original context 64, rotary on 3/4 of each head, tied embeddings),
    phi3-swa (Phi-3-mini-4k style: no rope scaling, a 16-token sliding window).
    """
    import transformers

    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "tie_word_embeddings": False,
    }
    if kind == "llama3":
        cfg = transformers.LlamaConfig(
            **common,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
        model_cls = transformers.LlamaForCausalLM
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**common, sliding_window=16, rope_theta=10000.0)
        model_cls = transformers.MistralForCausalLM
    elif kind in ("qwen2", "qwen2-swa"):
        window = {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}
        cfg = transformers.Qwen2Config(
            **{**common, "tie_word_embeddings": True},
            rope_theta=1000000.0,
            **(window if kind == "qwen2-swa" else {}),
        )
        model_cls = transformers.Qwen2ForCausalLM
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(
            **{**common, "tie_word_embeddings": True}, head_dim=32, rope_theta=1000000.0
        )
        model_cls = transformers.Qwen3ForCausalLM
    elif kind == "phi3":
        cfg = transformers.Phi3Config(
            **{**common, "tie_word_embeddings": True},
            original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT,
            pad_token_id=None,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,  # 12 of 16 dims per head
                "short_factor": [1.0, 1.05, 1.2, 1.5, 2.0, 3.0],
                "long_factor": [1.0, 1.5, 3.0, 6.0, 12.0, 24.0],
            },
        )
        model_cls = transformers.Phi3ForCausalLM
    elif kind == "phi3-swa":
        cfg = transformers.Phi3Config(**common, sliding_window=16, pad_token_id=None)
        model_cls = transformers.Phi3ForCausalLM
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # random init is tiny; widen it so logits are well separated
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
            elif name.endswith("bias"):  # zeros at init: make a misplaced bias visible
                p.normal_(0.0, 0.2)
            else:  # norm weights, ones at init
                p.add_(torch.randn_like(p), alpha=0.1)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_byte_tokenizer(directory)
    return directory


# HF tensor name (after "model.layers.N.") -> llama.cpp's GGUF name (after "blk.N.").
_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.qkv_proj": "attn_qkv",  # phi3: fused
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",  # phi3: gate and up fused in one tensor
    "mlp.down_proj": "ffn_down",
}
_GGUF_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def write_gguf(hf_dir: Path, path: Path) -> Path:
    """Write the tiny HF checkpoint in ``hf_dir`` as an F32 GGUF laid out the way llama.cpp's
    converter lays out ``qwen3`` and ``phi3`` files, with the byte tokenizer as a gpt2 vocab.

    Neither architecture gets the llama Q/K row permutation (llama.cpp runs them with
    half-split "neox" rope, the HF layout).
    """
    import gguf
    from safetensors.torch import load_file

    hp = json.loads((hf_dir / "config.json").read_text())
    arch = hp["model_type"]
    if arch not in ("qwen3", "phi3"):
        raise ValueError(f"write_gguf: no layout for {arch!r}")
    writer = gguf.GGUFWriter(str(path), arch)
    n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
    rope = hp.get("rope_parameters") or {}
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(hp["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch == "qwen3":
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    if arch == "phi3":
        original = hp["original_max_position_embeddings"]
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_dimension_count(
            int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head
        )
        writer.add_sliding_window(hp.get("sliding_window") or 0)
        if rope.get("long_factor"):
            scale = hp["max_position_embeddings"] / original
            writer.add_rope_scaling_attn_factors(
                math.sqrt(1 + math.log(scale) / math.log(original))
            )
            for kind in ("long", "short"):
                factors = np.asarray(rope[f"{kind}_factor"], dtype=np.float32)
                writer.add_tensor(f"rope_factors_{kind}.weight", factors)

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokens = sorted(alphabet, key=_byte_of) + ["<s>", "</s>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3, 3])  # normal bytes, then two control tokens
    writer.add_token_merges(["a b"])  # names no merged token: skipped, one token per byte
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(False)

    for name, tensor in load_file(str(hf_dir / "model.safetensors")).items():
        if name in _GGUF_GLOBAL_NAMES:
            gguf_name = _GGUF_GLOBAL_NAMES[name]
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.{kind}"
        writer.add_tensor(gguf_name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
