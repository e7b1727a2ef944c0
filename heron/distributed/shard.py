"""Which part of the model one tensor-parallel rank holds.

Megatron's split, per decoder layer:

- column-parallel (output rows split; no communication): q/k/v by heads (rank r keeps query
  heads [r * H/N, (r+1) * H/N) and the matching KV heads), gate/up by intermediate columns.
- row-parallel (input columns split; one all-reduce of the output): o_proj and down_proj. Their
  bias, if any, stays on rank 0 only (the others add zeros), so the sum adds it once.

Embeddings, norms (q/k norms act per head, the same on every head) and the LM head stay
replicated: the final hidden state is whole on every rank after the last all-reduce, and only
rank 0 computes logits. Slicing happens on the checkpoint stream, before quantization, so a
rank never keeps more than its shard; Q4_1/Q8_0 blocks run along a row's inputs, so a row
split at a multiple of the 32-wide block quantizes exactly as the whole weight does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import nn

from heron.config import EngineConfig, ModelConfig
from heron.kernels.quant import BLOCK
from heron.layers.linear import Linear

# Checkpoint name fragment -> how its tensors split (see the module docstring).
_QUERY, _KV, _QKV = ("self_attn.q_proj.",), ("self_attn.k_proj.", "self_attn.v_proj."), "qkv_proj."
_COLUMN = ("mlp.gate_proj.", "mlp.up_proj.")
_ROW = ("self_attn.o_proj.", "mlp.down_proj.")
_GATE_UP = "mlp.gate_up_proj."

Weights = Callable[[], Iterator[tuple[str, torch.Tensor]]]


def check_shardable(config: ModelConfig, engine: EngineConfig) -> None:
    """Raise ValueError when ``config`` cannot be split ``engine.tensor_parallel_size`` ways:
    heads or KV heads or the MLP width not divisible, or (quantized) a row-parallel shard
    that is not whole 32-wide blocks."""
    n = engine.tensor_parallel_size
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, name)
        if value % n:
            raise ValueError(
                f"tensor_parallel_size {n} does not divide the model's {name} ({value})"
            )
    if engine.quantization is not None:
        for what, width in (
            ("attention output width", config.num_attention_heads * config.head_dim // n),
            ("MLP width", config.intermediate_size // n),
        ):
            if width % BLOCK:
                raise ValueError(
                    f"tensor_parallel_size {n}: each rank's {what} ({width}) is not a "
                    f"multiple of the {BLOCK}-wide quantization block"
                )


def shard_config(config: ModelConfig, n: int) -> ModelConfig:
    """The config one rank's model is built from: 1/n of the heads and MLP columns."""
    return dataclasses.replace(
        config,
        num_attention_heads=config.num_attention_heads // n,
        num_key_value_heads=config.num_key_value_heads // n,
        intermediate_size=config.intermediate_size // n,
    )


def _rows(t: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    size = t.shape[0] // n
    return t[rank * size : (rank + 1) * size]


def shard_tensor(
    name: str, tensor: torch.Tensor, config: ModelConfig, rank: int, n: int
) -> torch.Tensor:
    """Rank ``rank``'s part of checkpoint tensor ``name`` (HF naming), a fresh tensor so the
    whole one can be freed; replicated tensors come back unchanged."""
    if any(f in name for f in _QUERY + _KV + _COLUMN):
        return _rows(tensor, rank, n).clone()
    if _QKV in name:  # fused [q | k | v] rows (Phi-3)
        q, kv = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        )
        parts = tensor.split_with_sizes([q, kv, kv], dim=0)
        return torch.cat([_rows(p, rank, n) for p in parts])
    if _GATE_UP in name:  # fused [gate | up] rows (Phi-3)
        return torch.cat([_rows(p, rank, n) for p in tensor.chunk(2, dim=0)])
    if any(f in name for f in _ROW):
        if tensor.dim() == 1:  # the bias: added once, by rank 0
            return tensor if rank == 0 else torch.zeros_like(tensor)
        size = tensor.shape[1] // n
        return tensor[:, rank * size : (rank + 1) * size].clone()
    return tensor


def shard_weights(weights: Weights, config: ModelConfig, rank: int, n: int) -> Weights:
    """``weights`` (a fresh pass per call) with every tensor cut to rank ``rank``'s part."""

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights():
            yield name, shard_tensor(name, tensor, config, rank, n)

    return stream


def row_parallel_linears(model: nn.Module) -> list[Linear]:
    """The linears whose outputs are partial sums (o_proj and down_proj of every layer)."""
    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, Linear) and name.endswith(("self_attn.o_proj", "mlp.down_proj"))
    ]


def add_all_reduces(model: nn.Module, all_reduce: Callable[[torch.Tensor], None]) -> int:
    """Sum each row-parallel linear's output across ranks, in place, as it comes out (a
    forward hook: the model files stay as they are). Returns how many linears got one."""
    linears = row_parallel_linears(model)

    def hook(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        all_reduce(out)  # [num_tokens, hidden]: this rank's partial sum -> the whole sum
        return out

    for linear in linears:
        linear.register_forward_hook(hook)
    return len(linears)
