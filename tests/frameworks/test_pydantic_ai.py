"""pydantic-ai's ``Agent`` on ``OpenAIChatModel`` against ``/v1/chat/completions`` of a real
``heron serve``: a run that calls a function tool, gets its answer back and ends in structured
output through the output tool; and structured output through ``response_format``. SmolLM2 is
tiny, so each step's call is forced by ``tool_choice`` (grammar-enforced)."""

from __future__ import annotations

from typing import Annotated

import httpx2
import pytest
from openai import AsyncOpenAI
from pydantic import Field
from pydantic_ai import Agent, NativeOutput, RunContext
from pydantic_ai.messages import ToolCallPart, ToolReturnPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.frameworks.conftest import API_KEY, MAX_TOKENS, Wire
from tests.frameworks.weather import ASK, Weather, weather_report
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

SETTINGS = ModelSettings(temperature=0, max_tokens=MAX_TOKENS)


def model(server: ServerProcess, wire: Wire) -> OpenAIChatModel:
    client = AsyncOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(event_hooks=wire.async_hooks()),
    )
    return OpenAIChatModel(server.model, provider=OpenAIProvider(openai_client=client))


def tool_then_output(ctx: RunContext[None]) -> ModelSettings:
    """The first step must call the function tool, every later one the output tool."""
    forced = "get_weather_report" if ctx.run_step <= 1 else "final_result"
    return ModelSettings(**SETTINGS, tool_choice=[forced])


def test_agent_calls_its_tool_then_answers_with_the_output_type(
    server: ServerProcess, wire: Wire
) -> None:
    agent = Agent(model(server, wire), output_type=Weather, model_settings=tool_then_output)
    asked: list[str] = []

    @agent.tool_plain
    def get_weather_report(city: Annotated[str, Field(max_length=20)]) -> str:
        """The current weather in a city."""
        asked.append(city)
        return weather_report(city, "celsius")

    result = agent.run_sync(ASK)
    assert isinstance(result.output, Weather)
    assert len(asked) == 1
    parts = [part for message in result.all_messages() for part in message.parts]
    calls = [p for p in parts if isinstance(p, ToolCallPart)]
    assert [c.tool_name for c in calls] == ["get_weather_report", "final_result"]
    returned = [p for p in parts if isinstance(p, ToolReturnPart)]
    assert returned[0].tool_call_id == calls[0].tool_call_id
    # The second request carried the call and its answer back in OpenAI's shapes.
    sent = wire.requests("/chat/completions")
    assert len(sent) == 2
    roles = [m["role"] for m in sent[1]["messages"]]
    assert roles[-2:] == ["assistant", "tool"]
    assert sent[1]["tool_choice"] == {"type": "function", "function": {"name": "final_result"}}


def test_native_output_is_held_by_the_schema(server: ServerProcess, wire: Wire) -> None:
    agent = Agent(model(server, wire), output_type=NativeOutput(Weather), model_settings=SETTINGS)
    result = agent.run_sync(ASK)
    assert isinstance(result.output, Weather)
    (body,) = wire.requests("/chat/completions")
    assert body["response_format"]["type"] == "json_schema"
    assert "tools" not in body
