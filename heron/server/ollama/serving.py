"""Ollama requests -> engine requests, and engine deltas -> Ollama's NDJSON.

Where Heron differs from Ollama, on purpose:

- ``options.num_ctx`` may lower the context (a prompt over it is a 400) but not raise it past
  the server's context length (also a 400). Prompts are never truncated and the context never
  shifts: ``truncate`` and ``shift`` are accepted, and generation ends with ``done_reason``
  "length" at the end of the context. ``num_keep`` is accepted for the same reason.
- ``num_predict`` -1 and -2 both mean "until the context is full", capped at the server's
  ``--max-tokens``; 0 and anything above the cap are a 400.
- ``repeat_last_n``: 0 turns the penalties off, as in Ollama; any other value applies
  ``repeat_penalty``, ``presence_penalty`` and ``frequency_penalty`` to the whole history.
- ``typical_p`` below 1 and ``mirostat`` other than 0 are 400s (not implemented); the runner
  keys (``num_batch``, ``num_gpu``, ``num_thread``...) and the keys Ollama removed
  (``tfs_z``, ``penalize_newline``, ``low_vram``...) are accepted and ignored.
- Modelfile ``PARAMETER``s are the model's defaults: server defaults < Modelfile < request
  ``options``. Its ``SYSTEM`` is used when the request brings no system prompt, and its
  ``MESSAGE``s start every chat.
- ``suffix``, ``images``, ``format``, ``tools``, ``think`` and a ``template`` other than the
  model's own are 400s. Chat messages' ``thinking`` goes to the chat template, which may use it.
- ``context`` (deprecated) is prepended as token ids, not re-tokenised text.
- ``prompt_eval_count`` counts every prompt token, including those the prefix cache served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from heron.request import Logprob as EngineLogprob
from heron.sampling_params import SamplingParams
from heron.server.common import APIError, ndjson, tokenize, until_disconnected
from heron.server.model_manager import LoadedModel
from heron.server.ollama.models import now, parse_keep_alive
from heron.server.ollama.protocol import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DebugInfo,
    GenerateRequest,
    GenerateResponse,
    Logprob,
    Options,
    TopLogprob,
)
from heron.server.protocol import EngineDeadError, EngineRequestError, GenerationDelta
from heron.server.state import ServerState

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
_NS = 1_000_000_000

# SamplingParams' names in its error messages -> the names Ollama clients sent
_VLLM_TO_OLLAMA = (
    ("repetition_penalty", "repeat_penalty"),
    ("max_tokens", "num_predict"),
    ("logprobs", "top_logprobs"),
)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0


# --------------------------------------------------------------------- request planning
@dataclass(slots=True)
class Plan:
    """A validated generation request: the engine's input plus how to answer."""

    model: str  # as the client spelled it; echoed back
    chat: bool
    stream: bool
    keep_alive: float | None
    params: SamplingParams
    num_ctx: int
    top_logprobs: int | None  # None: no logprobs
    prompt_ids: list[int]
    t0: int  # perf_counter_ns when the handler started
    return_context: bool = False


def merged_options(options: Options | None, model: LoadedModel) -> Options:
    """The model's Modelfile parameters overridden by the request's ``options``."""
    if not model.spec.parameters:
        return options or Options()
    given = options.model_dump(exclude_unset=True) if options is not None else {}
    try:
        return Options(**{**model.spec.parameters, **given})
    except ValueError as exc:
        raise APIError(400, f"invalid Modelfile parameters: {exc}", param="options") from None


def sampling_params(
    options: Options | None, state: ServerState, top_logprobs: int | None, model: LoadedModel
) -> tuple[SamplingParams, int]:
    """Ollama ``options`` over the model's Modelfile parameters -> SamplingParams (max_tokens
    not yet fitted to the prompt) and the context length to enforce. Raises APIError (400)
    for values Heron does not accept."""
    o = merged_options(options, model)
    limits = state.limits
    max_len = model.engine.max_model_len
    if o.model_extra:
        for key in o.model_extra:
            logger.warning("invalid option provided: %s", key)
    num_ctx = max_len if o.num_ctx is None else o.num_ctx
    if not 1 <= num_ctx <= max_len:
        raise APIError(
            400,
            f"num_ctx must be between 1 and this server's context length {max_len}, got {num_ctx}",
            param="options.num_ctx",
        )
    predict = -1 if o.num_predict is None else o.num_predict
    if predict in (-1, -2):
        predict = limits.max_tokens
    elif not 1 <= predict <= limits.max_tokens:
        raise APIError(
            400,
            f"num_predict must be -1, -2 or in [1, {limits.max_tokens}], got {o.num_predict}",
            param="options.num_predict",
        )
    if o.mirostat not in (None, 0):
        raise APIError(400, "mirostat sampling is not supported", param="options.mirostat")
    if o.typical_p is not None and not o.typical_p >= 1.0:
        raise APIError(400, "typical_p sampling is not supported", param="options.typical_p")
    if o.repeat_last_n is not None and o.repeat_last_n < -1:
        raise APIError(
            400, "repeat_last_n must be -1, 0 or positive", param="options.repeat_last_n"
        )
    stop = [o.stop] if isinstance(o.stop, str) else list(o.stop or [])
    stop = [s for s in stop if s]
    if len(stop) > limits.max_stop_strings:
        raise APIError(
            400, f"at most {limits.max_stop_strings} stop strings are allowed", param="options.stop"
        )
    penalties = o.repeat_last_n != 0
    top_p = 0.9 if o.top_p is None else o.top_p
    top_k = 40 if o.top_k is None else o.top_k
    seed = o.seed if o.seed is not None and o.seed >= 0 else None
    try:
        params = SamplingParams(
            # <= 0 is greedy, as in llama.cpp
            temperature=0.8 if o.temperature is None else max(o.temperature, 0.0),
            top_k=max(top_k, 0),  # <= 0: disabled, as in llama.cpp
            top_p=min(top_p, 1.0) if math.isfinite(top_p) else top_p,
            min_p=0.0 if o.min_p is None else o.min_p,
            repetition_penalty=(o.repeat_penalty or 1.0) if penalties else 1.0,
            presence_penalty=(o.presence_penalty or 0.0) if penalties else 0.0,
            frequency_penalty=(o.frequency_penalty or 0.0) if penalties else 0.0,
            seed=seed,
            stop=stop,
            max_tokens=predict,
            logprobs=top_logprobs,
        )
    except ValueError as exc:
        message = str(exc)
        for ours, theirs in _VLLM_TO_OLLAMA:
            message = message.replace(ours, theirs)
        raise APIError(400, message, param="options") from None
    return params, num_ctx


def _top_logprobs(logprobs: bool | None, top: int | None, state: ServerState) -> int | None:
    cap = min(MAX_TOP_LOGPROBS, state.limits.max_logprobs)
    if top is not None and not 0 <= top <= cap:
        raise APIError(400, f"top_logprobs must be between 0 and {cap}", param="top_logprobs")
    if logprobs or (top or 0) > 0:  # asking for alternatives implies logprobs
        return top or 0
    return None


def _no_thinking(think: bool | str | None, model: str) -> None:
    if think is True or (isinstance(think, str) and think):
        raise APIError(400, f'"{model}" does not support thinking', param="think")


def _no_format(fmt: str | dict[str, Any] | None) -> None:
    if fmt is not None and fmt != "":
        raise APIError(
            400, "format is not supported: structured output is not available", param="format"
        )


# ------------------------------------------------------------------------------ service
class OllamaService:
    """The Ollama API over the server's models."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def generate(self, req: GenerateRequest, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        spec = self.state.models.resolve(req.model)
        top = _top_logprobs(req.logprobs, req.top_logprobs, self.state)
        keep_alive = parse_keep_alive(req.keep_alive)
        unsupported = {
            "suffix": (req.suffix, f'"{req.model}" does not support insert'),
            "images": (req.images, f'"{req.model}" does not support vision'),
            "width": (req.width, "image generation is not supported"),
            "height": (req.height, "image generation is not supported"),
            "steps": (req.steps, "image generation is not supported"),
        }
        for name, (value, message) in unsupported.items():
            if value:
                raise APIError(400, f"{message} ({name})", param=name)
        _no_format(req.format)
        _no_thinking(req.think, req.model)
        if req.raw and (req.template or req.system or req.context):
            raise APIError(400, "raw mode does not support template, system, or context")
        if not req.prompt:
            return await self._load_or_unload(req.model, keep_alive, chat=False)
        model = await self.state.models.get(req.model, keep_alive, task="generate")
        tokenizer = model.engine.tokenizer
        if req.template and req.template != (tokenizer.chat_template or ""):
            raise APIError(
                400,
                "template override is not supported: the model's own chat template is used",
                param="template",
            )
        params, num_ctx = sampling_params(req.options, self.state, top, model)
        messages: list[dict[str, Any]] = []
        system = req.system if req.system is not None else spec.system
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": req.prompt})
        context = list(req.context or [])
        vocab = model.engine.model_config.vocab_size
        if any(not 0 <= t < vocab for t in context):
            raise APIError(400, f"context token ids must be in [0, {vocab})", param="context")
        if req.debug_render_only:
            text = req.prompt if req.raw else await self._render(model, messages)
            if context:
                text = tokenizer.decode(context, skip_special_tokens=False) + text
            return self._debug(req.model, text, chat=False)
        if req.raw:
            ids = await tokenize(tokenizer.encode, req.prompt, req.prompt)
        else:
            ids = await self._encode_chat(model, messages)
        plan = Plan(
            model=req.model,
            chat=False,
            stream=req.stream is not False,
            keep_alive=keep_alive,
            params=params,
            num_ctx=num_ctx,
            top_logprobs=top,
            prompt_ids=context + ids,
            return_context=not req.raw,
            t0=t0,
        )
        return await self._run(model, plan, request)

    async def chat(self, req: ChatRequest, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        spec = self.state.models.resolve(req.model)
        top = _top_logprobs(req.logprobs, req.top_logprobs, self.state)
        keep_alive = parse_keep_alive(req.keep_alive)
        if req.tools:
            raise APIError(400, f'"{req.model}" does not support tools (tools)', param="tools")
        _no_format(req.format)
        _no_thinking(req.think, req.model)
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(req.messages or []):
            if m.images:
                raise APIError(
                    400,
                    f'"{req.model}" does not support vision (messages.{i}.images)',
                    param=f"messages.{i}.images",
                )
            if m.tool_calls:
                raise APIError(
                    400,
                    f'"{req.model}" does not support tools (messages.{i}.tool_calls)',
                    param=f"messages.{i}.tool_calls",
                )
            msg: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.thinking:
                msg["thinking"] = msg["reasoning_content"] = m.thinking
            if m.tool_name:
                msg["name"] = msg["tool_name"] = m.tool_name
            if m.tool_call_id:
                msg["tool_call_id"] = m.tool_call_id
            messages.append(msg)
        if not messages:
            return await self._load_or_unload(req.model, keep_alive, chat=True)
        model = await self.state.models.get(req.model, keep_alive, task="generate")
        params, num_ctx = sampling_params(req.options, self.state, top, model)
        seeded = [dict(m) for m in spec.messages]
        if spec.system and not any(m["role"] == "system" for m in seeded + messages):
            seeded.insert(0, {"role": "system", "content": spec.system})
        messages = seeded + messages
        if req.debug_render_only:
            return self._debug(req.model, await self._render(model, messages), chat=True)
        plan = Plan(
            model=req.model,
            chat=True,
            stream=req.stream is not False,
            keep_alive=keep_alive,
            params=params,
            num_ctx=num_ctx,
            top_logprobs=top,
            prompt_ids=await self._encode_chat(model, messages),
            t0=t0,
        )
        return await self._run(model, plan, request)

    async def _render(self, model: LoadedModel, messages: list[dict[str, Any]]) -> str:
        tokenizer = model.engine.tokenizer
        try:
            return await tokenize(tokenizer.apply_chat_template, messages, messages)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    async def _encode_chat(self, model: LoadedModel, messages: list[dict[str, Any]]) -> list[int]:
        tokenizer = model.engine.tokenizer
        try:
            return await tokenize(tokenizer.encode_chat, messages, messages)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    async def _load_or_unload(self, model: str, keep_alive: float | None, chat: bool) -> Response:
        """An empty prompt loads the model (and sets its keep_alive); with keep_alive 0 it
        unloads it (once its running requests end) without loading it first."""
        if keep_alive == 0:
            await self.state.models.unload(model)
            reason = "unload"
        else:
            await self.state.models.get(model, keep_alive, task="generate")
            reason = "load"
        body: GenerateResponse | ChatResponse
        if chat:
            body = ChatResponse(model=model, created_at=now(), done=True, done_reason=reason)
        else:
            body = GenerateResponse(model=model, created_at=now(), done=True, done_reason=reason)
        return JSONResponse(body.dump())

    def _debug(self, model: str, text: str, chat: bool) -> Response:
        info = DebugInfo(rendered_template=text)
        body: GenerateResponse | ChatResponse
        if chat:
            msg = ChatMessage(role="", content="")
            body = ChatResponse(model=model, created_at=now(), done=False, message=msg)
        else:
            body = GenerateResponse(model=model, created_at=now(), done=False)
        body.debug_info = info
        return JSONResponse(body.dump())

    async def _run(self, model: LoadedModel, plan: Plan, request: Request) -> Response:
        n = len(plan.prompt_ids)
        if n >= plan.num_ctx:
            raise APIError(
                400,
                f"the prompt has {n} tokens, but the context length is {plan.num_ctx} "
                "(including at least one output token)",
                "context_length",
            )
        if plan.params.max_tokens is not None:
            plan.params.max_tokens = min(plan.params.max_tokens, plan.num_ctx - n)
        run = Generation(self, model, plan)
        if plan.stream:
            await run.start()
            return StreamingResponse(run.ndjson(), media_type="application/x-ndjson")
        try:
            body = await until_disconnected(request, run.collect())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return Response(status_code=499)  # the client went away; nobody reads this
        return JSONResponse(body)


class Generation:
    """One request's trip through the engine, rendered as Ollama chunks."""

    def __init__(self, service: OllamaService, model: LoadedModel, plan: Plan) -> None:
        self.service = service
        self.state = service.state
        self.model = model
        self.plan = plan
        self.iterator: AsyncIterator[GenerationDelta] | None = None
        self.first: GenerationDelta | None = None
        self.t_submit = 0
        self.t_first: int | None = None
        self.t_last = 0
        self.gaps: list[float] = []
        self.text: list[str] = []
        self.output_ids: list[int] = []
        self.logprobs: list[Logprob] = []
        self.finish_reason: str | None = None
        self.num_prompt_tokens = len(plan.prompt_ids)
        self.num_output_tokens = 0
        self.recorded = False

    async def start(self) -> None:
        """Submit, and wait for the first delta so that a rejection is still an HTTP error."""
        self.t_submit = time.perf_counter_ns()
        self.iterator = self.model.engine.generate(self.plan.prompt_ids, self.plan.params)
        try:
            self.first = await anext(aiter(self.iterator))
        except ValueError as exc:  # rejected: never ran
            self.recorded = True
            raise APIError(400, str(exc)) from None
        except EngineRequestError as exc:  # ran and failed: recorded as aborted
            self.record()
            raise APIError(500, str(exc), "server_error") from None
        except asyncio.CancelledError:  # the client left while it waited: aborted
            self.record()
            raise
        except BaseException:  # queue full, engine gone: never ran
            self.recorded = True
            raise

    def __del__(self) -> None:
        # A streamed reply whose body never started (the client left first) still counts.
        if self.iterator is not None and not self.recorded:
            self.record()

    async def next_delta(self) -> GenerationDelta | None:
        if self.first is not None:
            delta, self.first = self.first, None
            return delta
        assert self.iterator is not None
        return await anext(aiter(self.iterator), None)

    def observe(self, delta: GenerationDelta) -> None:
        t = time.perf_counter_ns()
        if delta.token_ids or delta.text:
            if self.t_first is None:
                self.t_first = t
            else:
                self.gaps.append((t - self.t_last) / _NS)
            self.t_last = t
        self.output_ids += delta.token_ids
        self.num_prompt_tokens = delta.num_prompt_tokens or self.num_prompt_tokens
        self.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    def convert_logprobs(self, delta: GenerationDelta) -> list[Logprob] | None:
        """Ollama's logprobs for the delta's tokens: ``top_logprobs`` ranked, if asked for."""
        k = self.plan.top_logprobs
        if k is None or not delta.logprobs:
            return None
        tokenizer = self.model.engine.tokenizer

        def text(token_id: int, lp: EngineLogprob) -> str:
            if lp.decoded_token is not None:
                return lp.decoded_token
            return tokenizer.decode([token_id], skip_special_tokens=False)

        out = []
        for tid, entry in zip(delta.token_ids, delta.logprobs, strict=False):
            chosen = entry.get(tid)
            if chosen is None:
                continue
            top = None
            if k:
                ranked = sorted((lp.rank, t, lp) for t, lp in entry.items() if lp.rank <= k)
                top = [
                    TopLogprob(
                        token=(tt := text(t, lp)),
                        logprob=_finite(lp.logprob),
                        bytes=list(tt.encode()),
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

    def chunk(self, text: str, logprobs: list[Logprob] | None) -> dict[str, Any]:
        body: GenerateResponse | ChatResponse
        if self.plan.chat:
            body = ChatResponse(
                model=self.plan.model,
                created_at=now(),
                message=ChatMessage(content=text),
                done=False,
                logprobs=logprobs,
            )
        else:
            body = GenerateResponse(
                model=self.plan.model,
                created_at=now(),
                response=text,
                done=False,
                logprobs=logprobs,
            )
        return body.dump()

    def final(self, text: str, logprobs: list[Logprob] | None) -> dict[str, Any]:
        end = time.perf_counter_ns()
        t_first = self.t_first if self.t_first is not None else end
        stats: dict[str, Any] = {
            "done": True,
            "done_reason": "length" if self.finish_reason == "length" else "stop",
            "total_duration": max(1, end - self.plan.t0),
            "load_duration": max(1, self.t_submit - self.plan.t0),
            "prompt_eval_count": self.num_prompt_tokens,
            "prompt_eval_duration": max(1, t_first - self.t_submit),
            "eval_count": self.num_output_tokens,
            "eval_duration": max(1, self.t_last - t_first),
            "logprobs": logprobs or None,
        }
        body: GenerateResponse | ChatResponse
        if self.plan.chat:
            body = ChatResponse(
                model=self.plan.model,
                created_at=now(),
                message=ChatMessage(content=text),
                **stats,
            )
        else:
            context = self.plan.prompt_ids + self.output_ids if self.plan.return_context else None
            body = GenerateResponse(
                model=self.plan.model, created_at=now(), response=text, context=context, **stats
            )
        return body.dump()

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        end = time.perf_counter_ns()
        ttft = (self.t_first - self.plan.t0) / _NS if self.t_first is not None else None
        self.state.metrics.observe_request(
            model_name=self.model.name,
            prompt_tokens=self.num_prompt_tokens,
            generation_tokens=self.num_output_tokens,
            ttft_s=ttft,
            itl_s=self.gaps,
            e2e_s=(end - self.plan.t0) / _NS,
            finish_reason=self.finish_reason,
        )

    async def _close(self) -> None:
        if self.iterator is not None:
            aclose = getattr(self.iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def ndjson(self) -> AsyncIterator[bytes]:
        """The streamed reply: a line per delta with text, then the final line with the
        statistics. An engine failure after the first line is an ``{"error": ...}`` line."""
        try:
            while (delta := await self.next_delta()) is not None:
                self.observe(delta)
                logprobs = self.convert_logprobs(delta)
                if delta.finish_reason is not None:
                    if delta.text:
                        yield ndjson(self.chunk(delta.text, None))
                    yield ndjson(self.final("", logprobs))
                    return
                if delta.text or logprobs:
                    yield ndjson(self.chunk(delta.text, logprobs))
        except (EngineRequestError, EngineDeadError) as exc:
            yield ndjson({"error": str(exc)})
        finally:
            self.record()
            await self._close()

    async def collect(self) -> dict[str, Any]:
        """The whole reply as one object (``stream: false``)."""
        await self.start()
        try:
            while (delta := await self.next_delta()) is not None:
                self.observe(delta)
                self.text.append(delta.text)
                self.logprobs += self.convert_logprobs(delta) or []
                if delta.finish_reason is not None:
                    break
        except EngineRequestError as exc:
            raise APIError(500, str(exc), "server_error") from None
        finally:
            self.record()
            await self._close()
        return self.final("".join(self.text), self.logprobs)
