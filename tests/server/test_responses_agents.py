"""The OpenAI Agents SDK (``openai-agents``) running agents on Heron through its Responses
API model, ``OpenAIResponsesModel``, against a real ``heron serve``."""

from __future__ import annotations

import asyncio

import agents
import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

SETTINGS = agents.ModelSettings(temperature=0.0, max_tokens=60)


@pytest.fixture(scope="module", autouse=True)
def no_tracing() -> None:
    agents.set_tracing_disabled(True)  # tracing would post to OpenAI's servers


def model(server: ServerProcess) -> agents.OpenAIResponsesModel:
    client = openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )
    return agents.OpenAIResponsesModel(model=server.model, openai_client=client)


def test_agent_answers(server: ServerProcess) -> None:
    agent = agents.Agent(
        name="greeter",
        instructions="You greet people briefly.",
        model=model(server),
        model_settings=SETTINGS,
    )
    result = asyncio.run(agents.Runner.run(agent, "Say hello to Ada."))
    assert isinstance(result.final_output, str) and result.final_output.strip()


def test_agent_streams(server: ServerProcess) -> None:
    agent = agents.Agent(name="greeter", model=model(server), model_settings=SETTINGS)

    async def run() -> tuple[str, str]:
        result = agents.Runner.run_streamed(agent, "Say hi.")
        deltas = []
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type == (
                "response.output_text.delta"
            ):
                deltas.append(event.data.delta)
        return "".join(deltas), str(result.final_output)

    streamed, final = asyncio.run(run())
    assert streamed and streamed == final


class Pet(BaseModel):
    name: str = Field(max_length=20)
    legs: int = Field(ge=0, le=8)


def test_agent_structured_output(server: ServerProcess) -> None:
    agent = agents.Agent(name="pets", model=model(server), model_settings=SETTINGS, output_type=Pet)
    result = asyncio.run(agents.Runner.run(agent, "Describe a pet."))
    assert isinstance(result.final_output, Pet)


def test_agent_calls_a_function_tool(server: ServerProcess) -> None:
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    agent = agents.Agent(
        name="weather",
        model=model(server),
        tools=[get_weather],
        model_settings=agents.ModelSettings(
            temperature=0.0, max_tokens=60, tool_choice="get_weather"
        ),
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert len(calls) == 1 and result.final_output == f"Sunny in {calls[0]}"
