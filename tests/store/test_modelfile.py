"""Modelfile parsing, parameter typing and render() round trips."""

from __future__ import annotations

from typing import Any

import pytest

from heron.store.modelfile import (
    PARAMETER_TYPES,
    Modelfile,
    ModelfileError,
    coerce_parameter,
    parse_modelfile,
)

EVERYTHING = '''# comment line
  # indented comment
FROM ./models/tiny.gguf

parameter temperature 0.7
PARAMETER num_ctx 4096
PARAMETER Stop "<|im_end|>"
PARAMETER stop """<|endoftext|>"""
PARAMETER stop ###
PARAMETER use_mmap false
PARAMETER mirostat 0
PARAMETER penalize_newline TRUE
Template """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}# not a comment inside a block
<|im_start|>assistant
"""
SYSTEM You are a heron. # the rest of the line is the value
MESSAGE user "Is this a \\"question\\"?"
MESSAGE Assistant """Yes,
it is."""
LICENSE """MIT
License"""
LICENSE Apache-2.0
ADAPTER ./lora.gguf
'''


def test_every_directive() -> None:
    mf = parse_modelfile(EVERYTHING)
    assert mf.from_ == "./models/tiny.gguf"
    assert mf.parameters == [
        ("temperature", 0.7),
        ("num_ctx", 4096),
        ("stop", "<|im_end|>"),
        ("stop", "<|endoftext|>"),
        ("stop", "###"),
        ("use_mmap", False),
        ("mirostat", 0),
        ("penalize_newline", True),
    ]
    assert mf.parameter_dict() == {
        "temperature": 0.7,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "<|endoftext|>", "###"],
        "use_mmap": False,
        "mirostat": 0,
        "penalize_newline": True,
    }
    assert mf.template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "# not a comment inside a block\n<|im_start|>assistant\n"
    )
    assert mf.system == "You are a heron. # the rest of the line is the value"
    assert mf.messages == [
        {"role": "user", "content": 'Is this a "question"?'},
        {"role": "assistant", "content": "Yes,\nit is."},
    ]
    assert mf.license == ["MIT\nLicense", "Apache-2.0"]
    assert mf.adapters == ["./lora.gguf"]  # parsed here; create() refuses it


def test_render_round_trip() -> None:
    mf = parse_modelfile(EVERYTHING)
    assert parse_modelfile(mf.render()) == mf


@pytest.mark.parametrize(
    "text",
    [
        'ends with a quote"',
        'has """ inside',
        "tab\there, backslash \\ and\r\nCRLF",
        "  leading and trailing spaces  ",
        "",
        '"starts with a quote',
        "line one\nline two",
    ],
)
def test_render_round_trip_awkward_text(text: str) -> None:
    mf = Modelfile(
        from_="m:latest",
        parameters=[("stop", text), ("seed", -1), ("top_p", 1e-05)],
        template=text,
        system=text,
        license=[text],
        messages=[{"role": "system", "content": text}],
    )
    assert parse_modelfile(mf.render()) == mf


def test_crlf_and_case_insensitive_directives() -> None:
    mf = parse_modelfile('from m\r\nsystem """a\r\nb"""\r\nPaRaMeTeR TOP_K 5\r\n')
    assert mf.from_ == "m" and mf.system == "a\nb" and mf.parameters == [("top_k", 5)]


def test_later_template_and_system_win() -> None:
    mf = parse_modelfile("FROM m\nSYSTEM one\nSYSTEM two\n")
    assert mf.system == "two"


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("", None, "no FROM"),
        ("# only a comment\n", None, "no FROM"),
        ("FROM a\nFROM b\n", 2, "more than one FROM"),
        ('FROM ""\n', None, "FROM is empty"),
        ("FROM m\nPARAMETER\n", 2, "needs a name"),
        ("FROM m\nPARAMETER temperature\n", 2, "needs a value"),
        ("FROM m\nPARAMETER not_a_param 1\n", 2, "unknown parameter"),
        ("FROM m\n\nPARAMETER num_ctx lots\n", 3, "invalid value"),
        ("FROM m\nPARAMETER num_ctx 1.5\n", 2, "invalid value"),
        ("FROM m\nPARAMETER temperature nan\n", 2, "invalid value"),
        ("FROM m\nPARAMETER temperature inf\n", 2, "invalid value"),
        ("FROM m\nPARAMETER use_mmap maybe\n", 2, "invalid value"),
        ("FROM m\nPARAMETER seed 99999999999999999999999\n", 2, "invalid value"),
        ("FROM m\nMESSAGE tool hi\n", 2, "role"),
        ("FROM m\nMESSAGE user\n", 2, "needs a value"),
        ('FROM m\nSYSTEM """never closed\nmore\n', 2, "never closed"),
        ('FROM m\nSYSTEM "never closed\n', 2, "never closed"),
        ('FROM m\nSYSTEM """a""" trailing\n', 2, "after the closing"),
        ('FROM m\nSYSTEM "a" trailing\n', 2, "after the closing"),
        ("FROM m\nREQUIRES 0.5\n", 2, "unknown directive"),
        ("FROM m\nINSTRUCTION x\n", 2, "unknown directive"),
    ],
)
def test_errors_name_the_line(text: str, line: int | None, match: str) -> None:
    with pytest.raises(ModelfileError, match=match) as info:
        parse_modelfile(text)
    if line is not None:
        assert f"line {line}:" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_ctx", "2048", 2048),
        ("num_ctx", 2048, 2048),
        ("num_ctx", 2048.0, 2048),
        ("seed", "-1", -1),
        ("temperature", "0", 0.0),
        ("temperature", 1, 1.0),
        ("TEMPERATURE", "0.5", 0.5),
        ("use_mmap", "1", True),
        ("use_mmap", "F", False),
        ("use_mmap", True, True),
        ("stop", "</s>", "</s>"),
        ("draft_num_predict", "4", 4),
    ],
)
def test_coerce_parameter(key: str, value: Any, expected: Any) -> None:
    out = coerce_parameter(key, value)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_ctx", True),
        ("num_ctx", 1.5),
        ("temperature", "hot"),
        ("temperature", float("nan")),
        ("temperature", True),
        ("stop", 5),
        ("use_mmap", 1),
        ("nope", "1"),
        ("", "1"),
    ],
)
def test_coerce_parameter_refuses(key: str, value: Any) -> None:
    with pytest.raises(ModelfileError):
        coerce_parameter(key, value)


def test_removed_ollama_options_are_accepted() -> None:
    removed = ["mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline", "numa"]
    removed += ["low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock"]
    assert set(removed) <= set(PARAMETER_TYPES)
    text = "FROM m\n" + "".join(
        f"PARAMETER {k} {'true' if PARAMETER_TYPES[k] is bool else '1'}\n" for k in removed
    )
    assert len(parse_modelfile(text).parameters) == len(removed)
