"""Vectorised torch dequantization of GGML block formats.

Every quantized GGML type stores a tensor as a flat run of fixed-size blocks; each block packs
``block_size`` consecutive elements of a row (ggml's ``ne[0]``, the last torch dim) together with
its scales. The functions here take the blocks as a ``[n_blocks, type_size]`` uint8 tensor and
return ``[n_blocks, block_size]`` float32, with no Python loop over blocks. The float32 operation
order follows the ggml reference so results match ``gguf.quants.dequantize`` bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["SUPPORTED_TYPES", "UnsupportedGGMLTypeError", "dequantize"]

_T = GGMLQuantizationType

# Shift amounts, uint8 so shifts stay in uint8.
_SHIFT_NIBBLE = torch.tensor([0, 4], dtype=torch.uint8)
_SHIFT_CRUMB = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFT_BIT = torch.arange(8, dtype=torch.uint8)


class UnsupportedGGMLTypeError(NotImplementedError):
    """Raised for a GGML type Heron has no dequantizer for."""


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 stored at byte ``start`` of every block, as float32 ``[n_blocks, 1]``."""
    # contiguous() copies the 2 bytes into an aligned buffer so the dtype view is legal.
    return blocks[:, start : start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """``[n, k]`` packed bytes -> ``[n, 2k]``: all low nibbles first, then all high nibbles."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """``[n, k]`` bytes -> ``[n, k * 8]`` bits; bit ``b`` of byte ``i`` lands at ``i * 8 + b``."""
    n = packed.shape[0]
    return ((packed.unsqueeze(-1) >> _SHIFT_BIT) & 1).reshape(n, -1)


def _bit_planes(packed: torch.Tensor, planes: int) -> torch.Tensor:
    """``[n, 32]`` bytes -> ``[n, planes, 32]``: plane ``b`` holds bit ``b`` of every byte."""
    return (packed.unsqueeze(1) >> _SHIFT_BIT[:planes].view(1, planes, 1)) & 1


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | qs int8[32]
    return _f16(b, 0) * b[:, 2:34].view(torch.int8).to(torch.float32)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | qs u8[16]; element i < 16 is the low nibble of qs[i], i >= 16 the high one.
    q = _nibbles(b[:, 2:18]).to(torch.int16) - 8
    return _f16(b, 0) * q.to(torch.float32)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | m f16 | qs u8[16]
    q = _nibbles(b[:, 4:20]).to(torch.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | qh u32 (5th bit of each element, little endian) | qs u8[16]
    q = (_nibbles(b[:, 6:22]) | (_bits(b[:, 2:6]) << 4)).to(torch.int16) - 16
    return _f16(b, 0) * q.to(torch.float32)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | m f16 | qh u32 | qs u8[16]
    q = (_nibbles(b[:, 8:24]) | (_bits(b[:, 4:8]) << 4)).to(torch.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # block: scales u8[16] (low nibble scale, high nibble min, per 16 elements) | qs u8[64] |
    # d f16 | dmin f16. Each 32-byte half of qs yields 128 elements: 4 crumb planes of 32.
    n = b.shape[0]
    sc = b[:, :16]
    dl = (_f16(b, 80) * (sc & 0x0F).to(torch.float32)).unsqueeze(-1)  # [n, 16, 1]
    ml = (_f16(b, 82) * (sc >> 4).to(torch.float32)).unsqueeze(-1)  # [n, 16, 1]
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFT_CRUMB.view(1, 1, 4, 1)) & 3
    q = q.reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # block: hmask u8[32] | qs u8[64] | scales 12 bytes (16 x 6-bit) | d f16
    n = b.shape[0]
    raw = b[:, 96:108]
    # 6-bit scale j: low 4 bits from byte j % 8 (nibble j // 8), high 2 bits from byte
    # 8 + j % 4 (crumb j // 4).
    lo = ((raw[:, :8].unsqueeze(1) >> _SHIFT_NIBBLE.view(1, 2, 1)) & 0x0F).reshape(n, 16)
    hi = ((raw[:, 8:12].unsqueeze(1) >> _SHIFT_CRUMB.view(1, 4, 1)) & 3).reshape(n, 16)
    sc = ((lo | (hi << 4)).to(torch.int16) - 32).to(torch.float32)
    dl = (_f16(b, 108) * sc).unsqueeze(-1)  # [n, 16, 1]
    ql = ((b[:, 32:96].reshape(n, 2, 1, 32) >> _SHIFT_CRUMB.view(1, 1, 4, 1)) & 3).reshape(
        n, 16, 16
    )
    hb = _bit_planes(b[:, :32], 8).reshape(n, 16, 16)
    # A clear hmask bit subtracts 4; a set one leaves the 2-bit value as is.
    q = (ql.to(torch.int16) - ((hb ^ 1) << 2).to(torch.int16)).to(torch.float32)
    return (dl * q).reshape(n, 256)


def _k_scales(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K 12-byte scale field -> (scales, mins), each float32 ``[n, 8]``, 6 bits each."""
    s = raw.reshape(-1, 3, 4)
    a, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat((a & 0x3F, (md & 0x0F) | ((a >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | dmin f16 | scales 12 bytes | qs u8[128]; 8 sub-blocks of 32 elements,
    # sub-block 2c / 2c+1 are the low / high nibbles of qs[32c : 32c + 32].
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    dd = (_f16(b, 0) * sc).unsqueeze(-1)  # [n, 8, 1]
    dm = (_f16(b, 2) * mn).unsqueeze(-1)  # [n, 8, 1]
    q = (b[:, 16:144].reshape(n, 4, 1, 32) >> _SHIFT_NIBBLE.view(1, 1, 2, 1)) & 0x0F
    q = q.reshape(n, 8, 32).to(torch.float32)
    return (dd * q - dm).reshape(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # block: d f16 | dmin f16 | scales 12 bytes | qh u8[32] | qs u8[128]; sub-block s takes
    # its 5th bit from bit s of qh.
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    dd = (_f16(b, 0) * sc).unsqueeze(-1)  # [n, 8, 1]
    dm = (_f16(b, 2) * mn).unsqueeze(-1)  # [n, 8, 1]
    ql = ((b[:, 48:176].reshape(n, 4, 1, 32) >> _SHIFT_NIBBLE.view(1, 1, 2, 1)) & 0x0F).reshape(
        n, 8, 32
    )
    q = (ql | (_bit_planes(b[:, 16:48], 8) << 4)).to(torch.float32)
    return (dd * q - dm).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # block: ql u8[128] | qh u8[64] | scales int8[16] | d f16. Each 128-element half takes
    # low 4 bits from 64 ql bytes (2 nibble planes) and high 2 bits from 32 qh bytes (4 planes).
    n = b.shape[0]
    ql = (b[:, :128].reshape(n, 2, 1, 64) >> _SHIFT_NIBBLE.view(1, 1, 2, 1)) & 0x0F
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT_CRUMB.view(1, 1, 4, 1)) & 3
    q = (ql.reshape(n, 256) | (qh.reshape(n, 256) << 4)).to(torch.int16) - 32
    sc = b[:, 192:208].view(torch.int8).to(torch.float32)
    dsc = (_f16(b, 208) * sc).unsqueeze(-1)  # [n, 16, 1]
    return (dsc * q.reshape(n, 16, 16).to(torch.float32)).reshape(n, 256)


_BLOCK_DEQUANT: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    _T.Q8_0: _q8_0,
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q2_K: _q2_k,
    _T.Q3_K: _q3_k,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}
_FLOAT_TYPES: dict[GGMLQuantizationType, torch.dtype] = {
    _T.F32: torch.float32,
    _T.F16: torch.float16,
    _T.BF16: torch.bfloat16,
}
SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(_BLOCK_DEQUANT) | frozenset(
    _FLOAT_TYPES
)


def _reinterpret(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    try:
        return data.view(dtype)
    except RuntimeError:  # storage offset not a multiple of the item size: realign by copying
        return data.clone().view(dtype)


def dequantize(
    data: torch.Tensor, ggml_type: int | GGMLQuantizationType, shape: Sequence[int]
) -> torch.Tensor:
    """Decode one GGML tensor to float32.

    ``data`` is the tensor's flat uint8 bytes, exactly ``n_elements / block_size * type_size``
    long; ``shape`` is the torch shape (ggml dims reversed), whose last dim runs along blocks.
    The result is a new contiguous float32 tensor that never aliases ``data``, and ``data`` is
    never written to, so it may be a view of a read-only memory map.

    Raises ``UnsupportedGGMLTypeError`` for types without a dequantizer and ``ValueError`` for
    inconsistent sizes.
    """
    try:
        qtype = GGMLQuantizationType(int(ggml_type))
    except ValueError:
        raise UnsupportedGGMLTypeError(f"unknown GGML type id {int(ggml_type)}") from None
    if qtype not in SUPPORTED_TYPES:
        names = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedGGMLTypeError(
            f"GGML type {qtype.name} cannot be dequantized by Heron (supported: {names})"
        )
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError(
            f"expected flat uint8 data, got {data.dtype} with shape {tuple(data.shape)}"
        )
    dims = tuple(int(s) for s in shape)
    if any(s < 0 for s in dims):
        raise ValueError(f"negative dimension in shape {dims}")
    n_elements = math.prod(dims)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if (dims[-1] if dims else 1) % block_size:
        raise ValueError(
            f"{qtype.name}: last dim of shape {dims} is not a multiple of the block size "
            f"{block_size}"
        )
    n_blocks = n_elements // block_size
    if data.numel() != n_blocks * type_size:
        raise ValueError(
            f"{qtype.name}: shape {dims} needs {n_blocks * type_size} bytes, got {data.numel()}"
        )
    if qtype in _FLOAT_TYPES:
        values = _reinterpret(data, _FLOAT_TYPES[qtype])
        # F32 would alias the input; every other path allocates a new tensor anyway.
        out = values.clone() if qtype == _T.F32 else values.to(torch.float32)
        return out.reshape(dims)
    blocks = data.reshape(n_blocks, type_size)
    return _BLOCK_DEQUANT[qtype](blocks).reshape(dims)
