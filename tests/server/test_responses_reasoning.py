"""A thinking model's reasoning in the Responses API: a ``reasoning`` output item before
the message, streamed as ``response.reasoning_text`` events, and sent back as an input
item. The tiny random Qwen3 of test_thinking, its output held by a JSON-string schema to
``"<reasoning></think><answer>"``."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from tests.server.conftest import ServerProcess
from tests.server.test_thinking import NAME, SCHEMA, thinker  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

FORMAT: dict[str, Any] = {"format": {"type": "json_schema", "name": "split", "schema": SCHEMA}}


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def assert_split(reasoning: str, content: str) -> None:
    assert reasoning and content and "think>" not in reasoning + content
    assert re.fullmatch(SCHEMA["pattern"], json.loads(f"{reasoning}</think>{content}"))


def test_reasoning_item(thinker: ServerProcess) -> None:  # noqa: F811
    resp = client(thinker).responses.create(
        model=NAME,
        input="Hi",
        reasoning={"effort": "medium"},
        text=FORMAT,  # type: ignore[arg-type]
        max_output_tokens=40,
        temperature=0,
    )
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    reasoning, message = resp.output
    assert reasoning.type == "reasoning" and reasoning.content
    assert_split(reasoning.content[0].text, resp.output_text)
    # Sent back as an item, the reasoning goes with the assistant turn after it.
    items = [{"role": "user", "content": "Hi"}, *resp.output]
    again = client(thinker).responses.create(
        model=NAME,
        input=[*items, {"role": "user", "content": "More"}],  # type: ignore[list-item]
        reasoning={"effort": "none"},
        max_output_tokens=4,
        store=False,
    )
    assert [item.type for item in again.output] == ["message"]


def test_reasoning_streams(thinker: ServerProcess) -> None:  # noqa: F811
    with client(thinker).responses.stream(
        model=NAME, input="Hi", text=FORMAT, max_output_tokens=40, temperature=0
    ) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_response()
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert_split(thought, text)
    assert final.output[0].type == "reasoning" and final.output_text == text
