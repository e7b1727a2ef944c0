"""The CLI's pure helpers: formats, prompt composition, multi-line input, Modelfile requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.cli.client import CLIError, base_url
from heron.cli.create import from_path, model_files, request_body
from heron.cli.display import (
    go_duration,
    human_bytes,
    human_time,
    parse_time,
    stats_lines,
    table,
)
from heron.cli.models import parameter_lines, summary
from heron.cli.repl import read_message
from heron.cli.run import compose_prompt
from heron.store.modelfile import parse_modelfile


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1_000, "1 KB"), (1_500, "1.5 KB"), (98_362_432, "98 MB"),
     (1_300_000_000, "1.3 GB"), (2_000_000_000, "2 GB"), (12_345_678_901_234, "12 TB")],
)  # fmt: skip
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [(-0.5, "Less than a second ago"), (-1.5, "1 second ago"), (-30, "30 seconds ago"),
     (-90, "About a minute ago"), (-125, "2 minutes ago"), (-4000, "About an hour ago"),
     (-3 * 3600, "3 hours ago"), (-86400 * 1.5, "1 day ago"), (-86400 * 3, "3 days ago"),
     (-86400 * 15, "2 weeks ago"), (-86400 * 65, "2 months ago"), (-86400 * 800, "2 years ago"),
     (299, "4 minutes from now"), (30, "30 seconds from now"), (1e12, "Forever")],
)  # fmt: skip
def test_human_time(delta: float, text: str) -> None:
    now = 1_700_000_000.0
    assert human_time(now + delta, now) == text
    assert human_time(None) == "Never"


def test_parse_time_takes_nanoseconds() -> None:
    assert parse_time("2026-11-25T11:44:16.341203437Z") == pytest.approx(1795607056.341203)
    assert parse_time("2026-11-25T11:44:16Z") == 1795607056.0
    assert parse_time("") is None and parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("ns", "text"),
    [(812, "812ns"), (5_066, "5.066µs"), (5_066_492, "5.066492ms"), (121_000_000, "121ms"),
     (3_800_615_013, "3.800615013s"), (2_000_000_000, "2s"), (62_500_000_000, "1m2.5s"),
     (3_723_000_000_000, "1h2m3s")],
)  # fmt: skip
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_stats_lines() -> None:
    final = {
        "total_duration": 3_800_615_013,
        "load_duration": 5_066_492,
        "prompt_eval_count": 36,
        "prompt_eval_duration": 120_000_000,
        "eval_count": 64,
        "eval_duration": 3_200_000_000,
    }
    assert stats_lines(final, 0.15) == [
        "total duration:       3.800615013s",
        "load duration:        5.066492ms",
        "prompt eval count:    36 token(s)",
        "prompt eval duration: 120ms",
        "prompt eval rate:     300.00 tokens/s",
        "eval count:           64 token(s)",
        "eval duration:        3.2s",
        "eval rate:            20.00 tokens/s",
        "time to first token:  150ms",
    ]


def test_table_aligns_columns() -> None:
    text = table(("NAME", "ID"), [("smollm2:latest", "b179c9523d0e"), ("x", "")])
    assert text.splitlines() == [
        "NAME             ID",
        "smollm2:latest   b179c9523d0e",
        "x",
    ]


def test_base_url_forms() -> None:
    assert base_url("127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert base_url("localhost") == "http://localhost:11434"
    assert base_url("https://example.com:443") == "https://example.com:443"
    assert base_url("[::1]:8080") == "http://[::1]:8080"


def test_compose_prompt() -> None:
    assert compose_prompt(None, None) is None
    assert compose_prompt(None, "") is None
    assert compose_prompt("Summarise:", None) == "Summarise:"
    assert compose_prompt(None, "text\n") == "text"
    assert compose_prompt("Summarise:", "line 1\nline 2\n") == "Summarise:\n\nline 1\nline 2"


def read_all(lines: list[str]) -> tuple[str, list[str]]:
    prompts: list[str] = []
    source = iter(lines)

    def read(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(source)
        except StopIteration:
            raise EOFError from None

    return read_message(read), prompts


def test_read_message_multiline() -> None:
    assert read_all(["hello"]) == ("hello", [">>> "])
    assert read_all(['"""one line"""']) == ("one line", [">>> "])
    text, prompts = read_all(['"""', "first", "second", '"""'])
    assert (text, prompts) == ("first\nsecond", [">>> ", "... ", "... ", "... "])
    assert read_all(['"""Name a colour.', 'One word."""'])[0] == "Name a colour.\nOne word."
    assert (
        read_all(['/set system """You are', 'a pirate."""'])[0] == "/set system You are\na pirate."
    )
    with pytest.raises(EOFError):
        read_all(['"""', "never closed"])


def test_parameter_lines_and_summary() -> None:
    params = 'num_ctx                        5824\nstop                           "<|im_end|>"'
    assert parameter_lines(params) == [("num_ctx", "5824"), ("stop", '"<|im_end|>"')]
    info = {
        "details": {"family": "llama", "parameter_size": "134.52M", "quantization_level": "Q4_1"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192,
                       "llama.embedding_length": 576},
        "capabilities": ["completion"],
        "parameters": params,
        "system": "You are a pirate.",
        "license": "Apache License\nVersion 2.0\nTerms...",
    }  # fmt: skip
    assert summary(info).splitlines() == [
        "  Model",
        "    architecture        llama",
        "    parameters          134.52M",
        "    context length      8192",
        "    embedding length    576",
        "    quantization        Q4_1",
        "",
        "  Capabilities",
        "    completion",
        "",
        "  Parameters",
        "    num_ctx    5824",
        '    stop       "<|im_end|>"',
        "",
        "  System",
        "    You are a pirate.",
        "",
        "  License",
        "    Apache License",
        "    Version 2.0",
        "    ...",
    ]


# ----------------------------------------------------------------------------- create
def test_request_body_from_name() -> None:
    modelfile = parse_modelfile(
        "FROM smollm2\nPARAMETER temperature 0.5\nPARAMETER stop <a>\nPARAMETER stop <b>\n"
        'SYSTEM """Be brief."""\nLICENSE MIT\nMESSAGE user Hi\nMESSAGE assistant Hello\n'
        "TEMPLATE {{ .Prompt }}\n"
    )
    assert request_body("mine", modelfile, None) == {
        "model": "mine",
        "stream": True,
        "from": "smollm2",
        "template": "{{ .Prompt }}",
        "system": "Be brief.",
        "license": ["MIT"],
        "parameters": {"temperature": 0.5, "stop": ["<a>", "<b>"]},
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }


def test_request_body_with_files() -> None:
    body = request_body(
        "mine", parse_modelfile("FROM ./m.gguf\n"), {"m.gguf": "sha256:" + "a" * 64}
    )
    assert body == {"model": "mine", "stream": True, "files": {"m.gguf": "sha256:" + "a" * 64}}


def test_from_path(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "hf").mkdir()
    assert from_path("m.gguf", tmp_path) == tmp_path / "m.gguf"
    assert from_path("./hf", tmp_path) == tmp_path / "hf"
    assert from_path(str(tmp_path / "m.gguf"), Path("/")) == tmp_path / "m.gguf"
    assert from_path("smollm2", tmp_path) is None
    assert from_path("hf.co/org/repo:Q4_K_M", tmp_path) is None
    for missing in ("./nope", "/nonexistent/x", "other.gguf"):
        with pytest.raises(CLIError, match="no such file"):
            from_path(missing, tmp_path)


def test_model_files(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert model_files(gguf) == {"model.gguf": gguf}
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"\x00" * 8)
    with pytest.raises(CLIError, match="not a GGUF file"):
        model_files(not_gguf)
    hf = tmp_path / "hf"
    (hf / "1_Pooling").mkdir(parents=True)
    (hf / ".cache" / "huggingface").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "1_Pooling/config.json", ".gitattributes",
                 ".cache/huggingface/x.lock"):  # fmt: skip
        (hf / name).write_text("{}")
    assert sorted(model_files(hf)) == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIError, match="no files"):
        model_files(tmp_path / "empty")
