"""BERT encoders (``BertModel``; all-MiniLM and other sentence-transformers checkpoints).

Word, position and token-type embeddings are summed and layer-normed; each encoder layer is
post-norm: ``x = LN(x + attn(x)); x = LN(x + ffn(x))`` with bidirectional attention over the
real tokens of a right-padded batch. q/k/v are fused at load time. Every sequence gets token
type 0 (single-segment inputs, as embedding requests are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from heron.config import ModelConfig
from heron.layers.embedding import Embedding
from heron.layers.linear import Linear
from heron.models.base import EmbeddingModel

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf), as HF's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

# HF name fragment -> Heron parameter fragment (after "encoder.layer.N." -> "layers.N.")
_LAYER_NAMES = {
    "attention.output.dense.": "o_proj.",
    "attention.output.LayerNorm.": "attn_norm.",
    "intermediate.dense.": "up_proj.",
    "output.dense.": "down_proj.",
    "output.LayerNorm.": "ffn_norm.",
}
_QKV = {"attention.self.query.": 0, "attention.self.key.": 1, "attention.self.value.": 2}


def _hf(config: ModelConfig) -> dict[str, object]:
    hf = config.extra.get("hf_config") or {}
    return hf if isinstance(hf, dict) else {}


class BertEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig, type_vocab_size: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, h)
        self.position_embeddings = Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = Embedding(type_vocab_size, h)
        self.norm = nn.LayerNorm(h, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # [batch, seq_len] -> [batch, seq_len, hidden]; positions 0..seq_len-1, token type 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        out: torch.Tensor = self.norm(x + self.token_type_embeddings.weight[0])
        return out


class BertLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv_proj = Linear(h, 3 * self.num_heads * self.head_dim, bias=True)
        self.o_proj = Linear(self.num_heads * self.head_dim, h, bias=True)
        self.attn_norm = nn.LayerNorm(h, eps=config.rms_norm_eps)
        self.up_proj = Linear(h, config.intermediate_size, bias=True)
        self.down_proj = Linear(config.intermediate_size, h, bias=True)
        self.ffn_norm = nn.LayerNorm(h, eps=config.rms_norm_eps)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq_len, head_dim]
        # mask [batch, 1, 1, seq_len]: every query sees the real keys of its own sequence
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        x = self.attn_norm(x + self.o_proj(o))
        out: torch.Tensor = self.ffn_norm(x + self.down_proj(self.act(self.up_proj(x))))
        return out


class BertModel(EmbeddingModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hf = _hf(config)
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BERT position_embedding_type {hf['position_embedding_type']!r} is not "
                "supported (only 'absolute')"
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("BERT as a decoder or with cross-attention is not supported")
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported BERT activation {config.hidden_act!r}; known: {sorted(_ACTIVATIONS)}"
            )
        type_vocab = hf.get("type_vocab_size", 2)
        if not isinstance(type_vocab, int) or type_vocab < 1:
            raise ValueError(f"BERT type_vocab_size must be a positive integer, got {type_vocab!r}")
        self.config = config
        self.embeddings = BertEmbeddings(config, type_vocab)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = self.embeddings(input_ids)  # [batch, seq_len, hidden]
        mask = attention_mask[:, None, None, :]  # broadcast over heads and queries
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        qkv_rows = self.config.num_attention_heads * self.config.head_dim
        for hf_name, tensor in weights:
            target = _param_name(hf_name)
            if target is None:
                continue
            name, shard = target
            if name not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in BertModel")
            param = params[name]
            if shard is None:
                if param.shape != tensor.shape:
                    raise ValueError(
                        f"{hf_name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}"
                    )
                param.data.copy_(tensor)
            else:
                if tensor.shape[0] != qkv_rows or tensor.shape[1:] != param.shape[1:]:
                    raise ValueError(f"{hf_name}: unexpected shape {tuple(tensor.shape)}")
                param.data[shard * qkv_rows : (shard + 1) * qkv_rows].copy_(tensor)
                name = f"{name}#{shard}"
            loaded.add(name)
        expected: set[str] = set()
        for pname in params:
            if ".qkv_proj." in pname:
                expected.update(f"{pname}#{i}" for i in range(3))
            else:
                expected.add(pname)
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:5]}...")


def _param_name(hf_name: str) -> tuple[str, int | None] | None:
    """(Heron parameter name, q/k/v shard or None) for an HF tensor name; None for tensors an
    embedding model does not use (the pooler, an MLM head, the position-id buffer)."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
        return None
    # Old checkpoints call LayerNorm parameters gamma/beta.
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
    name = name.replace("LayerNorm.beta", "LayerNorm.bias")
    if name.startswith("embeddings."):
        return name.replace("embeddings.LayerNorm.", "embeddings.norm."), None
    if not name.startswith("encoder.layer."):
        return name, None  # reported as unknown by the caller
    layer, _, rest = name.removeprefix("encoder.layer.").partition(".")
    for frag, shard in _QKV.items():
        if rest.startswith(frag):
            return f"layers.{layer}.qkv_proj.{rest.removeprefix(frag)}", shard
    for frag, ours in _LAYER_NAMES.items():
        if rest.startswith(frag):
            return f"layers.{layer}.{ours}{rest.removeprefix(frag)}", None
    return name, None
