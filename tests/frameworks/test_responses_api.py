"""The frameworks on OpenAI's Responses API (``/v1/responses``) of a real ``heron serve``:
LangChain's ``ChatOpenAI(use_responses_api=True)`` and pydantic-ai's ``OpenAIResponsesModel``,
with structured output (``text.format`` json_schema) and forced tool calls."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic_ai import Agent, NativeOutput, RunContext
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.frameworks.conftest import API_KEY, MAX_TOKENS, Wire
from tests.frameworks.weather import ASK, Weather, weather_report
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

SETTINGS = ModelSettings(temperature=0, max_tokens=MAX_TOKENS)


def chat(server: ServerProcess, wire: Wire) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,  # type: ignore[arg-type]
        model=server.model,
        temperature=0,
        max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
        max_retries=0,
        use_responses_api=True,
        http_client=httpx2.Client(event_hooks=wire.hooks()),
    )


def model(server: ServerProcess, wire: Wire) -> OpenAIResponsesModel:
    client = AsyncOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(event_hooks=wire.async_hooks()),
    )
    return OpenAIResponsesModel(server.model, provider=OpenAIProvider(openai_client=client))


def test_langchain_structured_output(server: ServerProcess, wire: Wire) -> None:
    answer = chat(server, wire).with_structured_output(Weather).invoke(ASK)
    assert isinstance(answer, Weather)
    (body,) = wire.requests("/responses")
    assert body["text"]["format"]["type"] == "json_schema"


def test_langchain_forced_tool_call(server: ServerProcess, wire: Wire) -> None:
    def get_weather(city: str, unit: str) -> str:
        """The current weather in a city."""
        return weather_report(city, unit)

    tool: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": Weather.model_json_schema(),
        },
    }
    llm = chat(server, wire).bind_tools(
        [tool], tool_choice="get_weather", strict=True, parallel_tool_calls=False
    )
    message = llm.invoke(ASK)
    assert isinstance(message, AIMessage)
    assert not message.invalid_tool_calls, message.invalid_tool_calls
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    get_weather(**Weather.model_validate(call["args"]).model_dump())


def test_pydantic_ai_native_output(server: ServerProcess, wire: Wire) -> None:
    agent = Agent(model(server, wire), output_type=NativeOutput(Weather), model_settings=SETTINGS)
    result = agent.run_sync(ASK)
    assert isinstance(result.output, Weather)
    (body,) = wire.requests("/responses")
    assert body["text"]["format"]["type"] == "json_schema"


def test_pydantic_ai_tool_then_output(server: ServerProcess, wire: Wire) -> None:
    def steps(ctx: RunContext[None]) -> ModelSettings:
        forced = "get_weather_report" if ctx.run_step <= 1 else "final_result"
        return ModelSettings(**SETTINGS, tool_choice=[forced])

    agent = Agent(model(server, wire), output_type=Weather, model_settings=steps)

    @agent.tool_plain
    def get_weather_report(city: str) -> str:
        """The current weather in a city."""
        return weather_report(city, "celsius")

    result = agent.run_sync(ASK)
    assert isinstance(result.output, Weather)
    parts = [part for message in result.all_messages() for part in message.parts]
    calls = [p.tool_name for p in parts if isinstance(p, ToolCallPart)]
    assert calls == ["get_weather_report", "final_result"]
    sent = wire.requests("/responses")
    assert len(sent) == 2
    kinds = [item.get("type", "message") for item in sent[1]["input"]]
    assert kinds[-2:] == ["function_call", "function_call_output"]
