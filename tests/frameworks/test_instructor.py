"""instructor on the official ``openai`` client against ``/v1/chat/completions`` of a real
``heron serve``: ``response_model`` through a forced tool call (Mode.TOOLS) and through
``response_format`` json_schema (Mode.JSON_SCHEMA).

instructor is not in the frameworks extra: every release caps jiter below 0.15, and the pinned
openai needs 0.16 or later, so pip's resolver cannot install it beside the dev extra;
``scripts/setup --dev`` installs it with ``--no-deps`` (it runs on the newer jiter)."""

from __future__ import annotations

import httpx2
import instructor
import openai
import pytest

from tests.frameworks.conftest import API_KEY, MAX_TOKENS, Wire
from tests.frameworks.weather import ASK, Weather
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_response_model_is_returned(server: ServerProcess, wire: Wire, mode: str) -> None:
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,
        max_retries=0,
        http_client=httpx2.Client(event_hooks=wire.hooks()),
    )
    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    answer = patched.chat.completions.create(
        model=server.model,
        response_model=Weather,
        messages=[{"role": "user", "content": ASK}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )
    assert isinstance(answer, Weather)
    (body,) = wire.requests("/chat/completions")
    if mode == "TOOLS":
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    else:
        assert body["response_format"]["type"] == "json_schema"
