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
- ``suffix``, ``images`` and a ``template`` other than the model's own are 400s. ``tools``
  may be called (Ollama has no tool_choice); see ``tools.py``.
  ``format`` ("json" or a JSON schema) constrains the output through the grammar engine.
  Chat messages' ``thinking`` goes to the chat template, which may use it.
- ``think``: see ``heron/server/thinking.py``. Unset leaves the model's default and still
  splits its reasoning into ``thinking``; a level ("low", "medium", "high") is ``true``; asking
  a model whose template does not think is a 400.
- ``context`` (deprecated) is prepended as token ids, not re-tokenised text.
- ``prompt_eval_count`` counts every prompt token, including those the prefix cache served.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron.server.common import APIError, tokenize
from heron.server.model_spec import LoadedModel
from heron.server.ollama.models import now, parse_keep_alive
from heron.server.ollama.options import (
    Plan,
    output_format,
    sampling_params,
    think_choice,
    top_logprobs_of,
)
from heron.server.ollama.protocol import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DebugInfo,
    GenerateRequest,
    GenerateResponse,
)
from heron.server.ollama.replies import final, ndjson_events, reply_logprobs
from heron.server.ollama.tools import (
    chat_tool_plan,
    history_calls,
    reply_tool_calls,
    with_tool_calls,
)
from heron.server.run import GenerationRun
from heron.server.state import ServerState
from heron.server.thinking import Thinking, resolve_thinking


# ------------------------------------------------------------------------------ service
class OllamaService:
    """The Ollama API over the server's models."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def generate(self, req: GenerateRequest, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        spec = self.state.models.resolve(req.model)
        top = top_logprobs_of(req.logprobs, req.top_logprobs, self.state)
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
        structured = output_format(req.format)
        think = think_choice(req.think)
        if req.raw and (req.template or req.system or req.context):
            raise APIError(400, "raw mode does not support template, system, or context")
        if req.raw and think:
            raise APIError(400, "raw mode does not support think", param="think")
        if not req.prompt:
            return await self._load_or_unload(req.model, keep_alive, chat=False)
        model = await self.state.models.get(req.model, keep_alive, task="generate")
        thinking = resolve_thinking(model, think, "think", req.model)
        tokenizer = model.engine.tokenizer
        if req.template and req.template != (model.engine.renderer.template or ""):
            raise APIError(
                400,
                "template override is not supported: the model's own chat template is used",
                param="template",
            )
        params, num_ctx = sampling_params(req.options, self.state, top, model, structured)
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
            text = req.prompt if req.raw else await self._render(model, messages, thinking)
            if context:
                text = tokenizer.decode(context, skip_special_tokens=False) + text
            return self._debug(req.model, text, chat=False)
        if req.raw:
            ids = await tokenize(tokenizer.encode, req.prompt, req.prompt)
        else:
            ids = await self._encode_chat(model, messages, thinking)
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
            parser=None if req.raw else thinking.parser_factory(model, ids),
        )
        return await self._run(model, plan, request)

    async def chat(self, req: ChatRequest, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        spec = self.state.models.resolve(req.model)
        top = top_logprobs_of(req.logprobs, req.top_logprobs, self.state)
        keep_alive = parse_keep_alive(req.keep_alive)
        structured = output_format(req.format)
        think = think_choice(req.think)
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(req.messages or []):
            if m.images:
                raise APIError(
                    400,
                    f'"{req.model}" does not support vision (messages.{i}.images)',
                    param=f"messages.{i}.images",
                )
            msg: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                msg["tool_calls"] = history_calls(m.tool_calls, f"messages.{i}")
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
        thinking = resolve_thinking(model, think, "think", req.model)
        params, num_ctx = sampling_params(req.options, self.state, top, model, structured)
        seeded = [dict(m) for m in spec.messages]
        if spec.system and not any(m["role"] == "system" for m in seeded + messages):
            seeded.insert(0, {"role": "system", "content": spec.system})
        messages = seeded + messages
        tools = chat_tool_plan(req.tools, messages, model.engine.renderer.template)
        if tools is not None:
            messages = tools.messages
            params.structured_outputs = with_tool_calls(tools, params.structured_outputs)
        offered = tools.tools if tools is not None else None
        if req.debug_render_only:
            text = await self._render(model, messages, thinking, offered)
            return self._debug(req.model, text, chat=True)
        ids = await self._encode_chat(model, messages, thinking, offered)
        plan = Plan(
            model=req.model,
            chat=True,
            stream=req.stream is not False,
            keep_alive=keep_alive,
            params=params,
            num_ctx=num_ctx,
            top_logprobs=top,
            prompt_ids=ids,
            t0=t0,
            parser=thinking.parser_factory(model, ids, tools.parser if tools else None),
        )
        return await self._run(model, plan, request)

    async def _render(
        self,
        model: LoadedModel,
        messages: list[dict[str, Any]],
        thinking: Thinking,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        renderer = model.engine.renderer
        kwargs = {**thinking.template_kwargs, "tools": tools}
        try:
            return await tokenize(lambda: renderer.render(messages, **kwargs), messages)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    async def _encode_chat(
        self,
        model: LoadedModel,
        messages: list[dict[str, Any]],
        thinking: Thinking,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        renderer = model.engine.renderer
        kwargs = {**thinking.template_kwargs, "tools": tools}
        try:
            return await tokenize(lambda: renderer.encode(messages, **kwargs), messages)
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
        request_id = f"ollama-{uuid.uuid4().hex}"
        run = GenerationRun(
            self.state,
            model,
            [plan.prompt_ids],
            plan.params,
            request_id,
            plan.t0,
            parser=plan.parser,
        )
        if plan.stream:
            first = await run.start(request)
            return run.respond(ndjson_events(run, plan, first), "application/x-ndjson")
        await run.collect(request)
        choice = run.choices[0]
        logprobs = reply_logprobs(model, plan, choice.token_ids, choice.logprobs)
        reply = final(run, plan, choice.content, logprobs, choice.reasoning or None)
        if plan.chat and choice.tool_calls:
            reply["message"]["tool_calls"] = reply_tool_calls(choice)
        return JSONResponse(reply)
