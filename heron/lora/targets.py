"""Where an adapter's target modules land in Heron's decoder layers.

Heron fuses q/k/v into ``self_attn.qkv_proj`` and gate/up into ``mlp.gate_up_proj``. An
adapter names HF modules (``q_proj`` .. ``down_proj``, or Phi-3's fused ``qkv_proj`` and
``gate_up_proj``); each lands in a row range of one fused module, with its own rank block in
that module's slot tensors (``heron.lora.slots``): a module's low-rank product is computed once
for all its targets, with the up-projection block-diagonal over them.
"""

from __future__ import annotations

from dataclasses import dataclass

from heron.config import ModelConfig

# Heron module (inside a decoder layer) -> how many targets may adapt it at once.
MODULE_BLOCKS = {
    "self_attn.qkv_proj": 3,
    "self_attn.o_proj": 1,
    "mlp.gate_up_proj": 2,
    "mlp.down_proj": 1,
}


@dataclass(frozen=True, slots=True)
class Target:
    """One adaptable projection: rows ``[row_start, row_start + out_features)`` of the
    Heron module ``module``, computed from its ``in_features`` inputs, in rank block
    ``block`` of that module's slot tensors."""

    name: str  # the HF module name, e.g. "q_proj"
    module: str  # e.g. "self_attn.qkv_proj"
    block: int
    row_start: int
    out_features: int
    in_features: int


def model_targets(config: ModelConfig) -> dict[str, Target]:
    """The adaptable projections of one decoder layer of a model with ``config``, by HF name."""
    h, inter = config.hidden_size, config.intermediate_size
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    qkv, gu = "self_attn.qkv_proj", "mlp.gate_up_proj"
    targets = [
        Target("q_proj", qkv, 0, 0, q, h),
        Target("k_proj", qkv, 1, q, kv, h),
        Target("v_proj", qkv, 2, q + kv, kv, h),
        Target("qkv_proj", qkv, 0, 0, q + 2 * kv, h),  # Phi-3's fused projection
        Target("o_proj", "self_attn.o_proj", 0, 0, h, q),
        Target("gate_proj", gu, 0, 0, inter, h),
        Target("up_proj", gu, 1, inter, inter, h),
        Target("gate_up_proj", gu, 0, 0, 2 * inter, h),  # Phi-3's fused projection
        Target("down_proj", "mlp.down_proj", 0, 0, h, inter),
    ]
    return {t.name: t for t in targets}


# The parent module each HF target sits under in a checkpoint.
TARGET_PARENTS = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "qkv_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "gate_up_proj": "mlp",
    "down_proj": "mlp",
}
