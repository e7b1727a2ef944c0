"""A generation run's output in Ollama's shapes: the NDJSON stream of chunks, the final
object with its statistics, and logprobs ranked as Ollama ranks them."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

from heron.outputs import GenerationDelta
from heron.outputs import Logprob as EngineLogprob
from heron.server.common import ndjson
from heron.server.model_spec import LoadedModel
from heron.server.ollama.models import now
from heron.server.ollama.options import Plan
from heron.server.ollama.protocol import (
    ChatMessage,
    ChatResponse,
    GenerateResponse,
    Logprob,
    TopLogprob,
)
from heron.server.ollama.tools import reply_tool_calls
from heron.server.parsing import TextPart
from heron.server.run import STREAM_ERRORS, GenerationRun


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0


def reply_logprobs(
    model: LoadedModel,
    plan: Plan,
    token_ids: list[int],
    logprobs: list[dict[int, EngineLogprob]] | None,
) -> list[Logprob] | None:
    """Ollama's logprobs for these tokens: ``top_logprobs`` ranked, if asked for."""
    k = plan.top_logprobs
    if k is None or not logprobs:
        return None
    tokenizer = model.engine.tokenizer

    def text(token_id: int, lp: EngineLogprob) -> str:
        if lp.decoded_token is not None:
            return lp.decoded_token
        return tokenizer.decode([token_id], skip_special_tokens=False)

    out = []
    for tid, entry in zip(token_ids, logprobs, strict=False):
        chosen = entry.get(tid)
        if chosen is None:
            continue
        top = None
        if k:
            ranked = sorted((lp.rank, t, lp) for t, lp in entry.items() if lp.rank <= k)
            top = [
                TopLogprob(
                    token=(tt := text(t, lp)), logprob=_finite(lp.logprob), bytes=list(tt.encode())
                )
                for _, t, lp in ranked
            ]
        token = text(tid, chosen)
        out.append(
            Logprob(
                token=token,
                logprob=_finite(chosen.logprob),
                bytes=list(token.encode()),
                top_logprobs=top,
            )
        )
    return out


def chunk(
    plan: Plan,
    text: str,
    logprobs: list[Logprob] | None,
    thinking: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: GenerateResponse | ChatResponse
    if plan.chat:
        body = ChatResponse(
            model=plan.model,
            created_at=now(),
            message=ChatMessage(content=text, thinking=thinking, tool_calls=tool_calls),
            done=False,
            logprobs=logprobs,
        )
    else:
        body = GenerateResponse(
            model=plan.model,
            created_at=now(),
            response=text,
            thinking=thinking,
            done=False,
            logprobs=logprobs,
        )
    return body.dump()


def final(
    run: GenerationRun,
    plan: Plan,
    text: str,
    logprobs: list[Logprob] | None,
    thinking: str | None = None,
) -> dict[str, Any]:
    """The last object: ``done`` with the reason and Ollama's durations (nanoseconds)."""
    end = time.perf_counter_ns()
    t_first = run.first_token_ns if run.first_token_ns is not None else end
    t_last = run.last_token_ns or t_first
    stats: dict[str, Any] = {
        "done": True,
        "done_reason": "length" if run.finish_reason == "length" else "stop",
        "total_duration": max(1, end - plan.t0),
        "load_duration": max(1, run.submitted_ns - plan.t0),
        "prompt_eval_count": run.num_prompt_tokens,
        "prompt_eval_duration": max(1, t_first - run.submitted_ns),
        "eval_count": run.num_output_tokens,
        "eval_duration": max(1, t_last - t_first),
        "logprobs": logprobs or None,
    }
    body: GenerateResponse | ChatResponse
    if plan.chat:
        message = ChatMessage(content=text, thinking=thinking)
        body = ChatResponse(model=plan.model, created_at=now(), message=message, **stats)
    else:
        context = plan.prompt_ids + run.choices[0].token_ids if plan.return_context else None
        body = GenerateResponse(
            model=plan.model,
            created_at=now(),
            response=text,
            thinking=thinking,
            context=context,
            **stats,
        )
    return body.dump()


async def ndjson_events(
    run: GenerationRun, plan: Plan, first: list[GenerationDelta]
) -> AsyncIterator[bytes]:
    """The streamed reply: a line per delta with text, then the final line with the
    statistics. An engine failure after the first line is an ``{"error": ...}`` line."""
    reason: str | None = None
    try:
        async for delta in run.stream(first):
            logprobs = reply_logprobs(run.model, plan, delta.token_ids, delta.logprobs)
            text, thinking = _texts(run, delta)
            if delta.finish_reason is not None:
                # Ollama sends each tool call whole, in one chunk before the final one.
                calls = reply_tool_calls(run.choices[delta.index]) if plan.chat else None
                if text or thinking or calls:
                    yield ndjson(chunk(plan, text, None, thinking, calls))
                yield ndjson(final(run, plan, "", logprobs))
                return
            if text or thinking or logprobs:
                yield ndjson(chunk(plan, text, logprobs, thinking))
    except STREAM_ERRORS as exc:
        reason = "error"
        yield ndjson({"error": str(exc)})
    finally:
        run.close(reason)


def _texts(run: GenerationRun, delta: GenerationDelta) -> tuple[str, str | None]:
    """``delta``'s new content and thinking: its text, or the parser's events for it."""
    if run.choices[delta.index].parser is None:
        return delta.text, None
    content: list[str] = []
    thinking: list[str] = []
    for event in run.take_events(delta.index):
        if isinstance(event, TextPart):
            (content if event.kind == "content" else thinking).append(event.text)
    return "".join(content), "".join(thinking) or None
