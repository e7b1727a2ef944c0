"""How a model splits across tensor-parallel ranks, and what tensor parallelism refuses."""

from __future__ import annotations

import os

import pytest
import torch

from heron.attention import AttentionBatch
from heron.config import EngineConfig, LoRAConfig, ModelConfig
from heron.distributed.shard import check_shardable, shard_config, shard_tensor
from heron.distributed.step import pack_step, unpack_step
from heron.proposer.base import SpeculativeConfig


def config(**kw: int) -> ModelConfig:
    shape = {
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        **kw,
    }
    return ModelConfig("LlamaForCausalLM", **shape)


def test_step_inputs_round_trip() -> None:
    batch = AttentionBatch(
        query_lens=[1, 1, 5],
        context_lens=[9, 3, 5],
        block_tables=[[4, 7, 1], [2], [0, 3]],
        num_decodes=2,
        slot_mapping=torch.tensor([9, 18, 0, 1, 2, 3, 24]),
        block_size=4,
    )
    ids, pos = torch.arange(7) + 100, torch.tensor([8, 2, 0, 1, 2, 3, 4])
    step = unpack_step(pack_step(ids, pos, batch))
    assert step.input_ids.tolist() == ids.tolist() and step.positions.tolist() == pos.tolist()
    assert step.attention == AttentionBatch(  # tensors compare by identity: compare fields
        batch.query_lens, batch.context_lens, batch.block_tables, 2, step.attention.slot_mapping, 4
    )
    assert step.attention.slot_mapping.tolist() == batch.slot_mapping.tolist()


def test_shards_cover_each_weight_once() -> None:
    c = config()
    qkv = torch.randn(4 * 16 + 2 * 2 * 16, 64)  # a fused Phi-3 tensor
    parts = [shard_tensor("layers.0.self_attn.qkv_proj.weight", qkv, c, r, 2) for r in (0, 1)]
    q, k, v = qkv.split([64, 32, 32])
    assert torch.equal(parts[1], torch.cat([q[32:], k[16:], v[16:]]))
    o = torch.randn(64, 64)
    cols = [shard_tensor("layers.0.self_attn.o_proj.weight", o, c, r, 2) for r in (0, 1)]
    assert torch.equal(torch.cat(cols, dim=1), o)
    bias = torch.randn(64)
    assert torch.equal(shard_tensor("layers.0.mlp.down_proj.bias", bias, c, 0, 2), bias)
    assert not shard_tensor("layers.0.mlp.down_proj.bias", bias, c, 1, 2).any()
    norm = torch.randn(64)
    assert shard_tensor("layers.0.input_layernorm.weight", norm, c, 1, 2) is norm
    half = shard_config(c, 2)
    assert (half.num_attention_heads, half.num_key_value_heads, half.intermediate_size) == (
        2,
        1,
        64,
    )


def test_refusals() -> None:
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        check_shardable(config(num_key_value_heads=1, num_attention_heads=4), _engine(2))
    with pytest.raises(ValueError, match="multiple of the 32-wide"):
        check_shardable(config(head_dim=8, hidden_size=32), _engine(2, quantization="q8_0"))
    check_shardable(config(head_dim=8, hidden_size=32), _engine(2))  # float32: fine
    with pytest.raises(ValueError, match="CPU cores"):
        EngineConfig(tensor_parallel_size=cores + 1)
    with pytest.raises(ValueError, match="LoRA"):
        EngineConfig(tensor_parallel_size=2, lora=LoRAConfig())
    with pytest.raises(ValueError, match="speculative"):
        EngineConfig(tensor_parallel_size=2, speculative=SpeculativeConfig(method="ngram"))
    with pytest.raises(ValueError, match="int8"):
        EngineConfig(tensor_parallel_size=2, quantization="int8")
    assert EngineConfig(tensor_parallel_size=2).num_threads == max(1, cores // 2)


def _engine(n: int, **kw: object) -> EngineConfig:
    e = EngineConfig(**kw)  # type: ignore[arg-type]
    e.tensor_parallel_size = n  # past the core check: this only tests the model's shape
    return e
