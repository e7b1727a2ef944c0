"""Hardened GGUF reader.

A GGUF file is untrusted input: every length, count, dimension, offset and the alignment come
from the file. ``GGUFFile`` validates the whole header before exposing anything, with every read
bounded by the bytes actually left in the file and by fixed caps, so a crafted file fails in
milliseconds with a ``GGUFError`` instead of hanging, allocating without bound or reading past the
end of the map.

Layout (little endian)::

    | magic "GGUF" | version u32 | n_tensors u64 | n_kv u64 |
    | n_kv x (key: str, type: u32, value) |
    | n_tensors x (name: str, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64) |
    | padding to `alignment` | tensor data (offsets relative to here, each aligned) |

    str = length u64 + UTF-8 bytes; array value = item type u32 + count u64 + items
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

if TYPE_CHECKING:
    import torch


__all__ = ["GGUFError", "GGUFFile", "GGUFTensorInfo"]

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_KV_COUNT = 1 << 16  # real files carry tens of keys
MAX_TENSOR_COUNT = 1 << 20
MAX_NAME_BYTES = 1 << 12  # keys and tensor names
MAX_STRING_BYTES = 1 << 26  # 64 MiB; chat templates are tens of KiB
MAX_ARRAY_ITEMS = 1 << 24  # vocabularies and merge lists are a few hundred thousand
MAX_TOTAL_ARRAY_ITEMS = 1 << 25  # over the whole header: bounds the Python objects built
MAX_ARRAY_DEPTH = 2  # the spec allows arrays of arrays; nothing deeper is used
INT64_MAX = (1 << 63) - 1

_HEADER_BYTES = 24
# Fewest bytes one entry can occupy, used to bound counts by the file size before any loop:
# key/name length u64 + 1 byte, then value type u32 + 1-byte value, or n_dims u32 + one dim u64
# + type u32 + offset u64.
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_V = GGUFValueType
_SCALARS: dict[GGUFValueType, struct.Struct] = {
    _V.UINT8: struct.Struct("<B"),
    _V.INT8: struct.Struct("<b"),
    _V.UINT16: struct.Struct("<H"),
    _V.INT16: struct.Struct("<h"),
    _V.UINT32: _U32,
    _V.INT32: struct.Struct("<i"),
    _V.FLOAT32: struct.Struct("<f"),
    _V.BOOL: struct.Struct("<?"),
    _V.UINT64: _U64,
    _V.INT64: struct.Struct("<q"),
    _V.FLOAT64: struct.Struct("<d"),
}
_NP_DTYPES: dict[GGUFValueType, str] = {
    _V.UINT8: "<u1",
    _V.INT8: "<i1",
    _V.UINT16: "<u2",
    _V.INT16: "<i2",
    _V.UINT32: "<u4",
    _V.INT32: "<i4",
    _V.FLOAT32: "<f4",
    _V.BOOL: "<u1",
    _V.UINT64: "<u8",
    _V.INT64: "<i8",
    _V.FLOAT64: "<f8",
}


class GGUFError(ValueError):
    """A GGUF file is malformed, unsupported or unsafe; the message names the file."""


@dataclass(slots=True, frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file, validated against the file's size."""

    name: str
    shape: tuple[int, ...]  # torch order: ggml dims reversed, last dim is the contiguous one
    ggml_type: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _Parser:
    """Bounds-checked cursor over the mapped file. Every read checks the bytes left first."""

    __slots__ = ("path", "buf", "size", "pos", "array_items")

    def __init__(self, path: str, buf: mmap.mmap, size: int) -> None:
        self.path = path
        self.buf = buf
        self.size = size
        self.pos = 0
        self.array_items = 0

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.error(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"file has {self.size - self.pos} left"
            )

    def scalar(self, s: struct.Struct, what: str) -> Any:
        self.need(s.size, what)
        (value,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return value

    def string(self, cap: int, what: str) -> str:
        n = self.scalar(_U64, f"length of {what}")
        if n > cap:
            raise self.error(f"{what} has length {n}, above the cap of {cap} bytes")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        # surrogateescape keeps non-UTF-8 vocabulary bytes recoverable instead of failing.
        return raw.decode("utf-8", "surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.scalar(_U32, what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.error(f"{what} has unknown value type {raw}") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
        if vtype == _V.STRING:
            return self.string(MAX_STRING_BYTES, what)
        if vtype != _V.ARRAY:
            return self.scalar(_SCALARS[vtype], what)
        if depth >= MAX_ARRAY_DEPTH:
            raise self.error(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        item_type = self.value_type(f"item type of {what}")
        count = self.scalar(_U64, f"item count of {what}")
        min_item = {_V.STRING: 8, _V.ARRAY: 12}.get(item_type) or _SCALARS[item_type].size
        self.array_items += count
        if count > MAX_ARRAY_ITEMS or self.array_items > MAX_TOTAL_ARRAY_ITEMS:
            raise self.error(f"{what} has {count} items, above the cap of {MAX_ARRAY_ITEMS}")
        if count * min_item > self.size - self.pos:
            raise self.error(
                f"truncated: {what} claims {count} items of at least {min_item} bytes, "
                f"file has {self.size - self.pos} bytes left"
            )
        if item_type in _NP_DTYPES:
            dtype = np.dtype(_NP_DTYPES[item_type])
            items = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            return (items != 0 if item_type == _V.BOOL else items).tolist()
        if item_type == _V.STRING:
            return self._strings(count, what)
        return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(count)]

    def _strings(self, count: int, what: str) -> list[str]:
        # Hot loop: vocabularies hold ~1e5 strings, so locals instead of attribute lookups.
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(count):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > MAX_STRING_BYTES or n > size - pos:
                self.pos = pos
                raise self.error(
                    f"{what}[{i}] has length {n}, beyond the cap or the {size - pos} bytes left"
                )
            append(buf[pos : pos + n].decode("utf-8", "surrogateescape"))
            pos += n
        self.pos = pos
        return out


def _parse(p: _Parser) -> tuple[int, dict[str, Any], dict[str, GGUFTensorInfo], int, int]:
    """Validate and parse the header; returns (version, metadata, tensors, alignment, data_offset)."""
    size = p.size
    version = p.scalar(_U32, "version")
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack("<I", struct.pack(">I", version))[0] in SUPPORTED_VERSIONS:
            raise p.error("big-endian GGUF files are not supported")
        raise p.error(f"unsupported GGUF version {version} (supported: {SUPPORTED_VERSIONS})")
    n_tensors = p.scalar(_U64, "tensor count")
    n_kv = p.scalar(_U64, "metadata count")
    if n_tensors > MAX_TENSOR_COUNT or n_tensors * _MIN_TENSOR_INFO_BYTES > size - p.pos:
        raise p.error(f"tensor count {n_tensors} cannot fit in a file of {size} bytes")
    if n_kv > MAX_KV_COUNT or n_kv * _MIN_KV_BYTES > size - p.pos:
        raise p.error(f"metadata count {n_kv} cannot fit in a file of {size} bytes")
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > size - p.pos:
        raise p.error(f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in the file")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = p.string(MAX_NAME_BYTES, f"key of metadata entry {i}")
        if not key:
            raise p.error(f"metadata entry {i} has an empty key")
        if key in metadata:
            raise p.error(f"duplicate metadata key {key!r}")
        metadata[key] = p.value(p.value_type(f"metadata {key!r}"), f"metadata {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        raise p.error(f"general.alignment must be an integer, got {alignment!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise p.error(f"general.alignment must be a positive power of two, got {alignment}")

    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = p.string(MAX_NAME_BYTES, f"name of tensor {i}")
        if name in names:
            raise p.error(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = p.scalar(_U32, f"dim count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise p.error(f"tensor {name!r} has {n_dims} dims (allowed: 1 to {MAX_DIMS})")
        dims = [p.scalar(_U64, f"dims of tensor {name!r}") for _ in range(n_dims)]
        n_elements = 1
        for d in dims:
            if d < 1 or d > INT64_MAX:
                raise p.error(f"tensor {name!r} has invalid dimension {d} in {dims}")
            n_elements *= d
            if n_elements > INT64_MAX:
                raise p.error(f"tensor {name!r} dims {dims} overflow int64")
        raw_type = p.scalar(_U32, f"type of tensor {name!r}")
        try:
            ggml_type = GGMLQuantizationType(raw_type)
            block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise p.error(f"tensor {name!r} has unknown ggml type {raw_type}") from None
        if dims[0] % block_size:
            raise p.error(
                f"tensor {name!r} ({ggml_type.name}) row length {dims[0]} is not a multiple "
                f"of the block size {block_size}"
            )
        nbytes = n_elements // block_size * type_size
        if nbytes > size:
            raise p.error(f"tensor {name!r} needs {nbytes} bytes, file has {size}")
        offset = p.scalar(_U64, f"offset of tensor {name!r}")
        if offset % alignment:
            raise p.error(f"tensor {name!r} offset {offset} is not aligned to {alignment}")
        infos.append((name, tuple(reversed(dims)), ggml_type, offset, nbytes))

    data_offset = -(-p.pos // alignment) * alignment
    tensors: dict[str, GGUFTensorInfo] = {}
    for name, shape, ggml_type, rel, nbytes in infos:
        start = data_offset + rel
        if start + nbytes > size:
            raise p.error(
                f"tensor {name!r} data [{start}, {start + nbytes}) runs past the end of the "
                f"file ({size} bytes)"
            )
        tensors[name] = GGUFTensorInfo(name, shape, ggml_type, start, nbytes)
    previous: GGUFTensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: t.offset):
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise p.error(f"tensor {info.name!r} data overlaps tensor {previous.name!r}")
        previous = info
    return version, metadata, tensors, alignment, data_offset


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    Construction parses and checks the whole header (see the module docstring) and raises
    ``GGUFError`` on any problem; afterwards every tensor's bytes are known to lie inside the
    file without overlap. Tensor data is read lazily through the map. Use as a context manager
    or call ``close()``; arrays returned by ``raw()`` keep the map alive until they are freed.
    """

    __slots__ = (
        "path",
        "version",
        "metadata",
        "tensors",
        "alignment",
        "data_offset",
        "file_size",
        "_mm",
        "_data",
    )

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._mm: mmap.mmap | None = None
        self._data: np.ndarray | None = None
        try:
            f = open(self.path, "rb")  # closed below; the map outlives it
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror or e}") from None
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise GGUFError(f"{self.path}: not a regular file")
            size = st.st_size
            head = f.read(min(size, _HEADER_BYTES))
            if size == 0:
                raise GGUFError(f"{self.path}: file is empty")
            if len(head) >= 4 and head[:4] != b"GGUF":
                raise GGUFError(f"{self.path}: bad magic {head[:4]!r}, not a GGUF file")
            if size < _HEADER_BYTES:
                raise GGUFError(
                    f"{self.path}: truncated: {size} bytes, a GGUF header needs {_HEADER_BYTES}"
                )
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            parser = _Parser(self.path, mm, size)
            parser.pos = 4
            parsed = _parse(parser)
        except BaseException:
            try:
                mm.close()
            except BufferError:  # a traceback frame still holds a view; GC unmaps it
                pass
            raise
        self.version, self.metadata, self.tensors, self.alignment, self.data_offset = parsed
        self.file_size = size
        self._mm = mm
        self._data = np.frombuffer(mm, dtype=np.uint8)  # read-only view over the whole file

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the map (no copy)."""
        info = self._info(name)
        assert self._data is not None
        return self._data[info.offset : info.offset + info.nbytes]

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor dequantized to ``dtype`` (default float32) in torch shape; a new,
        writable tensor."""
        # torch loads here, not with the module: reading a header (the HTTP process does)
        # must not import it.
        import torch

        from heron.loader.dequant import UnsupportedGGMLTypeError, dequantize

        info = self._info(name)
        with warnings.catch_warnings():
            # The map is read-only; dequantize() never writes to its input.
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(self.raw(name))
        try:
            out = dequantize(data, info.ggml_type, info.shape)
        except UnsupportedGGMLTypeError as e:
            raise GGUFError(f"{self.path}: tensor {name!r}: {e}") from None
        return out if dtype in (None, torch.float32) else out.to(dtype)

    def _info(self, name: str) -> GGUFTensorInfo:
        if self._data is None:
            raise GGUFError(f"{self.path}: file is closed")
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def close(self) -> None:
        """Release the map. Idempotent."""
        self._data = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # arrays from raw() still use it; it unmaps when they go
                pass
            self._mm = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, version={self.version}, tensors={len(self.tensors)}, "
            f"metadata={len(self.metadata)})"
        )
