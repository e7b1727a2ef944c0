"""32 concurrent streaming clients all finish with the right token counts."""

from __future__ import annotations

import asyncio

import openai

from tests.server.conftest import ServerProcess


def test_32_concurrent_streams(server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    async def one(i: int) -> tuple[int, int]:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Tell me fact number {i} about birds."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        assert usage is not None
        return usage, len(text)

    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(tokens == 16 and chars > 0 for tokens, chars in results)
