"""Translation between OpenAI requests and the engine: validation, prompt building,
sampling parameters, and the response, chunk and logprob shapes.

A request runs as: validate (model, unsupported fields, caps) -> build the prompt token ids
(off the event loop) -> check the context length -> submit to the engine and wait for every
prompt's first output, so that a rejection (bad input, full queue) is still an HTTP error ->
respond, as one JSON body or as server-sent events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from functools import partial

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron import __version__
from heron.outputs import GenerationDelta
from heron.server.adapters import adapter_parent
from heron.server.common import APIError, sse, tokenize
from heron.server.defaults import context_limit, load_model, sampling_defaults, with_model_messages
from heron.server.model_spec import LoadedModel, ModelSpec, spec_from_store
from heron.server.openai.chunks import (
    StreamUsage,
    dump_chunk,
    mid_stream_error,
    nothing_to_send,
    role_choice,
    stream_usage,
    usage,
)
from heron.server.openai.logprobs import TokenSpeller, chat_logprobs
from heron.server.openai.protocol import (
    AssistantMessage,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ModelCard,
    ModelList,
    Usage,
)
from heron.server.openai.structured import constraint_fields
from heron.server.openai.tools import (
    chat_delta,
    chat_tool_plan,
    merge_constraint,
    message_tool_calls,
)
from heron.server.openai.validation import (
    bad_request,
    chat_messages,
    check_caps,
    reject_unsupported,
    resolve_max_tokens,
    sampling_params,
)
from heron.server.run import STREAM_ERRORS, GenerationRun
from heron.server.state import ServerState
from heron.server.thinking import effort_choice, resolve_thinking

SYSTEM_FINGERPRINT = f"heron-{__version__}"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_DONE = "[DONE]"


def not_found_message(shown: str) -> str:
    return f"The model {shown!r} does not exist."


class OpenAIServing:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _model(self, name: str) -> LoadedModel:
        return await load_model(self.state, name, not_found_message)

    @staticmethod
    def _speller(model: LoadedModel) -> TokenSpeller:
        speller = model.cache.get("openai.speller")
        if speller is None:
            speller = model.cache["openai.speller"] = TokenSpeller(model.engine.tokenizer)
        assert isinstance(speller, TokenSpeller)
        return speller

    # ------------------------------------------------------------------ models
    def _card(self, spec: ModelSpec) -> ModelCard:
        loaded = self.state.models.loaded.get(spec.base or spec.name)
        models = self.state.models
        parent = adapter_parent(spec, models.pinned, models.store)  # --lora's or a Modelfile's
        adapter = spec.lora if parent is not None else None
        return ModelCard(
            id=spec.name,
            created=int(spec.modified_at),
            max_model_len=loaded.engine.max_model_len if loaded is not None else None,
            root=adapter.path if adapter is not None else None,
            parent=parent,
        )

    def list_models(self) -> ModelList:
        """The command line's model, its LoRA adapters and every stored model."""
        models = self.state.models
        specs = [models.pinned] if models.pinned is not None else []
        specs += models.adapters.specs(models.pinned)
        if models.store is not None:
            specs += [spec_from_store(models.store, m) for m in models.store.list()]
        seen: set[str] = set()
        cards = []
        for spec in specs:
            if models.pinned is not None and spec is not models.pinned:
                if models.pinned.matches(spec.name):
                    continue  # the command line's model answers to this name
            if spec.name not in seen:
                seen.add(spec.name)
                cards.append(self._card(spec))
        return ModelList(data=cards)

    def get_model(self, name: str) -> ModelCard:
        try:
            spec = self.state.models.resolve(name)
        except APIError as exc:
            if exc.status == 404:
                raise APIError(404, not_found_message(name[:64]), "not_found", "model") from None
            raise
        return self._card(spec)

    # -------------------------------------------------------------------- chat
    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        started = time.perf_counter_ns()
        state = self.state
        reject_unsupported(body)
        requested = body.max_completion_tokens or body.max_tokens
        check_caps(state, body, requested)
        model = await self._model(body.model)
        defaults = sampling_defaults(model.spec)
        if requested is None and "max_tokens" in defaults:
            requested = min(defaults["max_tokens"], state.limits.max_tokens)
        messages = with_model_messages(model.spec, chat_messages(body.messages))
        tools = chat_tool_plan(body, messages, model.engine.renderer.template)
        if tools is not None:
            messages = tools.messages
        switch = body.chat_template_kwargs.enable_thinking if body.chat_template_kwargs else None
        effort = effort_choice(body.reasoning_effort, switch)
        asked = "reasoning_effort" if body.reasoning_effort else "chat_template_kwargs"
        thinking = resolve_thinking(model, effort, asked, body.model)
        try:
            encode = partial(model.engine.renderer.encode, **thinking.template_kwargs)
            prompt = await tokenize(encode, messages, messages, True, tools and tools.tools)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
        max_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        max_tokens = resolve_max_tokens(
            context_limit(model),
            [len(prompt)],
            requested,
            state.limits.max_tokens,
            "messages",
            max_param,
        )
        top = (body.top_logprobs or 0) if body.logprobs else None
        vocab = model.engine.model_config.vocab_size
        params = sampling_params(body, max_tokens, top, vocab, defaults)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        # A 400 from the engine (a constraint that does not compile) names the constraint.
        param = next(iter(constraint_fields(body)), None)
        merge_constraint(tools, params)
        if tools is not None and params.structured_outputs is tools.structured:
            param = "tools"
        parser = thinking.parser_factory(model, prompt, tools.parser if tools else None)
        run = GenerationRun(state, model, [prompt], params, request_id, started, param, parser)
        created = int(time.time())
        if body.stream:
            include_usage = stream_usage(body.stream_options)
            first = await run.start(request)
            events = self._chat_events(
                run, first, body.model, request_id, created, top, include_usage
            )
            return run.respond(events, "text/event-stream")
        await run.collect(request)
        return self._chat_response(run, body, request_id, created, top)

    def _chat_response(
        self,
        run: GenerationRun,
        body: ChatCompletionRequest,
        request_id: str,
        created: int,
        top: int | None,
    ) -> Response:
        choices = [
            ChatCompletionChoice(
                index=i,
                message=AssistantMessage(
                    content=c.content or (None if c.tool_calls else ""),
                    tool_calls=message_tool_calls(c),
                    reasoning_content=c.reasoning or None,
                ),
                logprobs=None
                if top is None
                else chat_logprobs(self._speller(run.model), c.token_ids, c.logprobs, top),
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )
            for i, c in enumerate(run.choices)
        ]
        response = ChatCompletionResponse(
            id=request_id,
            created=created,
            model=body.model,
            choices=choices,
            usage=usage(run),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return JSONResponse(response.model_dump())

    async def _chat_events(
        self,
        run: GenerationRun,
        first: list[GenerationDelta],
        model: str,
        request_id: str,
        created: int,
        top: int | None,
        include_usage: StreamUsage | None,
    ) -> AsyncIterator[bytes]:
        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
            c = ChatCompletionChunk(
                id=request_id,
                object="chat.completion.chunk",
                created=created,
                model=model,
                choices=choices,
                system_fingerprint=SYSTEM_FINGERPRINT,
            )
            if include_usage is not None:
                # on every chunk when usage is asked for: null, or the counts so far
                c.usage = usage or include_usage.so_far(run)
            return sse(dump_chunk(c))

        reason: str | None = None
        pending = b""
        try:
            # The role chunks go out in one write with the first content chunk (one send, not
            # two, on the way to the first token).
            pending = b"".join(chunk([role_choice(i)]) for i in range(len(run.choices)))
            async for delta in run.stream(first):
                if nothing_to_send(delta, top):
                    continue
                new = chat_delta(run, delta)
                if new is None and delta.finish_reason is None and top is None:
                    continue  # the parser holds the text back (a call's markup forming)
                choice = ChatChunkChoice(
                    index=delta.index,
                    delta=new or ChatDelta(),
                    logprobs=None
                    if top is None
                    else chat_logprobs(
                        self._speller(run.model), delta.token_ids, delta.logprobs, top
                    ),
                    finish_reason=delta.finish_reason,
                )
                if delta.finish_reason is not None:
                    choice.stop_reason = delta.stop_reason
                yield pending + chunk([choice])
                pending = b""
            if pending:
                yield pending
                pending = b""
            if include_usage:
                yield chunk([], usage(run))
        except STREAM_ERRORS as exc:
            reason = "error"
            yield pending + mid_stream_error(exc)
        finally:
            run.close(reason)
        yield sse(_DONE)
