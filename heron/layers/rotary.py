"""Rotary position embeddings (the half-split "neox" layout that HF checkpoints use).

Scaling variants: none/"default", "linear", "llama3", and a per-frequency divisor tensor
(``rope_freqs`` from GGUF files, which carries llama3 scaling precomputed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_len / low_freq_factor
    high_freq_wavelen = old_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by the factor, short ones kept, the band between blended.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def compute_inv_freq(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any] | None,
    freq_divisors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the ``[rotary_dim // 2]`` inverse frequencies after any scaling."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    if freq_divisors is not None:
        return (inv_freq / freq_divisors.to(torch.float64)).float()
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if scaling is None or rope_type == "default":
        return inv_freq.float()
    if rope_type == "linear":
        return (inv_freq / float(scaling["factor"])).float()
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling).float()
    raise ValueError(f"unsupported rope scaling type {rope_type!r}")


class RotaryEmbedding(nn.Module):
    """Precomputes cos/sin for every position once; ``lookup`` runs once per forward."""

    def __init__(
        self,
        rotary_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
        freq_divisors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        inv_freq = compute_inv_freq(rotary_dim, base, scaling, freq_divisors)
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_position, rotary_dim // 2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        self.rotary_dim = rotary_dim

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [num_tokens, 1, rotary_dim // 2] each, broadcast over heads.
        cos, sin = self.cos, self.sin
        assert isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [num_tokens, num_heads, head_dim] by position; returns a new tensor."""
    half = cos.shape[-1]
    x1 = x[..., :half]
    x2 = x[..., half : 2 * half]
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if 2 * half == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., 2 * half :]), dim=-1)


class LongRopeEmbedding(RotaryEmbedding):
    """LongRoPE (Phi-3 ``longrope``, formerly ``su``): per-frequency divisors, with one set for
    positions below ``original_max_position`` (``short_factor``) and another for positions at
    or beyond it (``long_factor``); cos and sin are both scaled by ``attention_factor``.

    Choosing the set per position keeps a token's rotation a function of its position alone,
    which the paged cache and prefix caching rely on. It matches a reference that decodes one
    token at a time: there a step whose sequence reaches past ``original_max_position`` uses
    the long set, earlier steps the short one.
    """

    def __init__(
        self,
        rotary_dim: int,
        max_position: int,
        base: float,
        short_factor: torch.Tensor,
        long_factor: torch.Tensor,
        original_max_position: int,
        attention_factor: float,
    ) -> None:
        super().__init__(rotary_dim, max_position, base, freq_divisors=short_factor)
        cos, sin = self.cos, self.sin
        assert isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor)
        if original_max_position < max_position:
            long_inv_freq = compute_inv_freq(rotary_dim, base, None, long_factor)
            t = torch.arange(original_max_position, max_position, dtype=torch.float32)
            freqs = torch.outer(t, long_inv_freq)  # [max_position - original, rotary_dim // 2]
            cos[original_max_position:] = freqs.cos()
            sin[original_max_position:] = freqs.sin()
        cos.mul_(attention_factor)
        sin.mul_(attention_factor)
