"""The Llama family: Llama 2/3/3.x, Mistral, Qwen2 and SmolLM share this decoder.

Differences are config switches: q/k/v bias (Qwen2), sliding-window attention (Mistral),
rope scaling (Llama 3.1), tied embeddings (SmolLM). q/k/v and gate/up are fused at load time
so each layer runs four matmuls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from heron.attention import AttentionBackend
from heron.config import ModelConfig
from heron.layers.activation import check_activation, gated_activation
from heron.layers.linear import Linear
from heron.layers.norm import RMSNorm
from heron.layers.rotary import RotaryEmbedding, apply_rotary
from heron.models.base import CausalLM


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # Qwen2 always has q/k/v biases and no output bias; Llama's attention_bias covers all four.
        is_qwen2 = config.architecture == "Qwen2ForCausalLM"
        qkv_bias = config.attention_bias or is_qwen2
        o_bias = config.attention_bias and not is_qwen2
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.scale = self.head_dim**-0.5
        self.sliding_window = config.sliding_window
        self.layer_id = layer_id

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv_proj(x)  # [num_tokens, q_size + 2 * kv_size]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rotary(q.view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(k.view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(n, self.num_kv_heads, self.head_dim)
        o = backend.forward(q, k, v, kv_cache, metadata, self.scale, self.sliding_window)
        return self.o_proj(o.reshape(n, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.act = config.hidden_act
        bias = config.mlp_bias
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gated_activation(self.act, self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, backend, metadata)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(CausalLM):
    # checkpoint name fragment -> (fused parameter fragment, shard index)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            config.extra.get("rope_freqs"),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.lookup(positions)  # once per step, shared by every layer
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_caches[i], backend, metadata)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # [num_sampled, vocab]
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # q/k/v and gate/up checkpoint tensors land in row ranges of the fused parameters.
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            target, shard = name, None
            for frag, (fused, idx) in self.packed_modules_mapping.items():
                if f".{frag}." in name:
                    target, shard = name.replace(f".{frag}.", f".{fused}."), idx
                    break
            if target not in params:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no place in {type(self).__name__}"
                )
            param = params[target]
            if shard is None:
                if param.shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
                param.data.copy_(tensor)
            else:
                start, size = self._shard_range(target, shard)
                if tensor.shape[0] != size or tensor.shape[1:] != param.shape[1:]:
                    raise ValueError(f"{name}: unexpected shape {tuple(tensor.shape)}")
                param.data[start : start + size].copy_(tensor)
                target = f"{target}#{shard}"
            loaded.add(target)
        if self.config.tie_word_embeddings and "lm_head.weight" not in loaded:
            self.lm_head.weight = self.embed_tokens.weight  # type: ignore[assignment]
            loaded.add("lm_head.weight")
        expected: set[str] = set()
        for pname in params:
            shards = [
                i for fused, i in self.packed_modules_mapping.values() if f".{fused}." in pname
            ]
            if shards:
                expected.update(f"{pname}#{i}" for i in shards)
            else:
                expected.add(pname)
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:5]}...")

    def _shard_range(self, target: str, shard: int) -> tuple[int, int]:
        c = self.config
        if ".qkv_proj." in target:
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            return [(0, q), (q, kv), (q + kv, kv)][shard]
        inter = c.intermediate_size
        return [(0, inter), (inter, inter)][shard]
