"""Linear layers with an optional int8 fast path.

On AVX2 CPUs the fbgemm dynamic-int8 linear (per-channel int8 weights, activations quantized
per call) reads a quarter of fp32's bytes and is several times faster; see
``docs/benchmarks.md``. It changes logits slightly, so the default stays exact (fp32).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed: object | None = None

    def quantize_int8(self) -> None:
        """Replace the fp32 weight by fbgemm-packed int8 (per output channel); frees the fp32."""
        w = self.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).double()
        zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor creation is marked deprecated
            qweight = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        bias = None if self.bias is None else self.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)

    @property
    def is_quantized(self) -> bool:
        return self._packed is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(x, self._packed, True)
        return F.linear(x, self.weight, self.bias)
