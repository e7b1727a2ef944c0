"""Gemma 3 text models (``Gemma3ForCausalLM``; GGUF architecture ``gemma3``).

How the decoder differs from Llama's:

* Sliding-window ("local") layers interleave with global layers (``layer_types``; by default
  every ``sliding_window_pattern``-th layer, 6 in Gemma 3, is global). Local layers attend to
  the last ``sliding_window`` tokens and use their own rope base (``rope_local_base_freq``,
  unscaled); global layers use ``rope_theta`` with ``rope_scaling``.
* RMSNorm multiplies by ``1 + weight`` (checkpoints store ``weight`` centred on 0), computed in
  fp32 and cast back after the multiply. Each layer has four of them (before and after
  attention, before and after the MLP), and q and k get one per head before rope.
* Embeddings are scaled by ``sqrt(hidden_size)``, rounded to the model dtype.
* Attention scores are scaled by ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``.
* Optional tanh soft-capping of attention scores and of the final logits (Gemma 2 style; the
  released Gemma 3 configs leave both off).

Per-architecture settings live in ``config.extra``; both loaders fill them (see
``Gemma3Settings.from_config``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heron.attention import AttentionBackend
from heron.config import ModelConfig
from heron.layers.activation import check_activation, gated_activation
from heron.layers.embedding import Embedding
from heron.layers.linear import Linear
from heron.layers.rotary import RotaryEmbedding, apply_rotary
from heron.models.base import CausalLM

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True, slots=True)
class Gemma3Settings:
    """What Gemma 3 needs beyond ``ModelConfig``. Defaults are those of the reference config
    class (pattern 6, local rope base 10000, ``query_pre_attn_scalar`` 256, no soft-capping)."""

    layer_types: tuple[str, ...]
    query_pre_attn_scalar: float
    rope_local_base_freq: float
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None

    @classmethod
    def from_config(cls, config: ModelConfig) -> Gemma3Settings:
        """Read ``config.extra``: ``layer_types`` (or ``sliding_window_pattern``),
        ``query_pre_attn_scalar``, ``rope_local_base_freq``, ``rope_local_scaling``,
        ``attn_logit_softcapping``, ``final_logit_softcapping``. Raises ValueError for values
        Heron cannot honour."""
        extra = config.extra
        n = config.num_hidden_layers
        types = extra.get("layer_types")
        if types is None:
            pattern = int(extra.get("sliding_window_pattern") or 6)
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
        types = tuple(types)
        if len(types) != n or not set(types) <= {SLIDING, FULL}:
            raise ValueError(f"gemma3: layer_types must be {n} of {SLIDING!r}/{FULL!r}: {types}")
        if SLIDING in types and config.sliding_window is None:
            raise ValueError("gemma3: sliding_attention layers need a sliding_window")
        if extra.get("rope_local_scaling") not in (None, {}, {"rope_type": "default"}):
            raise ValueError("gemma3: rope scaling on sliding-window layers is not supported")
        hf = extra.get("hf_config") or {}
        if (hf.get("text_config") or hf).get("use_bidirectional_attention"):
            raise ValueError("gemma3: bidirectional attention (an encoder) is not supported")
        return cls(
            layer_types=types,
            query_pre_attn_scalar=float(extra.get("query_pre_attn_scalar") or 256),
            rope_local_base_freq=float(extra.get("rope_local_base_freq") or 10000.0),
            attn_logit_softcapping=_opt_float(extra.get("attn_logit_softcapping")),
            final_logit_softcapping=_opt_float(extra.get("final_logit_softcapping")),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` over the last axis; the multiply happens in fp32."""

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any

        def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Attention(nn.Module):
    def __init__(self, config: ModelConfig, settings: Gemma3Settings, layer_id: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = config.attention_bias
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.scale = settings.query_pre_attn_scalar**-0.5
        self.is_sliding = settings.layer_types[layer_id] == SLIDING
        self.sliding_window = config.sliding_window if self.is_sliding else None
        self.softcap = settings.attn_logit_softcapping

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
        q, k, v = qkv.split_with_sizes([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(n, self.num_heads, self.head_dim))
        k = self.k_norm(k.view(n, self.num_kv_heads, self.head_dim))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = v.reshape(n, self.num_kv_heads, self.head_dim)
        o = backend.forward(
            q, k, v, kv_cache, metadata, self.scale, self.sliding_window, softcap=self.softcap
        )  # [num_tokens, num_heads, head_dim]
        return self.o_proj(o.reshape(n, self.q_size))


class Gemma3MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.act = config.hidden_act
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gated_activation(self.act, self.gate_up_proj(x)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, settings: Gemma3Settings, layer_id: int) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Gemma3Attention(config, settings, layer_id)
        self.mlp = Gemma3MLP(config)
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, backend, metadata)
        x = x + self.post_attention_layernorm(a)
        m = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(m)


class Gemma3ForCausalLM(CausalLM):
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
        self.settings = Gemma3Settings.from_config(config)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        # Follows the model dtype when the model is cast, as the reference rounds it.
        self.register_buffer("embed_scale", torch.tensor(config.hidden_size**0.5), persistent=False)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, self.settings, i) for i in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        d, max_pos = config.head_dim, config.max_position_embeddings
        self.rotary_global = RotaryEmbedding(
            d, max_pos, config.rope_theta, config.rope_scaling, config.extra.get("rope_freqs")
        )
        self.rotary_local = RotaryEmbedding(d, max_pos, self.settings.rope_local_base_freq)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [num_tokens, hidden]
        x = x * self.embed_scale.to(x.dtype)
        # once per step each, shared by the layers of that kind
        rope_global = self.rotary_global.lookup(positions)
        rope_local = self.rotary_local.lookup(positions)
        sliding = self.settings.layer_types
        for i, layer in enumerate(self.layers):
            cos, sin = rope_local if sliding[i] == SLIDING else rope_global
            x = layer(x, cos, sin, kv_caches[i], backend, metadata)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()  # [num_sampled, vocab]
        cap = self.settings.final_logit_softcapping
        return logits if cap is None else softcap(logits, cap)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # q/k/v and gate/up checkpoint tensors land in row ranges of the fused parameters.
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            target, shard = name, None
            for frag, (fused, idx) in self.packed_modules_mapping.items():
                if f".{frag}." in name:
                    target, shard = name.replace(f".{frag}.", f".{fused}."), idx
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no place in Gemma3ForCausalLM")
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
