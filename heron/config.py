"""Engine configuration: slotted dataclasses, validated where they are built."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from heron.proposer.base import SpeculativeConfig


@dataclass(slots=True)
class ModelConfig:
    """Architecture hyper-parameters, read from a GGUF header or an HF ``config.json``."""

    architecture: str  # registry key, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model config: num_attention_heads ({self.num_attention_heads}) must be a "
                f"multiple of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("model config: rms_norm_eps and rope_theta must be positive")


@dataclass(slots=True)
class CacheConfig:
    """Paged KV cache. ``num_blocks`` wins over ``memory_bytes`` when both are given."""

    # Tokens per block. Small blocks let prefix caching reuse more of a prompt (only full
    # blocks are shared; a repeated 42-token prompt recomputes 2 tokens with 8-token blocks,
    # 10 with 16-token ones), which matters on CPU where each recomputed token costs a full
    # row of every matmul. The CPU attention kernel reads tokens in place, so small blocks
    # cost it nothing.
    block_size: int = 8
    memory_bytes: int = 1 << 30
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be positive, got {self.memory_bytes}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unsupported KV cache dtype {self.dtype!r}")


@dataclass(slots=True)
class SchedulerConfig:
    """Per-step limits.

    ``max_num_batched_tokens`` is the token budget of one step; ``long_prefill_token_threshold``
    caps the tokens one request may take in a step (the chunk size of chunked prefill; 0 means
    only the budget limits it).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    long_prefill_token_threshold: int = 0
    policy: str = "fcfs"

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be positive")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be non-negative")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy must be 'fcfs' or 'priority', got {self.policy!r}")


# What LoRA slots can hold adapter weights in ("auto": float16).
LORA_DTYPES = ("auto", "float16", "float32")


@dataclass(slots=True)
class LoRAConfig:
    """Multi-LoRA. ``max_loras`` adapters sit in the slot table at once (requests with any
    of them share a step); ``max_lora_rank`` caps an adapter's rank (the slot tensors are
    padded to it); ``max_cpu_loras`` adapters stay loaded in CPU memory, least recently
    used swapped out. ``lora_dtype``: the precision the slots hold adapter weights in
    ("auto" is float16: one user's delta is bound by reading them; the arithmetic is float32
    either way)."""

    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # defaults to max_loras
    lora_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be positive")
        if self.lora_dtype not in LORA_DTYPES:
            raise ValueError(
                f"lora_dtype must be one of {', '.join(LORA_DTYPES)}, got {self.lora_dtype!r}"
            )
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras "
                f"({self.max_loras})"
            )

    @property
    def held_dtype(self) -> str:
        """The dtype adapter weights are rounded to in the slots: "float16" or "float32"."""
        return "float16" if self.lora_dtype == "auto" else self.lora_dtype


QUANTIZATIONS = (None, "auto", "q4_1", "q8_0", "int8")


@dataclass(slots=True)
class EngineConfig:
    """Everything the engine needs besides the model files."""

    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_model_len: int | None = None  # defaults to the model's context length
    dtype: str = "float32"
    # None: dequantized fp32 weights (exact). "auto": per linear, q4_1 where that is lossless
    # (weights from a 4-bit GGUF) else q8_0, lm_head q8_0 (Heron's CPU kernels; falls back to
    # None with a warning where they cannot be built). "q4_1" / "q8_0": every linear so.
    # "int8": fbgemm's dynamic int8 linears. See heron/layers/linear.py.
    quantization: str | None = None
    # "auto": Heron's CPU kernels ("cpu") for a float32 cache when they build, else "torch".
    attention_backend: str = "auto"
    # Heron's CPU kernels for norms, rotary embeddings and attention in float32 models.
    use_kernels: bool = True
    num_threads: int | None = None
    seed: int = 0
    lora: LoRAConfig | None = None  # None: no adapters (requests naming one are refused)
    # Speculative decoding (heron/proposer): None decodes one token per step.
    speculative: SpeculativeConfig | None = None
    # Processes the attention heads and MLP columns are split across (heron/distributed).
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"unsupported quantization {self.quantization!r}; use one of {QUANTIZATIONS}"
            )
        if self.quantization is not None and self.dtype != "float32":
            raise ValueError(
                f"quantization={self.quantization!r} computes activations in float32; "
                "use dtype='float32'"
            )
        if self.attention_backend not in ("auto", "torch", "cpu"):
            raise ValueError(
                f"unknown attention backend {self.attention_backend!r}; use auto, torch or cpu"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be positive")
        if self.tensor_parallel_size != 1:
            self._check_tensor_parallel()

    def _check_tensor_parallel(self) -> None:
        """What tensor parallelism cannot combine with yet; on CPU, also gives each rank
        cores / N threads when ``num_threads`` is unset. Raises ValueError."""
        n = self.tensor_parallel_size
        if n < 1:
            raise ValueError(f"tensor_parallel_size must be positive, got {n}")
        if self.lora is not None:
            raise ValueError("tensor parallelism does not support LoRA adapters yet")
        if self.speculative is not None:
            raise ValueError("tensor parallelism does not support speculative decoding yet")
        if self.quantization == "int8":
            # fbgemm quantizes a row-parallel shard's activations with the shard's own scale,
            # so the sum of shards would not be one process's result.
            raise ValueError("tensor parallelism does not support int8 quantization")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        if n > cores:
            raise ValueError(f"tensor_parallel_size {n} exceeds the {cores} CPU cores available")
        if self.num_threads is None:
            self.num_threads = max(1, cores // n)
