"""Pooling token states into one vector per sequence, as sentence-transformers defines it.

Modes: ``cls`` (first real token), ``max``, ``mean``, ``mean_sqrt_len_tokens`` (sum over
sqrt(length)), ``weightedmean`` (token i weighs i + 1), ``lasttoken`` (last real token).
Several modes are concatenated in the configured order. ``normalize`` divides each
vector by its L2 norm (sentence-transformers' ``Normalize`` module). Pooling runs in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("pooling needs at least one mode")
        for mode in self.modes:
            if mode not in POOLING_MODES:
                raise ValueError(f"unsupported pooling mode {mode!r}; known: {POOLING_MODES}")

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size * len(self.modes)

    def to_dict(self) -> dict[str, object]:
        return {"modes": list(self.modes), "normalize": self.normalize}


def pool(hidden: torch.Tensor, mask: torch.Tensor, config: PoolingConfig) -> torch.Tensor:
    """hidden [batch, seq_len, hidden_size], mask [batch, seq_len] bool (True for real tokens,
    right padding) -> float32 [batch, hidden_size * len(config.modes)]."""
    h = hidden.float()
    m = mask.unsqueeze(-1).to(h.dtype)  # [batch, seq_len, 1]
    lengths = m.sum(dim=1).clamp_min(1e-9)  # [batch, 1]
    out: list[torch.Tensor] = []
    for mode in config.modes:
        if mode == "cls":
            out.append(h[:, 0])
        elif mode == "max":
            out.append(h.masked_fill(m == 0, float("-inf")).amax(dim=1))
        elif mode == "mean":
            out.append((h * m).sum(dim=1) / lengths)
        elif mode == "mean_sqrt_len_tokens":
            out.append((h * m).sum(dim=1) / lengths.sqrt())
        elif mode == "weightedmean":
            weights = m * torch.arange(1, h.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
            out.append((h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9))
        else:  # lasttoken
            last = mask.sum(dim=1).clamp_min(1) - 1  # [batch]
            out.append(h[torch.arange(h.shape[0]), last])
    pooled = torch.cat(out, dim=-1)
    return F.normalize(pooled, p=2.0, dim=-1) if config.normalize else pooled
