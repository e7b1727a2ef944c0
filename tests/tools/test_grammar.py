"""Tool-call grammars on a one-token-per-byte vocabulary: what each choice mode lets the
model write, in every format, and that the parser reads back what the grammar allows."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import pytest

from heron.server.parsing import ParsedOutput
from heron.structured.grammar import parser_limits
from heron.tools.formats import ToolFormat
from heron.tools.registry import FORMATS, get_format
from heron.tools.spec import ToolChoice, ToolSpec
from tests.models.tiny import VOCAB, save_byte_tokenizer

WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec("now")
TOOLS = [WEATHER, TIME]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> llguidance.LLTokenizer:
    d: Path = tmp_path_factory.mktemp("bytes")
    save_byte_tokenizer(d)
    return llguidance.LLTokenizer((d / "tokenizer.json").read_text(), n_vocab=VOCAB)


def accepts(
    tok: llguidance.LLTokenizer,
    fmt: ToolFormat,
    choice: ToolChoice,
    text: str,
    parallel: bool = False,
) -> bool:
    so = fmt.constraint(TOOLS, choice, parallel)
    assert so is not None
    so.check()
    matcher = llguidance.LLMatcher(tok, so.to_grammar(), limits=parser_limits(), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return bool(matcher.consume_tokens(list(text.encode()))) and matcher.is_accepting()


def written(fmt: ToolFormat, calls: list[tuple[str, dict[str, object]]]) -> str:
    """The text ``fmt`` writes for ``calls``."""
    bodies = [
        fmt.call_open + json.dumps({"name": n, fmt.args_key: a}) + fmt.call_close for n, a in calls
    ]
    return fmt.region_open + fmt.separator.join(bodies) + fmt.region_close


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_required_accepts_a_valid_call_and_parses_back(
    tokenizer: llguidance.LLTokenizer, name: str
) -> None:
    fmt = get_format(name)
    call = ("get_weather", {"city": "Paris", "days": 2})
    text = written(fmt, [call])
    assert accepts(tokenizer, fmt, ToolChoice("required"), text)
    parser = fmt.parser()
    parsed = ParsedOutput()
    parsed.add(parser.feed(text) + parser.finish())
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [call]
    assert "".join(parsed.content) == ""


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_required_refuses_bad_calls(tokenizer: llguidance.LLTokenizer, name: str) -> None:
    fmt = get_format(name)
    required = ToolChoice("required")
    assert not accepts(tokenizer, fmt, required, "Hello")
    assert not accepts(tokenizer, fmt, required, written(fmt, [("nope", {})]))
    assert not accepts(tokenizer, fmt, required, written(fmt, [("get_weather", {"days": 1})]))
    bad_type = written(fmt, [("get_weather", {"city": 3})])
    assert not accepts(tokenizer, fmt, required, bad_type)
    two = written(fmt, [("now", {}), ("get_weather", {"city": "Oslo"})])
    assert not accepts(tokenizer, fmt, required, two)
    assert accepts(tokenizer, fmt, required, two, parallel=True)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_named_allows_only_that_tool(tokenizer: llguidance.LLTokenizer, name: str) -> None:
    fmt = get_format(name)
    named = ToolChoice("named", "now")
    assert accepts(tokenizer, fmt, named, written(fmt, [("now", {})]))
    assert not accepts(tokenizer, fmt, named, written(fmt, [("get_weather", {"city": "X"})]))


def test_auto_is_free_text_until_a_call_opens(tokenizer: llguidance.LLTokenizer) -> None:
    fmt = get_format("hermes")
    auto = ToolChoice("auto")
    assert accepts(tokenizer, fmt, auto, "Just text, a < b, no <tool call.")
    call = written(fmt, [("now", {})])
    assert accepts(tokenizer, fmt, auto, f"Let me check. {call} Done.")
    assert not accepts(tokenizer, fmt, auto, 'Let me check. <tool_call>\n{"name": "rm"')


def test_none_has_no_constraint() -> None:
    assert get_format("hermes").constraint(TOOLS, ToolChoice("none"), True) is None
