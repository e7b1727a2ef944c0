"""Linear layers with quantized fast paths.

Kinds (``Linear.quantize``):

- ``q4_1`` / ``q8_0``: Heron's CPU kernels (``heron/kernels``): 4-bit or 8-bit weights in
  blocks of 32 with fp16 scales, GGUF's own Q4_1 / Q8_0 layouts, times activations quantized
  per row and block to int8. A weight that came from a Q4_1 (Q8_0) GGUF tensor is reproduced
  exactly, so only the activation rounding differs from the fp32 reference. Each output is
  one fixed-order dot product of its own row, so results do not depend on the batch. Where
  the CPU has AVX-512 VNNI and ``out_features`` is a multiple of 8, the blocks are repacked
  eight output rows at a time (``packed.cpp``); the numbers stay the same.
- ``int8``: fbgemm's dynamic int8 linear (per-channel int8 weights, activations quantized per
  call as one tensor, so a row's result depends on the rest of the batch).

``choose_kind`` picks per weight for ``quantization="auto"``: q4_1 where it is lossless (the
weight came from a 4-bit GGUF tensor of that layout), else q8_0.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

QUANT_KINDS = ("q4_1", "q8_0", "int8")


def dequantize_q4_1(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 + [N, K/32] fp16 scales and mins -> [N, K] float32."""
    n, nb = d.shape
    blocks = qs.view(n, nb, 16)
    q = torch.cat((blocks & 15, blocks >> 4), dim=-1).float()  # [N, nb, 32]
    return (q * d.float().unsqueeze(-1) + m.float().unsqueeze(-1)).view(n, nb * 32)


def dequantize_q8_0(qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 + [N, K/32] fp16 scales -> [N, K] float32."""
    n, nb = d.shape
    return (qs.view(n, nb, 32).float() * d.float().unsqueeze(-1)).view(n, nb * 32)


def dequantize_q4_1_x8(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Packed q4_1 ([G, nb, 128] uint8, [G, nb, 8] fp16 scales and mins) -> [8G, 32nb] float32.

    Byte ``h * 32 + c * 4 + t`` of a block holds row ``c``'s element ``8h + t`` (low nibble)
    and ``8h + 4 + t`` (high nibble)."""
    g, nb, _ = qs.shape
    b = qs.view(g, nb, 4, 8, 4)  # [G, nb, h, c, t]
    q = torch.stack((b & 15, b >> 4), dim=3)  # [G, nb, h, 2, c, t]
    q = q.permute(0, 4, 1, 2, 3, 5).reshape(g * 8, nb, 32).float()
    scale = d.permute(0, 2, 1).reshape(g * 8, nb, 1).float()
    low = m.permute(0, 2, 1).reshape(g * 8, nb, 1).float()
    return (q * scale + low).view(g * 8, nb * 32)


def dequantize_q8_0_x8(qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Packed q8_0 ([G, nb, 256] uint8 holding w + 128, [G, nb, 8] fp16) -> [8G, 32nb] float32.

    Byte ``q * 32 + c * 4 + t`` of a block holds row ``c``'s element ``4q + t``."""
    g, nb, _ = qs.shape
    q = qs.view(g, nb, 8, 8, 4).permute(0, 3, 1, 2, 4).reshape(g * 8, nb, 32).float() - 128
    return (q * d.permute(0, 2, 1).reshape(g * 8, nb, 1).float()).view(g * 8, nb * 32)


def choose_kind(weight: torch.Tensor, kernels: ModuleType) -> str:
    """q4_1 when the fp32 weight is exactly a q4_1 tensor (so 4 bits lose nothing), else
    q8_0."""
    w = weight.detach().float().contiguous()
    qs, d, m = kernels.quantize_q4_1(w)
    return "q4_1" if torch.equal(dequantize_q4_1(qs, d, m), w) else "q8_0"


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
        self._q: tuple[torch.Tensor, ...] = ()  # kernel tensors (q4_1: qs, d, m; q8_0: qs, d)
        self._kernels: ModuleType | None = None

    def quantize(self, kind: str, kernels: ModuleType | None = None) -> None:
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
            if self.in_features % 32:
                raise ValueError(f"{kind} needs in_features divisible by 32")
            quantizer = kernels.quantize_q4_1 if kind == "q4_1" else kernels.quantize_q8_0
            q = tuple(quantizer(w))
            if self.out_features % 8 == 0 and kernels.has_packed():
                packer = kernels.pack_q4_1 if kind == "q4_1" else kernels.pack_q8_0
                q = tuple(packer(*q))
            self._q = q
            self._kernels = kernels
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
        if self._q:
            return sum(t.numel() * t.element_size() for t in self._q)
        if self._packed is not None:
            return self.in_features * self.out_features
        return self.weight.numel() * self.weight.element_size()

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, as float32 [out_features, in_features]."""
        packed = bool(self._q) and self._q[0].dim() == 3
        if self.kind == "q4_1":
            return dequantize_q4_1_x8(*self._q) if packed else dequantize_q4_1(*self._q)
        if self.kind == "q8_0":
            return dequantize_q8_0_x8(*self._q) if packed else dequantize_q8_0(*self._q)
        if self.kind == "int8":
            qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
            return qweight.dequantize()
        return self.weight.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._kernels
        if k is not None:
            # [num_tokens, in_features] -> [num_tokens, out_features]
            x2 = x.reshape(-1, self.in_features).float().contiguous()
            if self.kind == "q4_1":
                y = k.linear_q4_1(x2, *self._q, self.bias)
            else:
                y = k.linear_q8_0(x2, *self._q, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(x, self._packed, True)
        return F.linear(x, self.weight, self.bias)
