"""Translation between OpenAI requests and the engine: validation, prompt building,
sampling parameters, and the response, chunk and logprob shapes.

A request runs as: validate (model, unsupported fields, caps) -> build the prompt token ids
(off the event loop) -> check the context length -> submit to the engine and wait for every
prompt's first output, so that a rejection (bad input, full queue) is still an HTTP error ->
respond, as one JSON body or as server-sent events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NoReturn

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from heron import __version__
from heron.request import Logprob
from heron.sampling_params import SamplingParams
from heron.server.common import APIError, error_body, sse, until_disconnected
from heron.server.openai.protocol import (
    INT64_MAX,
    AssistantMessage,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from heron.server.protocol import (
    EngineDeadError,
    EngineRequestError,
    GenerationDelta,
    QueueFullError,
)
from heron.server.state import ServerState
from heron.tokenizer import Tokenizer

SYSTEM_FINGERPRINT = f"heron-{__version__}"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = "[DONE]"


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request", param)


# ----------------------------------------------------------------------- validation
def check_model(state: ServerState, name: str) -> None:
    """An unknown name is a 404; names are only ever compared, never used as paths."""
    if not state.model_known(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise APIError(404, f"The model {shown!r} does not exist.", "not_found", "model")


def reject_unsupported(body: SamplingFields) -> None:
    """Refuse OpenAI fields that Heron accepts only in their no-op form."""
    if body.logit_bias:
        raise bad_request("logit_bias is not supported", "logit_bias")
    if isinstance(body, ChatCompletionRequest):
        if body.response_format is not None and body.response_format.type != "text":
            raise bad_request(
                f"response_format {body.response_format.type!r} is not supported; only 'text' is",
                "response_format",
            )
        for name in ("tools", "functions"):
            if getattr(body, name):
                raise bad_request(f"{name} is not supported (no tool calling)", name)
        if body.tool_choice not in (None, "none"):
            raise bad_request("tool_choice is not supported (no tool calling)", "tool_choice")
    elif isinstance(body, CompletionRequest):
        if body.echo:
            raise bad_request("echo is not supported", "echo")
        if body.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if body.best_of is not None and body.best_of != (body.n or 1):
            raise bad_request("best_of is not supported (it may only equal n)", "best_of")


def check_caps(state: ServerState, body: SamplingFields, max_tokens: int | None) -> None:
    """The server's per-request caps, before any work is done."""
    limits = state.limits
    n = body.n or 1
    if n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}, got {n}", "n")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        param = "max_tokens"
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            param = "max_completion_tokens"
        raise bad_request(f"{param} must be at most {limits.max_tokens}, got {max_tokens}", param)
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > limits.max_stop_strings:
        raise bad_request(f"at most {limits.max_stop_strings} stop strings are allowed", "stop")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
        if (body.top_logprobs or 0) > limits.max_logprobs:
            raise bad_request(f"top_logprobs must be at most {limits.max_logprobs}", "top_logprobs")
    elif isinstance(body, CompletionRequest) and (body.logprobs or 0) > limits.max_logprobs:
        raise bad_request(f"logprobs must be at most {limits.max_logprobs}", "logprobs")


def resolve_max_tokens(
    state: ServerState,
    prompt_lens: Sequence[int],
    requested: int | None,
    default: int,
    prompt_param: str,
    max_tokens_param: str,
) -> int:
    """The output budget: ``requested`` if it fits the context, else 400
    ``context_length_exceeded``; without a request, ``default`` cut to what fits."""
    context = state.engine.max_model_len
    longest = max(prompt_lens)
    room = context - longest
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{longest} tokens (and at least one output token is needed).",
            "context_length",
            prompt_param,
        )
    if requested is None:
        return min(default, room)
    if requested > room:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, but {longest + requested} "
            f"were requested ({longest} in the prompt, {requested} for the completion).",
            "context_length",
            max_tokens_param,
        )
    return requested


_SAMPLING_NAMES = frozenset(
    {
        "n",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "stop_token_ids",
        "max_tokens",
        "min_tokens",
        "logprobs",
    }
)


def sampling_params(
    body: SamplingFields, max_tokens: int, logprobs: int | None, vocab_size: int
) -> SamplingParams:
    """Map the request onto ``SamplingParams``; its ValueErrors become 400s naming the field."""
    for token_id in body.stop_token_ids or []:
        if token_id >= vocab_size:
            raise bad_request(f"stop_token_ids must be in [0, {vocab_size})", "stop_token_ids")
    # OpenAI seeds are any int64; the engine's are non-negative, so fold negatives over.
    seed = None if body.seed is None else body.seed & INT64_MAX
    given = {
        "n": body.n,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "seed": seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "stop_token_ids": body.stop_token_ids,
        "include_stop_str_in_output": body.include_stop_str_in_output,
        "min_tokens": body.min_tokens,
        "ignore_eos": body.ignore_eos,
        "skip_special_tokens": body.skip_special_tokens,
    }
    kwargs: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        return SamplingParams(**kwargs, max_tokens=max_tokens, logprobs=logprobs)
    except ValueError as exc:
        message = str(exc)
        first = message.split(" ", 1)[0]
        param = first if first in _SAMPLING_NAMES else None
        if message.startswith(("each stop string", "at most")):
            param = "stop"
        if param == "logprobs" and isinstance(body, ChatCompletionRequest):
            param = "top_logprobs"
        raise bad_request(message, param) from exc


def chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them: text-only content as one string (text
    parts joined by newlines) and ``developer`` as ``system``. Anything else is a 400."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if m.role in ("tool", "function"):
            raise bad_request(f"{m.role} messages are not supported (no tool calling)", where)
        for name in ("tool_calls", "tool_call_id", "function_call", "audio", "refusal"):
            if getattr(m, name) is not None:
                raise bad_request(f"{name} is not supported in messages", f"{where}.{name}")
        if m.content is None:
            raise bad_request("content is required", f"{where}.content")
        if isinstance(m.content, str):
            text = m.content
        else:
            texts = []
            for j, part in enumerate(m.content):
                unsupported = [
                    k for k in ("image_url", "input_audio", "file", "refusal") if getattr(part, k)
                ]
                if part.type != "text" or part.text is None or unsupported:
                    kind = unsupported[0] if unsupported else part.type
                    raise bad_request(
                        f"only text content parts are supported, not {kind!r}",
                        f"{where}.content.{j}",
                    )
                texts.append(part.text)
            text = "\n".join(texts)
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": text,
        }
        if m.name is not None:
            message["name"] = m.name
        out.append(message)
    return out


def completion_prompts(
    body: CompletionRequest, tokenizer: Tokenizer, vocab_size: int
) -> list[list[int]]:
    """Token ids of each prompt of a completion request (a string, token ids, or a batch)."""
    prompt = body.prompt
    items: list[str | list[int]]
    if isinstance(prompt, str):
        items = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]  # type: ignore[list-item]
    else:
        items = list(prompt)  # type: ignore[arg-type]
    if not items:
        raise bad_request("prompt is empty", "prompt")
    prompts = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt.{i}"
        ids = tokenizer.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise bad_request("prompt is empty", param)
        if any(not 0 <= t < vocab_size for t in ids):
            raise bad_request(f"prompt token ids must be in [0, {vocab_size})", param)
        prompts.append(ids)
    return prompts


# ------------------------------------------------------------------------- logprobs
@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character: printable Latin-1 bytes
    as themselves, every other byte as chr(256 + k) in byte order. This inverts that."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    k = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + k)
            k += 1
    return {c: b for b, c in chars.items()}


class TokenSpeller:
    """A token's text and exact UTF-8 bytes for logprobs. The bytes matter for tokens that
    hold part of a character, whose text is only U+FFFD."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = type(tokenizer.backend.decoder).__name__
        self.byte_level = decoder == "ByteLevel"
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def text(self, token_id: int, lp: Logprob) -> str:
        if lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return []
        if self.byte_level:
            alphabet = _byte_alphabet()
            if all(c in alphabet for c in piece):
                return [alphabet[c] for c in piece]
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return [int(piece[3:5], 16)]  # a SentencePiece byte-fallback token
            except ValueError:
                pass
        else:
            piece = piece.replace("\u2581", " ")
        return list(piece.encode("utf-8"))


def _by_rank(entry: Mapping[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(((t, lp) for t, lp in entry.items() if lp.rank <= k), key=lambda x: x[1].rank)


def chat_logprobs(
    speller: TokenSpeller,
    token_ids: Sequence[int],
    entries: Sequence[Mapping[int, Logprob]] | None,
    top_k: int,
) -> ChatChoiceLogprobs:
    content = []
    for token_id, entry in zip(token_ids, entries or [], strict=False):
        chosen = entry[token_id]
        top = [
            TopLogprob(
                token=speller.text(t, lp), logprob=_finite(lp.logprob), bytes=speller.bytes(t)
            )
            for t, lp in _by_rank(entry, top_k)
        ]
        content.append(
            TokenLogprob(
                token=speller.text(token_id, chosen),
                logprob=_finite(chosen.logprob),
                bytes=speller.bytes(token_id),
                top_logprobs=top,
            )
        )
    return ChatChoiceLogprobs(content=content)


def completion_logprobs(
    speller: TokenSpeller,
    token_ids: Sequence[int],
    entries: Sequence[Mapping[int, Logprob]] | None,
    top_k: int,
    offset: int,
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape; ``offset`` is where the first token's text starts. Returns the
    offset after the last token too, for the next chunk of a stream."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, entry in zip(token_ids, entries or [], strict=False):
        chosen = entry[token_id]
        text = speller.text(token_id, chosen)
        top = {speller.text(t, lp): _finite(lp.logprob) for t, lp in _by_rank(entry, top_k)}
        top.setdefault(text, _finite(chosen.logprob))
        out.tokens.append(text)
        out.token_logprobs.append(_finite(chosen.logprob))
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out, offset


def _finite(x: float) -> float:
    # JSON has no -inf or NaN; a token the sampler could not pick gets -9999 instead.
    return x if x > -9999.0 else -9999.0


# ---------------------------------------------------------------------------- runs
@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    num_output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class EngineRun:
    """One request's engine streams (one per prompt), merged into one stream of deltas
    whose ``index`` is the choice index across prompts (prompt i, choice j -> i * n + j).

    Each stream is pumped by its own task; ``close`` cancels them, which aborts whatever is
    still running in the engine. Also keeps the request's timings and usage for metrics.
    """

    def __init__(
        self,
        state: ServerState,
        prompts: list[list[int]],
        params: SamplingParams,
        request_id: str,
        started: float,
    ) -> None:
        self.state = state
        self.n = params.n
        self.num_prompt_tokens = sum(len(p) for p in prompts)
        self.num_cached_tokens = [0] * len(prompts)
        self.choices = [_Choice() for _ in range(len(prompts) * params.n)]
        self.started = started
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.itl: list[float] = []
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._waiting = len(prompts)  # streams that have not ended
        self._observed = False
        engine = state.engine
        self._tasks = [
            asyncio.ensure_future(
                self._pump(
                    i,
                    engine.generate(
                        p, params, request_id if len(prompts) == 1 else f"{request_id}-{i}"
                    ),
                )
            )
            for i, p in enumerate(prompts)
        ]

    async def _pump(self, i: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    self._queue.put_nowait((i, delta))
        except Exception as exc:
            self._queue.put_nowait((i, exc))
        else:
            self._queue.put_nowait((i, None))

    async def start(self) -> list[GenerationDelta]:
        """Wait until every prompt has output (or has ended), so that the engine's
        rejections (ValueError, QueueFullError, ...) are raised before any response."""
        pending = set(range(len(self._tasks)))
        buffered: list[GenerationDelta] = []
        while pending:
            i, delta = await self._next()
            pending.discard(i)
            if delta is not None:
                buffered.append(delta)
        return buffered

    async def _next(self) -> tuple[int, GenerationDelta | None]:
        i, item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._waiting -= 1
            return i, None
        return i, item if self._record(i, item) else None

    async def rest(self) -> AsyncIterator[GenerationDelta]:
        while self._waiting:
            _, delta = await self._next()
            if delta is not None:
                yield delta

    async def collect(self) -> None:
        await self.start()
        async for _ in self.rest():
            pass

    def _record(self, prompt_index: int, delta: GenerationDelta) -> bool:
        """Account for ``delta``; False if it is to be dropped (a repeat after the end)."""
        delta.index += prompt_index * self.n
        self.num_cached_tokens[prompt_index] = delta.num_cached_tokens
        choice = self.choices[delta.index]
        if choice.finish_reason is not None:
            return False
        choice.text.append(delta.text)
        choice.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        choice.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.stop_reason = delta.stop_reason
        if delta.token_ids or delta.text:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            if delta.index == 0:  # inter-token gaps of the first choice: one per step
                if self.last_token_at is not None:
                    self.itl.append(now - self.last_token_at)
                self.last_token_at = now
        return True

    def usage(self) -> Usage:
        completion = sum(c.num_output_tokens for c in self.choices)
        return Usage(
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.num_prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.num_cached_tokens)),
        )

    def close(self, finish_reason: str | None = None, observe: bool = True) -> None:
        """Abort what still runs and record the request's metrics (once)."""
        for task in self._tasks:
            task.cancel()
        if self._observed or not observe:
            self._observed = True
            return
        self._observed = True
        reason = finish_reason or self.choices[0].finish_reason or "abort"
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        self.state.metrics.observe_request(
            self.num_prompt_tokens,
            sum(c.num_output_tokens for c in self.choices),
            ttft,
            self.itl,
            time.monotonic() - self.started,
            reason,
        )


# ------------------------------------------------------------------------- serving
class EventStream(StreamingResponse):
    """Server-sent events that close their engine run however the response ends, even if
    the client left before the first event (when the event generator never starts, its own
    cleanup never runs)."""

    def __init__(self, events: AsyncIterator[bytes], run: EngineRun) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def _nothing_to_send(delta: GenerationDelta, top: int | None) -> bool:
    """A delta whose tokens have no text yet (a held partial character or stop string)
    makes a chunk only if it carries logprobs."""
    if delta.text or delta.finish_reason is not None:
        return False
    return top is None or not delta.token_ids


def _mid_stream_error(exc: Exception) -> bytes:
    err = APIError(500, str(exc) or type(exc).__name__, "server_error")
    return sse(error_body("openai", err))


def _dump(model: Any) -> dict[str, Any]:
    """A chunk without the optional fields left unset (keeps explicit nulls)."""
    data: dict[str, Any] = model.model_dump(exclude_unset=True)
    return data


class OpenAIServing:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.speller = TokenSpeller(state.engine.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.state.engine.model_config.vocab_size

    # ------------------------------------------------------------------ models
    def model_card(self) -> ModelCard:
        return ModelCard(
            id=self.state.served_model_name,
            created=int(self.state.started_at),
            max_model_len=self.state.engine.max_model_len or None,
        )

    def list_models(self) -> ModelList:
        return ModelList(data=[self.model_card()])

    def get_model(self, name: str) -> ModelCard:
        check_model(self.state, name)
        return self.model_card()

    # -------------------------------------------------------------------- chat
    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        started = time.monotonic()
        state = self.state
        check_model(state, body.model)
        reject_unsupported(body)
        requested = body.max_completion_tokens or body.max_tokens
        check_caps(state, body, requested)
        messages = chat_messages(body.messages)
        try:
            prompt = await asyncio.to_thread(state.engine.tokenizer.encode_chat, messages)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
        max_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        max_tokens = resolve_max_tokens(
            state, [len(prompt)], requested, state.limits.max_tokens, "messages", max_param
        )
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens, top, self.vocab_size)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        run = EngineRun(state, [prompt], params, request_id, started)
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            try:
                first = await until_disconnected(request, run.start())
            except asyncio.CancelledError:
                return _disconnected(run)
            except BaseException as exc:
                _fail(run, exc)
            events = self._chat_events(
                run, first, body.model, request_id, created, top, include_usage
            )
            return EventStream(events, run)
        try:
            await until_disconnected(request, run.collect())
        except asyncio.CancelledError:
            return _disconnected(run)
        except BaseException as exc:
            _fail(run, exc)
        run.close()
        choices = [
            ChatCompletionChoice(
                index=i,
                message=AssistantMessage(content="".join(c.text)),
                logprobs=None
                if top is None
                else chat_logprobs(self.speller, c.token_ids, c.logprobs, top),
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
            usage=run.usage(),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return JSONResponse(response.model_dump())

    async def _chat_events(
        self,
        run: EngineRun,
        first: list[GenerationDelta],
        model: str,
        request_id: str,
        created: int,
        top: int | None,
        include_usage: bool,
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
            if include_usage:
                c.usage = usage  # present (null) on every chunk when usage is asked for
            return sse(_dump(c))

        reason: str | None = None
        try:
            for i in range(len(run.choices)):
                role = ChatDelta(role="assistant", content="")
                yield chunk(
                    [ChatChunkChoice(index=i, delta=role, logprobs=None, finish_reason=None)]
                )
            async for delta in _chain(first, run.rest()):
                if _nothing_to_send(delta, top):
                    continue
                choice = ChatChunkChoice(
                    index=delta.index,
                    delta=ChatDelta(content=delta.text) if delta.text else ChatDelta(),
                    logprobs=None
                    if top is None
                    else chat_logprobs(self.speller, delta.token_ids, delta.logprobs, top),
                    finish_reason=delta.finish_reason,
                )
                if delta.finish_reason is not None:
                    choice.stop_reason = delta.stop_reason
                yield chunk([choice])
            if include_usage:
                yield chunk([], run.usage())
        except (EngineRequestError, EngineDeadError, ValueError) as exc:
            reason = "error"
            yield _mid_stream_error(exc)
        finally:
            run.close(reason)
        yield sse(_DONE)

    # ------------------------------------------------------------- completions
    async def completions(self, request: Request, body: CompletionRequest) -> Response:
        started = time.monotonic()
        state = self.state
        check_model(state, body.model)
        reject_unsupported(body)
        check_caps(state, body, body.max_tokens)
        tokenizer = state.engine.tokenizer
        prompts = await asyncio.to_thread(completion_prompts, body, tokenizer, self.vocab_size)
        n = body.n or 1
        if len(prompts) * n > state.limits.max_n:
            raise bad_request(
                f"a batch of {len(prompts)} prompts with n={n} asks for {len(prompts) * n} "
                f"choices; at most {state.limits.max_n} are allowed",
                "prompt",
            )
        default = min(COMPLETIONS_DEFAULT_MAX_TOKENS, state.limits.max_tokens)
        max_tokens = resolve_max_tokens(
            state, [len(p) for p in prompts], body.max_tokens, default, "prompt", "max_tokens"
        )
        params = sampling_params(body, max_tokens, body.logprobs, self.vocab_size)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        run = EngineRun(state, prompts, params, request_id, started)
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            try:
                first = await until_disconnected(request, run.start())
            except asyncio.CancelledError:
                return _disconnected(run)
            except BaseException as exc:
                _fail(run, exc)
            events = self._completion_events(
                run, first, body.model, request_id, created, body.logprobs, include_usage
            )
            return EventStream(events, run)
        try:
            await until_disconnected(request, run.collect())
        except asyncio.CancelledError:
            return _disconnected(run)
        except BaseException as exc:
            _fail(run, exc)
        run.close()
        choices = []
        for i, c in enumerate(run.choices):
            logprobs = None
            if body.logprobs is not None:
                logprobs, _ = completion_logprobs(
                    self.speller, c.token_ids, c.logprobs, body.logprobs, 0
                )
            choices.append(
                CompletionChoice(
                    index=i,
                    text="".join(c.text),
                    logprobs=logprobs,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
            )
        response = CompletionResponse(
            id=request_id,
            created=created,
            model=body.model,
            choices=choices,
            usage=run.usage(),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return JSONResponse(response.model_dump())

    async def _completion_events(
        self,
        run: EngineRun,
        first: list[GenerationDelta],
        model: str,
        request_id: str,
        created: int,
        top: int | None,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            c = CompletionResponse(
                id=request_id,
                object="text_completion",
                created=created,
                model=model,
                choices=choices,
                system_fingerprint=SYSTEM_FINGERPRINT,
            )
            if include_usage:
                c.usage = usage
            return sse(_dump(c))

        offsets = [0] * len(run.choices)
        reason: str | None = None
        try:
            async for delta in _chain(first, run.rest()):
                if _nothing_to_send(delta, top):
                    continue
                logprobs = None
                if top is not None:
                    logprobs, offsets[delta.index] = completion_logprobs(
                        self.speller, delta.token_ids, delta.logprobs, top, offsets[delta.index]
                    )
                choice = CompletionChoice(
                    index=delta.index,
                    text=delta.text,
                    logprobs=logprobs,
                    finish_reason=delta.finish_reason,
                )
                if delta.finish_reason is not None:
                    choice.stop_reason = delta.stop_reason
                yield chunk([choice])
            if include_usage:
                yield chunk([], run.usage())
        except (EngineRequestError, EngineDeadError, ValueError) as exc:
            reason = "error"
            yield _mid_stream_error(exc)
        finally:
            run.close(reason)
        yield sse(_DONE)


def _disconnected(run: EngineRun) -> Response:
    """The client went away: abort the engine request. Nobody reads this reply."""
    run.close("abort")
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError  # the handler itself is being cancelled, not just the work
    return Response(status_code=499)


def _fail(run: EngineRun, exc: BaseException) -> NoReturn:
    """Close ``run`` and answer an engine failure: bad input is a 400, a failed request a
    500; a full queue and a dead engine go to the app's handlers (503). A request the
    engine rejected before running it is not counted in the metrics."""
    rejected = isinstance(exc, ValueError | QueueFullError)
    run.close("error", observe=not rejected)
    if isinstance(exc, ValueError):
        raise bad_request(str(exc)) from exc
    if isinstance(exc, EngineRequestError):
        raise APIError(500, str(exc), "server_error") from exc
    raise exc


async def _chain(
    first: Iterable[GenerationDelta], rest: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    for delta in first:
        yield delta
    async for delta in rest:
        yield delta
