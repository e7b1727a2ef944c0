"""LangChain's ``ChatOpenAI`` against ``/v1/chat/completions`` of a real ``heron serve``:
structured output by each of its methods, forced tool calls (whole and streamed), and a tool's
answer sent back. SmolLM2 is tiny, so everything asserted here is held by a grammar."""

from __future__ import annotations

from typing import Any, Literal

import httpx2
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.frameworks.conftest import API_KEY, MAX_TOKENS, Wire
from tests.frameworks.weather import ASK, Weather, weather_report
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow


@tool(args_schema=Weather)
def get_weather(city: str, unit: str) -> str:
    """The current weather in a city."""
    return weather_report(city, unit)


def chat(server: ServerProcess, wire: Wire) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,  # type: ignore[arg-type]
        model=server.model,
        temperature=0,
        max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
        max_retries=0,
        http_client=httpx2.Client(event_hooks=wire.hooks()),
    )


def forced(server: ServerProcess, wire: Wire, tool_choice: str) -> Runnable[Any, AIMessage]:
    """One call to get_weather, forced. ``strict`` keeps the schema's
    ``additionalProperties: false`` (LangChain drops it otherwise); one call, since SmolLM2
    held to "some calls" at temperature 0 repeats the same call until its tokens run out."""
    return chat(server, wire).bind_tools(
        [get_weather], tool_choice=tool_choice, strict=True, parallel_tool_calls=False
    )


def only_call(message: AIMessage) -> dict[str, Any]:
    assert not message.invalid_tool_calls, message.invalid_tool_calls
    assert len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    Weather.model_validate(call["args"])
    return dict(call)


@pytest.mark.parametrize("method", [None, "json_schema", "function_calling"])
def test_structured_output_is_a_model_instance(
    server: ServerProcess, wire: Wire, method: Literal["json_schema", "function_calling"] | None
) -> None:
    llm = chat(server, wire)
    if method is None:
        structured = llm.with_structured_output(Weather)
    else:
        structured = llm.with_structured_output(Weather, method=method)
    answer = structured.invoke(ASK)
    assert isinstance(answer, Weather)
    (body,) = wire.requests("/chat/completions")
    if method == "function_calling":
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    else:  # json_schema, LangChain's default
        assert body["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("tool_choice", ["get_weather", "any", "required"])
def test_forced_tool_call_parses_and_validates(
    server: ServerProcess, wire: Wire, tool_choice: str
) -> None:
    message = forced(server, wire, tool_choice).invoke(ASK)
    assert isinstance(message, AIMessage)
    only_call(message)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    (body,) = wire.requests("/chat/completions")
    assert body["tools"][0]["function"]["parameters"]["additionalProperties"] is False


def test_forced_call_to_a_non_strict_tool_validates(server: ServerProcess, wire: Wire) -> None:
    llm = chat(server, wire).bind_tools([get_weather], tool_choice="get_weather")
    message = llm.invoke(ASK)
    assert isinstance(message, AIMessage)
    only_call(message)


def test_streamed_tool_call_adds_up_to_a_valid_call(server: ServerProcess, wire: Wire) -> None:
    chunks = list(forced(server, wire, "get_weather").stream(ASK))
    assert len(chunks) > 1  # streamed, not one reply in disguise
    pieces = [chunk for chunk in chunks if isinstance(chunk, AIMessageChunk)]
    assert len(pieces) == len(chunks)
    only_call(add_ai_message_chunks(*pieces))
    (body,) = wire.requests("/chat/completions")
    assert body["stream"] is True


def test_tool_answer_goes_back_to_the_model(server: ServerProcess, wire: Wire) -> None:
    llm = chat(server, wire)
    question = HumanMessage(ASK)
    called = forced(server, wire, "get_weather").invoke([question])
    assert isinstance(called, AIMessage)
    call = only_call(called)
    answer = get_weather.invoke(call)
    assert isinstance(answer, ToolMessage) and answer.tool_call_id == call["id"]
    final = llm.bind_tools([get_weather], strict=True).invoke([question, called, answer])
    assert isinstance(final, AIMessage)
    # The history reached the server as OpenAI's shapes: the assistant's call, then its answer.
    sent = wire.requests("/chat/completions")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"] == sent[2]["tool_call_id"]
    assert final.content or final.tool_calls
