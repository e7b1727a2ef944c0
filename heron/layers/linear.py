"""Linear layers with quantized fast paths.

Kinds (``Linear.quantize``):

- ``q4_1`` / ``q8_0``: Heron's CPU kernels (``heron/kernels``): 4-bit or 8-bit weights in
  blocks of 32 with fp16 scales, GGUF's own Q4_1 / Q8_0 layouts, times activations quantized
  per row and block to int8. A weight that came from a Q4_1 (Q8_0) GGUF tensor is reproduced
  exactly, so only the activation rounding differs from the fp32 reference. Each output is
  one fixed-order dot product of its own row, so results do not depend on the batch. The
  layouts (plain, or packed eight rows at a time for AVX2 and AVX-512 VNNI) and which kernel runs
  them are ``heron.kernels.quant``'s business.
- ``int8``: fbgemm's dynamic int8 linear (per-channel int8 weights, activations quantized per
  call as one tensor, so a row's result depends on the rest of the batch).

``heron.kernels.quant.choose_kind`` picks per weight for ``quantization="auto"``: q4_1 where
it is lossless (the weight came from a 4-bit GGUF tensor of that layout), else q8_0.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from heron.kernels import Kernels, quant

QUANT_KINDS = ("q4_1", "q8_0", "int8")


class Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.kind: str | None = None
        self._packed: object | None = None  # fbgemm's packed weight (int8)
        # The kernels' tensors (q4_1: qs, d, m; q8_0: qs, d) and the kernel that reads them.
        self.qweight: tuple[torch.Tensor, ...] = ()
        self._kernel_linear: quant.KernelLinear | None = None

    if TYPE_CHECKING:  # nn.Module's __call__ returns Any

        def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def quantize(self, kind: str, kernels: Kernels | None = None) -> None:
        """Replace the fp32 weight by ``kind`` (see the module docstring) and free it.

        ``q4_1`` and ``q8_0`` need ``kernels`` (``heron.kernels.cpu_kernels()``) and
        ``in_features`` divisible by 32; raises ValueError otherwise.
        """
        if kind not in QUANT_KINDS:
            raise ValueError(f"unknown quantization {kind!r}; known: {QUANT_KINDS}")
        w = self.weight.detach().float().contiguous()
        if kind == "int8":
            self._pack_fbgemm(w)
        else:
            if kernels is None:
                raise ValueError(f"{kind} needs Heron's CPU kernels")
            self.qweight, self._kernel_linear = quant.quantize_weight(kind, w, kernels)
            if self.bias is not None:
                self.bias = nn.Parameter(self.bias.detach().float(), requires_grad=False)
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)

    def load_quantized(
        self, kind: str, tensors: tuple[torch.Tensor, ...], kernels: Kernels
    ) -> None:
        """Take ``kind`` tensors that ``quantize`` made earlier (a weight cache) instead of
        the fp32 weight, which is freed. Raises ValueError for a kind without a kernel."""
        if kind not in quant.KERNEL_KINDS:
            raise ValueError(f"not a kernel kind: {kind!r}")
        self.qweight = tensors
        self._kernel_linear = quant.kernel_linear(kind, kernels)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach().float(), requires_grad=False)
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)

    def quantize_int8(self) -> None:
        self.quantize("int8")

    def _pack_fbgemm(self, w: torch.Tensor) -> None:
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).double()
        zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor creation is marked deprecated
            qweight = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        bias = None if self.bias is None else self.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    @property
    def is_quantized(self) -> bool:
        return self.kind is not None

    def weight_bytes(self) -> int:
        """Bytes of weight data one forward reads."""
        if self.qweight:
            return sum(t.numel() * t.element_size() for t in self.qweight)
        if self._packed is not None:
            return self.in_features * self.out_features
        return self.weight.numel() * self.weight.element_size()

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, as float32 [out_features, in_features]."""
        if self.qweight:
            assert self.kind is not None
            return quant.dequantize(self.kind, self.qweight)
        if self.kind == "int8":
            qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
            dequantized: torch.Tensor = qweight.dequantize()
            return dequantized
        return self.weight.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self._kernel_linear
        if linear is not None:
            # [num_tokens, in_features] -> [num_tokens, out_features]
            x2 = x.reshape(-1, self.in_features).float().contiguous()
            y = linear(x2, *self.qweight, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        if self._packed is not None:
            out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, True)
            return out
        return F.linear(x, self.weight, self.bias)
