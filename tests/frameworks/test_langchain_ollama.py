"""LangChain's ``ChatOllama`` against ``/api/chat`` of a real ``heron serve``: ``format`` as a
JSON schema (directly and through structured output) and tools. Ollama's API has no
``tool_choice`` (LangChain drops it), so whether SmolLM2 calls the tool is its own choice; what
must hold is that the request goes through and any call it makes parses and fits the schema."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

from tests.frameworks.conftest import API_KEY, MAX_TOKENS, Wire
from tests.frameworks.weather import ASK, Weather, weather_report
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow


@tool(args_schema=Weather)
def get_weather(city: str, unit: str) -> str:
    """The current weather in a city."""
    return weather_report(city, unit)


def chat(server: ServerProcess, wire: Wire, **kw: object) -> ChatOllama:
    return ChatOllama(
        base_url=server.base_url,
        model=server.model,
        temperature=0,
        num_predict=MAX_TOKENS,
        client_kwargs={"headers": {"Authorization": f"Bearer {API_KEY}"}},
        sync_client_kwargs={"event_hooks": wire.hooks()},
        **kw,  # type: ignore[arg-type]
    )


def test_format_schema_holds_the_reply(server: ServerProcess, wire: Wire) -> None:
    reply = chat(server, wire, format=Weather.model_json_schema()).invoke(ASK)
    assert isinstance(reply.content, str)
    Weather.model_validate(json.loads(reply.content))
    (body,) = wire.requests("/api/chat")
    assert body["format"] == Weather.model_json_schema()


def test_structured_output_is_a_model_instance(server: ServerProcess, wire: Wire) -> None:
    answer = chat(server, wire).with_structured_output(Weather).invoke(ASK)
    assert isinstance(answer, Weather)
    (body,) = wire.requests("/api/chat")
    assert body["format"]["properties"].keys() == {"city", "unit"}


def test_tools_go_through_and_any_call_validates(server: ServerProcess, wire: Wire) -> None:
    llm = chat(server, wire).bind_tools([get_weather], tool_choice="get_weather")
    message = llm.invoke(ASK)
    assert isinstance(message, AIMessage)
    assert not message.invalid_tool_calls, message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] == "get_weather"
        Weather.model_validate(call["args"])
    assert message.tool_calls or message.content
    (body,) = wire.requests("/api/chat")
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert "tool_choice" not in body  # Ollama's API has none; LangChain does not send it
