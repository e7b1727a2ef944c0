"""Tiny random-weight checkpoints built with transformers' own reference classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB = 258  # 256 byte tokens + <s> + </s>


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
    """Save a seeded tiny model of ``kind`` (llama3, mistral, qwen2) to ``directory``."""
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
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**{**common, "tie_word_embeddings": True})
        model_cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # random init is tiny; widen it so logits are well separated
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_byte_tokenizer(directory)
    return directory
