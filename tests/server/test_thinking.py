"""Thinking through a real ``heron serve`` with the official clients: a tiny random Qwen3
whose chat template opens ``<think>`` in the generation prompt (as DeepSeek-R1's and
Qwen3's thinking models do), its output held by a grammar to ``<reasoning></think><answer>``,
split into each API's reasoning and answer fields, streamed and not; ``enable_thinking``
off gives an answer without reasoning; SmolLM2 (no thinking) refuses thinking with a 400."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest

from tests.models.tiny import build
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

NAME = "tiny-thinker"
# Qwen3's shape in small: past reasoning rendered back, the span opened for the reply (or
# left empty and closed when enable_thinking is false).
TEMPLATE = """\
{%- for message in messages -%}
<|im_start|>{{ message.role }}
{% if message.role == "assistant" and message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% else %}<think>
{% endif -%}
{%- endif -%}"""
REGEX = "[a-z]{1,4}</think>[a-z]{1,4}"
# Anthropic and Ollama constrain with JSON schemas: a JSON string that holds the marker.
SCHEMA = {"type": "string", "pattern": "^[a-z]{1,4}</think>[a-z]{1,4}$"}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = build("qwen3", tmp_path_factory.mktemp("thinker") / "hf")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    args = ("--served-model-name", NAME, "--kv-cache-memory-mb", "32")
    with running_server(*args, model=str(Path(directory))) as server:
        server.model = NAME
        yield server


def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)


def assert_split(reasoning: str, content: str, pattern: str = REGEX) -> None:
    """The reasoning and answer rejoin into the grammar's output, markers outside both."""
    assert reasoning and content
    assert "think>" not in reasoning + content
    assert re.fullmatch(pattern, f"{reasoning}</think>{content}")


def assert_json_split(reasoning: str, content: str) -> None:
    assert_split(reasoning, content, '".*')
    assert re.fullmatch(SCHEMA["pattern"], json.loads(f"{reasoning}</think>{content}"))


USER = [{"role": "user", "content": "Hi"}]
GRAMMAR: dict[str, Any] = {"structured_outputs": {"regex": REGEX}}


# ------------------------------------------------------------------------------ OpenAI
def test_openai_reasoning_content(thinker: ServerProcess) -> None:
    reply = oai(thinker).chat.completions.create(
        model=NAME,
        messages=USER,
        max_tokens=40,
        temperature=0,
        extra_body=GRAMMAR,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    reasoning = (message.model_extra or {})["reasoning_content"]
    assert_split(reasoning, message.content or "")
    assert reply.choices[0].finish_reason == "stop"


def test_openai_streams_reasoning_apart(thinker: ServerProcess) -> None:
    stream = oai(thinker).chat.completions.create(
        model=NAME,
        messages=USER,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        stream=True,
        reasoning_effort="high",
        extra_body=GRAMMAR,
    )
    reasoning, content = [], []
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            content.append(delta.content or "")
    assert_split("".join(reasoning), "".join(content))
    assert not any("<" in piece for piece in reasoning + content)


def test_openai_effort_none_turns_thinking_off(thinker: ServerProcess) -> None:
    history = [
        *USER,
        {"role": "assistant", "content": "hello", "reasoning_content": "they greet"},
        {"role": "user", "content": "Again"},
    ]
    reply = oai(thinker).chat.completions.create(
        model=NAME,
        messages=history,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        reasoning_effort="none",
        extra_body={"structured_outputs": {"regex": "[a-z]{4}"}},
    )
    message = reply.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") is None
    assert re.fullmatch("[a-z]{4}", message.content or "")


def test_openai_chat_template_kwargs_enable_thinking(thinker: ServerProcess) -> None:
    client = oai(thinker)
    off = {"chat_template_kwargs": {"enable_thinking": False}, **GRAMMAR}
    reply = client.chat.completions.create(
        model=NAME,
        messages=USER,
        max_tokens=16,
        temperature=0,
        extra_body=off,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") is None
    assert re.fullmatch(REGEX, message.content or "")  # the marker is the answer's text now
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=NAME,
            messages=USER,  # type: ignore[arg-type]
            max_tokens=2,
            extra_body={"chat_template_kwargs": {"documents": []}},
        )
    assert "chat_template_kwargs.documents" in str(info.value)


def test_openai_effort_on_a_model_that_does_not_think_is_a_400(server: ServerProcess) -> None:
    client = oai(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=server.model,
            messages=USER,
            max_tokens=2,
            reasoning_effort="low",  # type: ignore[arg-type]
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "reasoning_effort"
    assert "does not support thinking" in error["message"]
    reply = client.chat.completions.create(
        model=server.model,
        messages=USER,
        max_tokens=2,
        reasoning_effort="none",  # type: ignore[arg-type]
    )
    assert (reply.choices[0].message.model_extra or {}).get("reasoning_content") is None


# --------------------------------------------------------------------------- Anthropic
def anthropic_args(**kw: Any) -> dict[str, Any]:
    schema = {"format": {"type": "json_schema", "schema": SCHEMA}}
    return {
        "model": NAME,
        "max_tokens": 40,
        "messages": USER,
        "extra_body": {"output_config": schema, "temperature": 0},
        **kw,
    }


def test_anthropic_thinking_block(thinker: ServerProcess) -> None:
    message = claude(thinker).messages.create(**anthropic_args())
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert_json_split(thinking.thinking, text.text)
    assert thinking.signature and message.stop_reason == "end_turn"


def test_anthropic_streams_thinking_deltas(thinker: ServerProcess) -> None:
    kinds: list[str] = []
    args = anthropic_args(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)
    with claude(thinker).messages.stream(**args) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        final = stream.get_final_message()
    assert kinds[0] == "thinking_delta" and "signature_delta" in kinds and "text_delta" in kinds
    thinking, text = final.content
    assert thinking.type == "thinking" and text.type == "text"
    assert_json_split(thinking.thinking, text.text)
    # the reply's blocks go back as history
    history = [
        *USER,
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": "Again"},
    ]
    again = claude(thinker).messages.create(**anthropic_args(messages=history))
    assert again.content[-1].type == "text"


def test_anthropic_thinking_disabled(thinker: ServerProcess) -> None:
    message = claude(thinker).messages.create(
        model=NAME, max_tokens=3, messages=USER, thinking={"type": "disabled"}
    )
    assert [b.type for b in message.content] == ["text"]


def test_anthropic_count_tokens_follows_thinking(thinker: ServerProcess) -> None:
    client = claude(thinker)
    default = client.messages.count_tokens(model=NAME, messages=USER).input_tokens  # type: ignore[arg-type]
    off = client.messages.count_tokens(
        model=NAME,
        messages=USER,  # type: ignore[arg-type]
        thinking={"type": "disabled"},
    ).input_tokens
    # one token a byte: the closed empty span replaces the open one
    assert off - default == len("\n</think>\n\n")


def test_anthropic_thinking_on_a_model_that_does_not_think_is_a_400(
    server: ServerProcess,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(server).messages.create(
            model=server.model,
            max_tokens=2048,
            messages=USER,
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert "does not support thinking" in error["error"]["message"]


# ------------------------------------------------------------------------------ Ollama
def ollama_client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def test_ollama_chat_thinking(thinker: ServerProcess) -> None:
    client = ollama_client(thinker)
    options = {"temperature": 0, "num_predict": 40}
    reply = client.chat(NAME, messages=USER, think=True, format=SCHEMA, options=options)
    assert_json_split(reply.message.thinking or "", reply.message.content or "")
    thinking, content = [], []
    for part in client.chat(NAME, messages=USER, format=SCHEMA, options=options, stream=True):
        thinking.append(part.message.thinking or "")
        content.append(part.message.content or "")
    assert ("".join(thinking), "".join(content)) == (reply.message.thinking, reply.message.content)


def test_ollama_generate_thinking_and_think_false(thinker: ServerProcess) -> None:
    client = ollama_client(thinker)
    options = {"temperature": 0, "num_predict": 40}
    reply = client.generate(NAME, "Hi", think=True, format=SCHEMA, options=options)
    assert_json_split(reply.thinking or "", reply.response)
    off = client.chat(NAME, messages=USER, think=False, options={"num_predict": 3})
    assert off.message.thinking is None
    assert "thinking" in (client.show(NAME).capabilities or [])


def test_ollama_think_on_a_model_that_does_not_think_is_a_400(server: ServerProcess) -> None:
    client = ollama_client(server)
    assert "thinking" not in (client.show(server.model).capabilities or [])
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(server.model, messages=USER, think=True)
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error
