"""GGUF checkpoints as Heron model configs and HF-named float32 weights.

``load_gguf_checkpoint`` reads the header, builds a ``ModelConfig`` from the ``{arch}.*`` keys and
checks every tensor name and shape against it before any weight is dequantized, so a file whose
metadata and tensors disagree (e.g. a ``block_count`` larger than the layers it holds) fails at
load time. ``iter_gguf_weights`` then yields weights lazily, one dequantized tensor at a time,
renamed to the HF layout and with llama.cpp-specific transforms undone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from heron.config import ModelConfig
from heron.loader.gguf import GGUFError, GGUFFile

if TYPE_CHECKING:
    import torch

__all__ = ["GGUF_ARCHITECTURES", "config_from_gguf", "iter_gguf_weights", "load_gguf_checkpoint"]

# gguf ``general.architecture`` -> Heron model registry key (HF architecture name).
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
# Converters interleave the two rotary halves of each Q/K head for llama.cpp's GPT-J style rope.
_ROPE_PERMUTED = frozenset({"llama", "mistral"})
# Converters store Gemma's RMSNorm weight as 1 + w; HF keeps w and adds 1 in the forward pass.
_NORM_PLUS_ONE = frozenset({"gemma3"})
_HIDDEN_ACT = {"gemma3": "gelu_pytorch_tanh"}
MAX_CONTEXT_LENGTH = 1 << 24

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_ARCH_LAYER_NAMES: dict[str, dict[str, str]] = {
    "gemma3": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
# Tensors that parameterise rope rather than a module: kept in ``config.extra``.
_EXTRA_TENSORS = {
    "rope_freqs.weight": "rope_freqs",
    "rope_factors_long.weight": "rope_factors_long",
    "rope_factors_short.weight": "rope_factors_short",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(arch: str, gguf_name: str) -> str | None:
    """HF name of a GGUF tensor; None for rope tensors kept in ``extra``; KeyError if unknown."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name in _EXTRA_TENSORS:
        return None
    m = _LAYER_RE.fullmatch(gguf_name)
    if m is not None:
        layer, part, kind = m.groups()
        module = _ARCH_LAYER_NAMES.get(arch, {}).get(part) or _LAYER_NAMES.get(part)
        if module is not None:
            return f"model.layers.{int(layer)}.{module}.{kind}"
    raise KeyError(gguf_name)


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes implied by the config, keyed by HF name suffix (after ``model.layers.{i}.``)."""
    q, kv, h = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.hidden_size
    return {
        "model.embed_tokens.weight": (c.vocab_size, h),
        "lm_head.weight": (c.vocab_size, h),
        "model.norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (c.head_dim,),
        "self_attn.k_norm.weight": (c.head_dim,),
        "mlp.gate_proj.weight": (c.intermediate_size, h),
        "mlp.up_proj.weight": (c.intermediate_size, h),
        "mlp.down_proj.weight": (h, c.intermediate_size),
        "self_attn.qkv_proj.weight": (q + 2 * kv, h),  # phi3 attn_qkv
        "mlp.gate_up_proj.weight": (2 * c.intermediate_size, h),  # phi3 ffn_up
    }


class _Meta:
    """Typed access to ``{arch}.*`` metadata; errors name the file and the key."""

    __slots__ = ("g", "arch")

    def __init__(self, g: GGUFFile, arch: str) -> None:
        self.g, self.arch = g, arch

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.g.path}: {problem}")

    def get(self, key: str) -> Any:
        return self.g.metadata.get(key.format(arch=self.arch))

    def opt_int(self, key: str, default: int | None = None, hi: int = 1 << 31) -> int | None:
        name = key.format(arch=self.arch)
        value = self.g.metadata.get(name, default)
        if isinstance(value, list) and value and len(set(value)) == 1:
            value = value[0]  # a per-layer array with one value everywhere
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise self.error(f"metadata {name} must be an integer in [1, {hi}], got {value!r}")
        return value

    def req_int(self, key: str, hi: int = 1 << 31) -> int:
        value = self.opt_int(key, hi=hi)
        if value is None:
            raise self.error(f"missing metadata {key.format(arch=self.arch)}")
        return value

    def pos_float(self, key: str, default: float) -> float:
        name = key.format(arch=self.arch)
        value = self.g.metadata.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.error(f"metadata {name} must be a positive number, got {value!r}")
        return float(value)


def _gemma3_extra(m: _Meta, n_layers: int, hidden_per_head: int, head_dim: int) -> dict[str, Any]:
    """Gemma 3 settings (read by ``heron.models.gemma3``) that converters mostly leave implicit;
    the defaults are llama.cpp's. Layers: every 6th global, unless
    ``attention.sliding_window_pattern`` gives a period or one bool per layer (True: sliding).
    Local rope base: ``rope.freq_base_swa``, else 10000. Attention scale
    ``query_pre_attn_scalar``: head_dim, except hidden / heads for the 62-layer (27B) model."""
    out: dict[str, Any] = {"rope_local_base_freq": m.pos_float("{arch}.rope.freq_base_swa", 1e4)}
    pattern = m.get("{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        if len(pattern) != n_layers or not all(isinstance(p, bool) for p in pattern):
            raise m.error(f"sliding_window_pattern must be {n_layers} bools, got {pattern!r}")
        out["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        out["sliding_window_pattern"] = m.opt_int("{arch}.attention.sliding_window_pattern", 6)
    out["query_pre_attn_scalar"] = hidden_per_head if n_layers == 62 else head_dim
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if m.get("{arch}." + key) is not None:
            out[key] = m.pos_float("{arch}." + key, 1.0)
    return out


def config_from_gguf(g: GGUFFile) -> ModelConfig:
    """Build and cross-check a ``ModelConfig`` from a GGUF header; raises ``GGUFError``."""
    arch = g.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise GGUFError(f"{g.path}: unsupported architecture {arch!r}")
    m = _Meta(g, arch)
    hidden = m.req_int("{arch}.embedding_length")
    heads = m.req_int("{arch}.attention.head_count")
    kv_heads = m.opt_int("{arch}.attention.head_count_kv", heads)
    head_dim = m.opt_int("{arch}.attention.key_length")
    if head_dim is None:
        if hidden % heads:
            raise m.error(f"embedding_length {hidden} is not a multiple of head_count {heads}")
        head_dim = hidden // heads
    if arch in _ROPE_PERMUTED and head_dim % 2:
        raise m.error(f"head_dim {head_dim} must be even for rotary embeddings")
    n_layers = m.req_int("{arch}.block_count")
    layers = {int(x.group(1)) for n in g.tensors if (x := _LAYER_RE.fullmatch(n))}
    if layers != set(range(n_layers)):
        raise m.error(f"block_count is {n_layers} but the tensors cover {len(layers)} layers")

    embed = g.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise m.error("missing or malformed token_embd.weight")
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    vocab = m.opt_int("{arch}.vocab_size") or (len(tokens) if isinstance(tokens, list) else None)
    vocab = vocab or embed.shape[0]
    if vocab != embed.shape[0]:
        raise m.error(f"vocab size {vocab} does not match token_embd rows {embed.shape[0]}")

    scaling_type = m.get("{arch}.rope.scaling.type")
    if arch == "phi3" and scaling_type is None and "rope_factors_long.weight" in g.tensors:
        scaling_type = "longrope"  # phi3 converters write the factor tensors but no type
    rope_scaling: dict[str, Any] | None = None
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type}
        for key, hf_key in (
            ("factor", "factor"),
            ("original_context_length", "original_max_position_embeddings"),
            ("attn_factor", "attention_factor"),
        ):
            value = m.get("{arch}.rope.scaling." + key)
            if value is not None:
                rope_scaling[hf_key] = value

    eos_ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        tid = g.metadata.get(f"tokenizer.ggml.{key}")
        if tid is not None and tid not in eos_ids:
            eos_ids.append(tid)
    bos = g.metadata.get("tokenizer.ggml.bos_token_id")
    for tid in ([bos] if bos is not None else []) + eos_ids:
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < vocab:
            raise m.error(f"special token id {tid!r} is outside the vocabulary of {vocab}")

    extra: dict[str, Any] = {"gguf_architecture": arch, "format": "gguf"}
    for key, extra_key in (
        ("rope.dimension_count", "rope_dimension_count"),
        ("attention.value_length", "value_head_dim"),
    ):
        if (value := m.get("{arch}." + key)) is not None:
            extra[extra_key] = value
    for name, key in _EXTRA_TENSORS.items():
        if name in g.tensors:
            extra[key] = g.load(name)  # [head_dim // 2] rope frequency factors
    if (pad := g.metadata.get("tokenizer.ggml.padding_token_id")) is not None:
        extra["pad_token_id"] = pad
    if arch == "gemma3":
        extra.update(_gemma3_extra(m, n_layers, hidden // heads, head_dim))

    # 0 means no window (phi3 converters write 0 for models without one)
    sliding_window = None
    if m.get("{arch}.attention.sliding_window") != 0:
        sliding_window = m.opt_int("{arch}.attention.sliding_window")

    config = ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=m.req_int("{arch}.feed_forward_length"),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        head_dim=head_dim,
        max_position_embeddings=m.req_int("{arch}.context_length", hi=MAX_CONTEXT_LENGTH),
        rms_norm_eps=m.pos_float("{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=m.pos_float("{arch}.rope.freq_base", 10000.0),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias=any(n.endswith(".attn_q.bias") for n in g.tensors),
        hidden_act=_HIDDEN_ACT.get(arch, "silu"),
        sliding_window=sliding_window,
        bos_token_id=bos,
        eos_token_ids=eos_ids,
        extra=extra,
    )
    _check_tensors(g, config, arch)
    return config


def _check_tensors(g: GGUFFile, config: ModelConfig, arch: str) -> None:
    expected = _expected_shapes(config)
    for name, info in g.tensors.items():
        try:
            target = hf_name(arch, name)
        except KeyError:
            raise GGUFError(f"{g.path}: tensor {name!r} has no mapping for {arch}") from None
        if target is None:
            continue
        key = target.split(".", 3)[-1] if target.startswith("model.layers.") else target
        want = expected.get(key)
        if want is not None and info.shape != want:
            raise GGUFError(
                f"{g.path}: tensor {name!r} has shape {info.shape}, the config implies {want}"
            )


def _unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo the converter's per-head row interleave of Q/K (weights or biases).

    The converter stores HF row ``h*D + i*D/2 + j`` at row ``h*D + 2*j + i`` (i in {0, 1}), so
    viewing rows as ``[n_heads, D/2, 2]`` and swapping the last two axes restores HF order.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    # [n_heads, D/2, 2, *in] -> [n_heads, 2, D/2, *in] -> [rows, *in]
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def iter_gguf_weights(g: GGUFFile, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, float32 tensor)`` for every module weight, in file order.

    Tensors are dequantized one at a time (peak memory: one float32 tensor); ``lm_head.weight``
    appears only when the file has ``output.weight`` (untied). Rope tensors are not yielded:
    they are in ``config.extra``.
    """
    arch = str(config.extra.get("gguf_architecture") or g.architecture)
    for name in g.tensors:
        try:
            target = hf_name(arch, name)
        except KeyError:
            raise GGUFError(f"{g.path}: tensor {name!r} has no mapping for {arch}") from None
        if target is None:
            continue
        tensor = g.load(name)
        if arch in _ROPE_PERMUTED:
            if ".self_attn.q_proj." in target:
                tensor = _unpermute_rope(tensor, config.num_attention_heads)
            elif ".self_attn.k_proj." in target:
                tensor = _unpermute_rope(tensor, config.num_key_value_heads)
        if arch in _NORM_PLUS_ONE and target.endswith("norm.weight"):
            tensor = tensor - 1.0
        yield target, tensor


def load_gguf_checkpoint(path: str | os.PathLike[str]) -> tuple[ModelConfig, GGUFFile]:
    """Open and validate a GGUF file and build its config; the caller closes the file."""
    g = GGUFFile(path)
    try:
        return config_from_gguf(g), g
    except BaseException:
        g.close()
        raise
