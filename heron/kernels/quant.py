"""GGUF's Q4_1 / Q8_0 block layouts as the kernels hold them, and which kernel runs each.

A weight [N, K] is cut into blocks of 32 inputs (``BLOCK``) with fp16 scales (and, in q4_1,
fp16 minimums). Where the kernels have the packed (AVX2 or VNNI) linears and N is a multiple
of 8, the blocks are repacked eight output rows at a time (``packed.cpp``); the numbers stay
the same. The ``dequantize_*`` functions are the torch reference of each layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from heron.kernels import Kernels

BLOCK = 32  # inputs per quantization block
KERNEL_KINDS = ("q4_1", "q8_0")

# (x [M, K] float32, *weight tensors, bias) -> [M, N] float32
KernelLinear = Callable[..., torch.Tensor]


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


def dequantize(kind: str, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The float32 weight [N, K] of ``quantize_weight``'s tensors, plain or packed."""
    packed = tensors[0].dim() == 3
    if kind == "q4_1":
        return dequantize_q4_1_x8(*tensors) if packed else dequantize_q4_1(*tensors)
    if kind == "q8_0":
        return dequantize_q8_0_x8(*tensors) if packed else dequantize_q8_0(*tensors)
    raise ValueError(f"not a kernel kind: {kind!r}")


def choose_kind(weight: torch.Tensor, kernels: Kernels) -> str:
    """q4_1 when the fp32 weight is exactly a q4_1 tensor (so 4 bits lose nothing), else
    q8_0."""
    w = weight.detach().float().contiguous()
    qs, d, m = kernels.quantize_q4_1(w)
    return "q4_1" if torch.equal(dequantize_q4_1(qs, d, m), w) else "q8_0"


def auto_kind(weight: torch.Tensor, kernels: Kernels) -> str:
    """``quantization="auto"``'s kind for one weight [N, K]: ``choose_kind`` where K fills
    whole blocks, else "none" (the weight stays float32)."""
    return choose_kind(weight, kernels) if weight.shape[1] % BLOCK == 0 else "none"


def quantize_weight(
    kind: str, weight: torch.Tensor, kernels: Kernels
) -> tuple[tuple[torch.Tensor, ...], KernelLinear]:
    """(tensors, linear) for a float32 weight [N, K]: its ``kind`` blocks, packed where the
    kernels can, and the kernel that multiplies by them (``linear(x, *tensors, bias)``).
    Raises ValueError for an unknown kind or K not a multiple of ``BLOCK``."""
    if kind not in KERNEL_KINDS:
        raise ValueError(f"not a kernel kind: {kind!r}; known: {KERNEL_KINDS}")
    if weight.shape[1] % BLOCK:
        raise ValueError(f"{kind} needs in_features divisible by {BLOCK}")
    quantizer = kernels.quantize_q4_1 if kind == "q4_1" else kernels.quantize_q8_0
    tensors = tuple(quantizer(weight))
    if weight.shape[0] % 8 == 0 and kernels.has_packed():
        packer = kernels.pack_q4_1 if kind == "q4_1" else kernels.pack_q8_0
        tensors = tuple(packer(*tensors))
    return tensors, kernel_linear(kind, kernels)


def kernel_linear(kind: str, kernels: Kernels) -> KernelLinear:
    """The kernel that multiplies by ``kind`` tensors, plain or packed."""
    return kernels.linear_q4_1 if kind == "q4_1" else kernels.linear_q8_0
