"""How big the KV pool is and how long a sequence may be, from the configs alone.

No torch here: the HTTP process plans the same lengths as the engine (to refuse an
over-long prompt before it queues) without importing it.
"""

from __future__ import annotations

from heron.config import EngineConfig, ModelConfig

# bytes per element of each cache dtype (EngineConfig.cache.dtype)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_block(model_config: ModelConfig, block_size: int, dtype: str) -> int:
    """Bytes one block of ``block_size`` tokens takes across all layers, K and V."""
    per_token = 2 * model_config.num_key_value_heads * model_config.head_dim
    return model_config.num_hidden_layers * block_size * per_token * DTYPE_BYTES[dtype]


def plan_num_blocks(model_config: ModelConfig, config: EngineConfig) -> int:
    """KV blocks the cache gets: ``cache.num_blocks`` if set, else what fits the budget."""
    if config.cache.num_blocks is not None:
        return config.cache.num_blocks
    per_block = kv_bytes_per_block(model_config, config.cache.block_size, config.cache.dtype)
    return max(1, config.cache.memory_bytes // per_block)


def plan_max_model_len(model_config: ModelConfig, config: EngineConfig) -> tuple[int, int]:
    """(max_model_len, wanted): the longest sequence the model and the KV pool can hold,
    and what was asked for (the config's value or the model's context length)."""
    capacity = plan_num_blocks(model_config, config) * config.cache.block_size
    wanted = config.max_model_len or model_config.max_position_embeddings
    return min(wanted, model_config.max_position_embeddings, capacity), wanted


def embedding_max_len(model_config: ModelConfig, config: EngineConfig) -> int:
    """The longest input an encoder takes: its position table, lowered by max_model_len."""
    limit = model_config.max_position_embeddings
    return min(config.max_model_len or limit, limit)
