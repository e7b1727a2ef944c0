"""RMSNorm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from heron.kernels import Kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        # Heron's CPU kernels when the runner enables them (fp32 models only): one call
        # instead of five torch ops.
        self.kernels: Kernels | None = None

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any

        def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [num_tokens, hidden]; computed in fp32 as the reference does, then cast back.
        k = self.kernels
        if k is not None and x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous():
            return k.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def add_forward(self, delta: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual += delta`` (in place), then returns ``norm(residual)``."""
        k = self.kernels
        if k is not None and residual.dtype == torch.float32 and residual.is_contiguous():
            return k.add_rms_norm_(delta.contiguous(), residual, self.weight, self.eps)
        residual.add_(delta)
        return self(residual)
