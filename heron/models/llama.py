"""The Llama decoder (Llama 2/3/3.x, SmolLM), and the base class of its relatives.

Mistral, Qwen2, Qwen3 and Phi-3 subclass these classes in their own files and override the
hooks below where their math differs; everything else (fused q/k/v and gate/up projections,
rotary embeddings, paged attention, weight loading) is shared. q/k/v and gate/up are fused at
load time so each layer runs four matmuls.

Hooks, by class:

- ``LlamaAttention``: ``biases`` (which projections carry a bias), ``layer_window`` (the
  sliding window of one layer), ``norm_qk`` (anything applied to q and k before rope).
- ``LlamaForCausalLM``: ``attention_cls``, ``rotary_dim`` and ``build_rotary`` (rope layout
  and scaling), ``checkpoint_target`` (where a checkpoint tensor lands).

Layers without hooks describe themselves as plain parts (``describe_layers``); the kernels
may then run each step's layers in one call (``heron.kernels.fused``). Layers with hooks
always run op by op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from heron.attention import AttentionBackend
from heron.config import ModelConfig
from heron.kernels import Kernels
from heron.layers.activation import check_activation, gated_activation
from heron.layers.embedding import Embedding
from heron.layers.linear import Linear
from heron.layers.norm import RMSNorm
from heron.layers.rotary import RotaryEmbedding, apply_rotary
from heron.models.base import CausalLM, DecoderLayerSpec


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        qkv_bias, o_bias = self.biases(config)
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.scale = self.head_dim**-0.5
        self.sliding_window = self.layer_window(config, layer_id)
        self.layer_id = layer_id
        self.kernels: Kernels | None = None  # Heron's CPU kernels, set by the runner

    @staticmethod
    def biases(config: ModelConfig) -> tuple[bool, bool]:
        """(q/k/v bias, output bias). Llama's ``attention_bias`` covers all four."""
        return config.attention_bias, config.attention_bias

    @staticmethod
    def layer_window(config: ModelConfig, layer_id: int) -> int | None:
        """Sliding window of this layer, None for full attention. Llama has none."""
        return None

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Applied to q [num_tokens, num_heads, head_dim] and k [num_tokens, num_kv_heads,
        head_dim] before rope. Identity here."""
        return q, k

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
        q, k = self.norm_qk(
            q.view(n, self.num_heads, self.head_dim), k.view(n, self.num_kv_heads, self.head_dim)
        )
        if self.kernels is not None and q.dtype == torch.float32:
            # In place on the views into qkv; cos, sin [num_tokens, 1, rotary_dim // 2].
            self.kernels.rope_(q, cos.squeeze(1), sin.squeeze(1))
            self.kernels.rope_(k, cos.squeeze(1), sin.squeeze(1))
        else:
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, cos, sin)
        v = v.view(n, self.num_kv_heads, self.head_dim)
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
        self.kernels: Kernels | None = None  # set by the runner (float32 on CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.kernels is not None and self.act == "silu" and gate_up.dim() == 2:
            # The fused decode layer's activation, so both paths give the same numbers.
            return self.down_proj(self.kernels.silu_mul(gate_up.contiguous()))
        return self.down_proj(gated_activation(self.act, gate_up))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        attention_cls: type[LlamaAttention] = LlamaAttention,
    ) -> None:
        super().__init__()
        self.self_attn = attention_cls(config, layer_id)
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
        # x is this forward's own residual stream, so it is updated in place.
        h = self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, backend, metadata)
        h = self.post_attention_layernorm.add_forward(h, x)  # x += attention output
        return x.add_(self.mlp(h))

    def describe(self) -> DecoderLayerSpec | None:
        """This layer as plain parts, or None when its math has more than those parts: a
        subclass, or an attention hook such as Qwen3's q/k norms."""
        attn, mlp = self.self_attn, self.mlp
        norms = (self.input_layernorm, self.post_attention_layernorm)
        plain = (
            type(self) is LlamaDecoderLayer
            and type(mlp) is LlamaMLP
            and type(attn).forward is LlamaAttention.forward
            and type(attn).norm_qk is LlamaAttention.norm_qk
            and all(type(n) is RMSNorm for n in norms)
        )
        if not plain:
            return None
        return DecoderLayerSpec(
            input_norm=self.input_layernorm,
            qkv_proj=attn.qkv_proj,
            o_proj=attn.o_proj,
            post_attention_norm=self.post_attention_layernorm,
            gate_up_proj=mlp.gate_up_proj,
            down_proj=mlp.down_proj,
            act=mlp.act,
            num_heads=attn.num_heads,
            num_kv_heads=attn.num_kv_heads,
            head_dim=attn.head_dim,
            scale=attn.scale,
            sliding_window=attn.sliding_window,
        )


class LlamaForCausalLM(CausalLM):
    attention_cls: type[LlamaAttention] = LlamaAttention
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
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.attention_cls)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.rotary = self.build_rotary(config, self.rotary_dim(config))

    @classmethod
    def rotary_dim(cls, config: ModelConfig) -> int:
        """Leading dims of each head that rope rotates; the whole head here."""
        return config.head_dim

    @classmethod
    def build_rotary(cls, config: ModelConfig, rotary_dim: int) -> RotaryEmbedding:
        """The cos/sin table. Raises ValueError for a rope scaling type it does not know."""
        return RotaryEmbedding(
            rotary_dim,
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
        fused = self.fused  # bound by the runner with the KV cache (heron.kernels.fused)
        if fused is not None and fused.takes(metadata):
            fused.run(x, cos, sin, metadata)  # every layer in one call, x in place
            return self.norm(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_caches[i], backend, metadata)
        return self.norm(x)

    def describe_layers(self) -> list[DecoderLayerSpec] | None:
        specs = [cast(LlamaDecoderLayer, layer).describe() for layer in self.layers]
        return None if any(s is None for s in specs) else cast(list[DecoderLayerSpec], specs)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # [num_sampled, vocab]
        return self.lm_head(hidden).float()

    def checkpoint_target(self, name: str) -> tuple[str, tuple[int, ...] | None]:
        """(parameter name, shard indices) for a checkpoint tensor (``model.`` prefix removed).

        A split q/k/v or gate/up tensor lands in the row range of one shard of the fused
        parameter; any other tensor fills its parameter whole (shards None).
        """
        for frag, (fused, idx) in self.packed_modules_mapping.items():
            if f".{frag}." in name:
                return name.replace(f".{frag}.", f".{fused}."), (idx,)
        return name, None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # Loaded keys are parameter names, or "name#shard" for row ranges of fused parameters.
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            target, shards = self.checkpoint_target(name)
            if target not in params:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no place in {type(self).__name__}"
                )
            param = params[target]
            if shards is None:
                if param.shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
                param.data.copy_(tensor)
                loaded.add(target)
                continue
            # consecutive shards: rows from the first one's start to the last one's end
            start, _ = self._shard_range(target, shards[0])
            last_start, last_size = self._shard_range(target, shards[-1])
            size = last_start + last_size - start
            if tensor.shape[0] != size or tensor.shape[1:] != param.shape[1:]:
                raise ValueError(f"{name}: unexpected shape {tuple(tensor.shape)}")
            param.data[start : start + size].copy_(tensor)
            loaded.update(f"{target}#{i}" for i in shards)
        if self.config.tie_word_embeddings and "lm_head.weight" not in loaded:
            self.lm_head.weight = self.embed_tokens.weight  # type: ignore[assignment]
            loaded.add("lm_head.weight")
        expected: set[str] = set()
        for pname in params:
            shards_of = self.fused_shards(pname)
            if shards_of:
                expected.update(f"{pname}#{i}" for i in shards_of)
            else:
                expected.add(pname)
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:5]}...")

    def fused_shards(self, pname: str) -> tuple[int, ...]:
        """Shard indices of a fused parameter (e.g. (0, 1, 2) for qkv_proj); () otherwise."""
        return tuple(
            i for fused, i in self.packed_modules_mapping.values() if f".{fused}." in pname
        )

    def _shard_range(self, target: str, shard: int) -> tuple[int, int]:
        c = self.config
        if ".qkv_proj." in target:
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            return [(0, q), (q, kv), (q + kv, kv)][shard]
        inter = c.intermediate_size
        return [(0, inter), (inter, inter)][shard]
