"""Shared server helpers that need no running server."""

from __future__ import annotations

import asyncio
import threading

from heron.server.common import INLINE_TEXT_CHARS, text_size, tokenize


def test_text_size_counts_nested_strings_up_to_the_limit() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}, ("xy",)]
    assert text_size(messages) == len("user") + len("text") + 4 + 2
    huge = ["a" * 100] * 1000
    assert INLINE_TEXT_CHARS < text_size(huge) <= INLINE_TEXT_CHARS + 100  # stops early
    assert text_size({"prompt": list(range(5000))}) > INLINE_TEXT_CHARS  # token ids count too


def test_short_text_is_tokenized_inline_and_long_text_on_a_thread() -> None:
    def where(_: str) -> str:
        return threading.current_thread().name

    async def main() -> tuple[str, str]:
        short = await tokenize(where, "hi", "hi")
        long = await tokenize(where, "x" * (INLINE_TEXT_CHARS + 1), "x")
        return short, long

    short, long = asyncio.run(main())
    assert short == threading.current_thread().name  # the event loop's own thread
    assert long != short
