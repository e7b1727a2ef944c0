"""The model name grammar: valid names, and path-like names refused before any file is touched."""

from __future__ import annotations

import pytest

from heron.store.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    InvalidNameError,
    ModelName,
    parse_name,
)


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("smollm2", (DEFAULT_HOST, DEFAULT_NAMESPACE, "smollm2", DEFAULT_TAG), "smollm2:latest"),
        ("SmolLM2:135M", (DEFAULT_HOST, DEFAULT_NAMESPACE, "smollm2", "135m"), "smollm2:135m"),
        ("gemma3:270m", (DEFAULT_HOST, DEFAULT_NAMESPACE, "gemma3", "270m"), "gemma3:270m"),
        ("ns/m:tag", (DEFAULT_HOST, "ns", "m", "tag"), "ns/m:tag"),
        ("library/m", (DEFAULT_HOST, DEFAULT_NAMESPACE, "m", DEFAULT_TAG), "m:latest"),
        (
            "hf.co/org/repo:Q4_K_M",
            ("hf.co", "org", "repo", "q4_k_m"),
            "hf.co/org/repo:q4_k_m",
        ),
        (
            "localhost:5000/ns/m:v1.2",
            ("localhost:5000", "ns", "m", "v1.2"),
            "localhost:5000/ns/m:v1.2",
        ),
        ("all-minilm", (DEFAULT_HOST, DEFAULT_NAMESPACE, "all-minilm", DEFAULT_TAG), None),
        ("m_1.5-x:_t", (DEFAULT_HOST, DEFAULT_NAMESPACE, "m_1.5-x", "_t"), None),
        ("a" * 80 + ":" + "b" * 80, (DEFAULT_HOST, DEFAULT_NAMESPACE, "a" * 80, "b" * 80), None),
    ],
)
def test_valid_names(text: str, parts: tuple[str, str, str, str], display: str | None) -> None:
    name = parse_name(text)
    assert name.manifest_relpath() == parts
    if display is not None:
        assert name.display == display
        assert str(name) == display
    assert parse_name(name.display) == name  # the display form parses back to the same name


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../x",
        "..",
        ".",
        "./x",
        "x/..",
        "ns/../x",
        "/etc/passwd",
        "/x",
        "x/",
        "a//b",
        "a\x00b",
        "a\\b",
        "..\\..\\x",
        "a/b/c/d",
        "a/b/c/d/e",
        "x" * 10_000,
        "%2e%2e",
        "%2e%2e/x",
        "..%2fx",
        "a:",
        ":tag",
        "a:b:c",
        ".hidden",
        "-dash",
        "m@sha256:" + "0" * 64,
        "a b",
        " a",
        "a\n",
        "a" * 81,
        "m:" + "t" * 81,
        "host:99999/ns/m",
        "-host/ns/m",
        "ns/.m",
        "m:.t",
        "mödel",
    ],
)
def test_invalid_names(text: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        parse_name(text)
    assert len(str(info.value)) < 400  # a 10 KB name is never echoed back whole


@pytest.mark.parametrize(
    "parts",
    [
        (DEFAULT_HOST, "..", "m", "t"),
        (DEFAULT_HOST, "ns", "../m", "t"),
        (DEFAULT_HOST, "ns", "m", "a/b"),
        ("", "ns", "m", "t"),
        ("host/x", "ns", "m", "t"),
        (DEFAULT_HOST, "ns", "M", "t"),  # components are lower-case
    ],
)
def test_direct_construction_is_validated(parts: tuple[str, str, str, str]) -> None:
    with pytest.raises(InvalidNameError):
        ModelName(*parts)


def test_default_host_for_importers() -> None:
    name = parse_name("llama3.2", default_host="registry.ollama.ai")
    assert name.manifest_relpath() == ("registry.ollama.ai", "library", "llama3.2", "latest")
    assert name.display == "registry.ollama.ai/library/llama3.2:latest"
