"""The fused decode path: a whole Llama-style step in one call into the C++ kernels.

A model says what its layers are made of (``CausalLM.describe_layers``: norms, linears,
heads, scale, window); this module decides whether the kernels' ``decode_layer_`` computes
exactly that, and if so builds one ``DecodeStack`` holding every layer's weights and cache
views. The runner binds it once, right after it allocates the KV cache
(``bind_fused_decoder``); a new cache means a new bind, so nothing is keyed by pointer.

Per step the model asks ``FusedDecoder.takes(metadata)`` (the ``cpu`` attention backend's
per-token rows are there) and then ``run``: one Python call for every layer, no per-sequence
work and no device sync.

LoRA adapters (``heron.lora``): ``set_adapters`` hands the stack a linear's adapter slot
tensors once (``LoRAManager.bind``), and a step whose rows use adapters sets
``adapter_slots`` (each row's slot, -1 for none) for its ``run``: the kernels add each adapted
row's delta to the linear's output, as ``LoRALinear`` does on the layered path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from heron.kernels import CACHE_DTYPES, Kernels

if TYPE_CHECKING:
    from heron.attention.base import AttentionBackend
    from heron.layers.linear import Linear
    from heron.models.base import CausalLM, DecoderLayerSpec

# Linear.kind -> the kernels' LinearWeights kind; fbgemm's int8 has no place in the kernels.
_LINEAR_KINDS: dict[str | None, str] = {None: "f32", "q4_1": "q4_1", "q8_0": "q8_0"}


@dataclass(frozen=True, slots=True)
class FusedLinear:
    """One linear as the kernels read it: ``kind`` "f32" (``tensors`` = (weight,)), "q4_1"
    ((qs, d, m)) or "q8_0" ((qs, d)), plain or packed 8 rows at a time."""

    kind: str
    tensors: tuple[torch.Tensor, ...]
    bias: torch.Tensor | None

    def to_kernels(self, kernels: Kernels) -> Any:
        return kernels.LinearWeights(self.kind, list(self.tensors), self.bias)


@dataclass(frozen=True, slots=True)
class FusedLayerWeights:
    """Everything ``decode_layer_`` needs of one layer besides its cache and the step's
    inputs. The fields are those of the C++ ``LayerWeights`` (``HERON_LAYER_WEIGHTS`` in
    ``csrc/heron_cpu.h``), by name; ``bind_fused_decoder`` checks that they agree."""

    input_norm: torch.Tensor  # [hidden]
    input_norm_eps: float
    qkv: FusedLinear  # [q_size + 2 * kv_size, hidden]: q, k, then v rows
    o: FusedLinear  # [hidden, q_size]
    post_attention_norm: torch.Tensor  # [hidden]
    post_attention_norm_eps: float
    gate_up: FusedLinear  # [2 * intermediate, hidden]: gate, then up rows
    down: FusedLinear  # [hidden, intermediate]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    window: int  # sliding window in tokens, 0 for none

    @classmethod
    def from_spec(cls, spec: DecoderLayerSpec) -> FusedLayerWeights | None:
        """The weights of a described layer, or None when the kernels cannot compute it
        exactly (an activation other than SiLU, or a linear kind they do not run)."""
        if spec.act != "silu":
            return None
        linears = [
            fused_linear(m) for m in (spec.qkv_proj, spec.o_proj, spec.gate_up_proj, spec.down_proj)
        ]
        qkv, o, gate_up, down = linears
        if qkv is None or o is None or gate_up is None or down is None:
            return None
        return cls(
            input_norm=spec.input_norm.weight,
            input_norm_eps=spec.input_norm.eps,
            qkv=qkv,
            o=o,
            post_attention_norm=spec.post_attention_norm.weight,
            post_attention_norm_eps=spec.post_attention_norm.eps,
            gate_up=gate_up,
            down=down,
            num_heads=spec.num_heads,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            scale=spec.scale,
            window=spec.sliding_window or 0,
        )

    def to_kernels(self, kernels: Kernels) -> Any:
        """The C++ ``LayerWeights``, filled field by field by name."""
        weights = kernels.LayerWeights()
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FusedLinear):
                value = value.to_kernels(kernels)
            setattr(weights, f.name, value)
        return weights


def fused_linear(linear: Linear) -> FusedLinear | None:
    """``linear`` as the kernels read it, or None for a kind they do not run (int8)."""
    if linear.kind not in _LINEAR_KINDS:
        return None
    tensors = linear.qweight if linear.qweight else (linear.weight,)
    return FusedLinear(_LINEAR_KINDS[linear.kind], tensors, linear.bias)


class FusedDecoder:
    """Every layer of a model, bound to one KV cache, run by one kernel call per step."""

    __slots__ = ("layers", "_stack", "adapter_slots")

    def __init__(self, layers: list[FusedLayerWeights], stack: Any) -> None:
        self.layers = layers
        self._stack = stack
        # [num_tokens] int64: this step's adapter slot per row (-1: none); None: no deltas
        self.adapter_slots: torch.Tensor | None = None

    def set_adapters(
        self, layer: int, linear: str, a: torch.Tensor, b: torch.Tensor, spans: torch.Tensor
    ) -> None:
        """Hold the adapter slot tensors of ``linear`` ("qkv", "o", "gate_up" or "down") of
        ``layer``: a [slots, in, R], b [slots, R, out] float32, spans [slots, blocks, 3]
        (``heron.lora.layer``). The stack keeps these tensors, so later slot writes show."""
        self._stack.set_adapters(layer, linear, a, b, spans)

    @staticmethod
    def takes(metadata: Any) -> bool:
        """Whether this step can run fused: its metadata gives every query token its own
        block-table row (``CpuAttentionMetadata.flat``, steps of up to 256 tokens)."""
        return getattr(metadata, "flat", None) is not None

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, metadata: Any) -> None:
        """x [num_tokens, hidden] goes through every layer in place; cos, sin [num_tokens, 1,
        rotary_dim // 2] from the model's rotary table. Writes the step's K/V into the cache."""
        flat = metadata.flat
        args = (x, cos.squeeze(1), sin.squeeze(1), metadata.slot_mapping)
        if self.adapter_slots is None:
            self._stack.run(*args, flat.block_table, flat.context_lens)
        else:
            self._stack.run(*args, flat.block_table, flat.context_lens, self.adapter_slots)


def bind_fused_decoder(
    model: CausalLM,
    kv_caches: torch.Tensor,
    backend: AttentionBackend,
    kernels: Kernels | None,
) -> FusedDecoder | None:
    """Build the fused decoder of ``model`` over ``kv_caches`` [num_layers, 2, num_blocks,
    block_size, num_kv_heads, head_dim], or None when the fused path does not apply: no
    kernels, an attention backend without per-token rows, a cache dtype the kernels do not
    read, or a layer whose math is not exactly ``decode_layer_``'s. Call it again whenever
    the cache or the weights change; the stack holds views of both."""
    if kernels is None or not getattr(backend, "fused", False):
        return None
    if kv_caches.dtype not in CACHE_DTYPES:
        return None
    specs = model.describe_layers()
    if specs is None:
        return None
    layers = [FusedLayerWeights.from_spec(spec) for spec in specs]
    if any(w is None for w in layers):
        return None
    names = tuple(f.name for f in fields(FusedLayerWeights))
    if names != tuple(kernels.LayerWeights.field_names()):
        raise RuntimeError(
            f"FusedLayerWeights {names} and the kernels' LayerWeights "
            f"{tuple(kernels.LayerWeights.field_names())} disagree"
        )
    bound = [w for w in layers if w is not None]
    stack = kernels.DecodeStack()
    for i, weights in enumerate(bound):
        stack.add(weights.to_kernels(kernels), kv_caches[i, 0], kv_caches[i, 1])
    return FusedDecoder(bound, stack)
