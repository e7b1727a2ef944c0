"""The one task every framework test asks of SmolLM2: the weather in a city, as a tool call or
as structured output. Strings are bounded so that a grammar-held answer ends in time."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ASK = "What is the weather in Paris? Answer in celsius."


class Weather(BaseModel):
    """The weather in a city."""

    model_config = ConfigDict(extra="forbid")

    city: str = Field(min_length=1, max_length=20, description="The city's name.")
    unit: Literal["celsius", "fahrenheit"] = Field(description="The temperature unit.")


def weather_report(city: str, unit: str) -> str:
    """What the tools in these tests answer, whatever the city."""
    return f"Sunny and 21 degrees {unit} in {city}."
