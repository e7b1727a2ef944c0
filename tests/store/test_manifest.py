"""Manifest parsing: every digest, size and name is checked when the manifest is parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heron.store.manifest import (
    MAX_MANIFEST_BYTES,
    MEDIA_CONFIG,
    MEDIA_FILE,
    MEDIA_MANIFEST,
    MEDIA_MODEL,
    Layer,
    Manifest,
    ManifestError,
    check_layer_name,
    parse_manifest,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def body(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": D1, "size": 10},
        "layers": [
            {"mediaType": MEDIA_MODEL, "digest": D2, "size": 1234},
            {"mediaType": MEDIA_FILE, "digest": D3, "size": 0, "name": "1_Pooling/config.json"},
        ],
    }
    out.update(overrides)
    return out


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_round_trip_and_digest() -> None:
    m = parse_manifest(encode(body()))
    assert m.config == Layer(MEDIA_CONFIG, D1, 10)
    assert m.layers[1].name == "1_Pooling/config.json"
    assert parse_manifest(m.to_json()) == m
    assert m.digest() == parse_manifest(m.to_json()).digest()
    assert m.digests() == [D1, D2, D3]
    assert json.loads(m.to_json())["mediaType"] == MEDIA_MANIFEST


def test_unknown_layer_keys_are_ignored() -> None:
    b = body()
    b["layers"][0]["from"] = "/some/where/blobs/sha256-x"
    assert parse_manifest(encode(b)).layers[0].digest == D2


def test_oversized_manifest_is_refused_before_decoding() -> None:
    data = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError, match="cap"):
        parse_manifest(data)


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../x", "sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 64, 5, None],
)
def test_bad_layer_digest(digest: Any) -> None:
    b = body()
    b["layers"][0]["digest"] = digest
    with pytest.raises(ManifestError):
        parse_manifest(encode(b))


def test_bad_config_digest() -> None:
    with pytest.raises(ManifestError):
        parse_manifest(encode(body(config={"mediaType": MEDIA_CONFIG, "digest": "sha256:../x"})))


@pytest.mark.parametrize("size", [-1, 1.5, "10", True, None, 1 << 60])
def test_bad_sizes(size: Any) -> None:
    b = body()
    b["layers"][0]["size"] = size
    with pytest.raises(ManifestError):
        parse_manifest(encode(b))


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "..",
        ".",
        "a/../b",
        "/etc/passwd",
        "a/b/c",
        ".hidden",
        "a\\b",
        "a\x00b",
        "",
        "x" * 129,
        "dir/",
        "with space.json",
        5,
    ],
)
def test_bad_layer_names(name: Any) -> None:
    b = body()
    b["layers"][1]["name"] = name
    with pytest.raises(ManifestError):
        parse_manifest(encode(b))


@pytest.mark.parametrize(
    "name", ["config.json", "model-00001-of-00002.safetensors", "1_Pooling/config.json", "_x"]
)
def test_good_layer_names(name: str) -> None:
    assert check_layer_name(name) == name


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        encode(body(schemaVersion=1)),
        encode(body(schemaVersion=True)),
        encode(body(mediaType="text/html")),
        encode(body(layers={"a": 1})),
        encode(body(config=None)),
        encode(body(config="x")),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_manifests(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_duplicate_layer_names_are_refused() -> None:
    b = body()
    b["layers"].append(
        {"mediaType": MEDIA_FILE, "digest": D2, "size": 1, "name": "1_Pooling/config.json"}
    )
    with pytest.raises(ManifestError, match="same name"):
        parse_manifest(encode(b))


def test_layer_validates_on_construction() -> None:
    with pytest.raises(ManifestError):
        Layer(MEDIA_MODEL, "sha256:../../x", 1)
    with pytest.raises(ManifestError):
        Layer("bad media type with spaces", D1, 1)
    with pytest.raises(ManifestError):
        Manifest(
            Layer(MEDIA_CONFIG, D1, 1),
            (Layer(MEDIA_FILE, D2, 1, "a"), Layer(MEDIA_FILE, D3, 1, "a")),
        )
