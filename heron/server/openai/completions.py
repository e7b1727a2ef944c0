"""``POST /v1/completions``: the legacy text completion, with ``echo`` for scoring.

``echo: true`` prefixes each choice's text with its prompt (a string prompt as given, token ids
decoded) and, with ``logprobs: N``, its logprobs with the prompt's: the engine scores every
prompt token (``SamplingParams.prompt_logprobs``), the first one with null (nothing before
it). ``max_tokens: 0`` is accepted only with echo, which is how lm-eval's loglikelihood asks
to score a prompt: the engine runs the prefill and samples one token, which is discarded (no
text, no completion tokens in usage, finish_reason "length"). Without echo it is a 400, as in
vLLM: the reply would be empty.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron.outputs import GenerationDelta, PromptLogprobs
from heron.server.common import sse, tokenize
from heron.server.defaults import context_limit, load_model, sampling_defaults
from heron.server.model_spec import LoadedModel
from heron.server.openai.chunks import StreamUsage, dump_chunk, mid_stream_error, stream_usage
from heron.server.openai.logprobs import (
    TokenSpeller,
    completion_logprobs,
    joined,
    prompt_completion_logprobs,
)
from heron.server.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from heron.server.openai.serving import SYSTEM_FINGERPRINT, OpenAIServing, not_found_message
from heron.server.openai.structured import constraint_fields
from heron.server.openai.validation import (
    bad_request,
    check_caps,
    completion_prompts,
    reject_unsupported,
    resolve_max_tokens,
    sampling_params,
)
from heron.server.run import STREAM_ERRORS, GenerationRun
from heron.server.state import ServerState

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_DONE = "[DONE]"


@dataclass(slots=True)
class Echo:
    """What echo adds to each choice: its prompt's text and ids, and whether the engine's
    one output token is discarded (``max_tokens: 0``)."""

    texts: list[str]
    prompts: list[list[int]]
    n: int
    discard_output: bool

    def text(self, index: int) -> str:
        return self.texts[index // self.n]

    def logprobs(
        self, run: GenerationRun, speller: TokenSpeller, index: int, top: int
    ) -> tuple[CompletionLogprobs, int]:
        """Choice ``index``'s prompt logprobs and the offset after them."""
        prompt = index // self.n
        entries: PromptLogprobs | None = run.prompt_logprobs[prompt]
        return prompt_completion_logprobs(speller, self.prompts[prompt], entries, top)


def prompt_texts(
    body: CompletionRequest, prompts: list[list[int]], model: LoadedModel
) -> list[str]:
    """Each prompt as echo shows it: a string as given, token ids decoded."""
    raw = body.prompt
    if isinstance(raw, str):
        return [raw]
    items = [raw] if raw and all(isinstance(p, int) for p in raw) else list(raw)
    tokenizer = model.engine.tokenizer
    return [
        item if isinstance(item, str) else tokenizer.decode(ids, skip_special_tokens=False)
        for item, ids in zip(items, prompts, strict=True)
    ]


class OpenAICompletions:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def create(self, request: Request, body: CompletionRequest) -> Response:
        started = time.perf_counter_ns()
        state = self.state
        reject_unsupported(body)
        if body.max_tokens == 0 and not body.echo:
            raise bad_request("max_tokens 0 is only supported with echo", "max_tokens")
        check_caps(state, body, body.max_tokens)
        model = await load_model(state, body.model, not_found_message)
        tokenizer = model.engine.tokenizer
        vocab = model.engine.model_config.vocab_size
        prompts = await tokenize(completion_prompts, body.prompt, body, tokenizer, vocab)
        n = body.n or 1
        if len(prompts) * n > state.limits.max_n:
            raise bad_request(
                f"a batch of {len(prompts)} prompts with n={n} asks for {len(prompts) * n} "
                f"choices; at most {state.limits.max_n} are allowed",
                "prompt",
            )
        defaults = sampling_defaults(model.spec)
        default = min(
            defaults.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS), state.limits.max_tokens
        )
        max_tokens = resolve_max_tokens(
            context_limit(model),
            [len(p) for p in prompts],
            1 if body.max_tokens == 0 else body.max_tokens,
            default,
            "prompt",
            "max_tokens",
        )
        params = sampling_params(body, max_tokens, body.logprobs, vocab, defaults)
        echo = None
        if body.echo:
            texts = prompt_texts(body, prompts, model)
            echo = Echo(texts, prompts, n, body.max_tokens == 0)
            if body.logprobs is not None:
                params = dataclasses.replace(params, prompt_logprobs=body.logprobs)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        param = next(iter(constraint_fields(body)), None)
        run = GenerationRun(state, model, prompts, params, request_id, started, param)
        created = int(time.time())
        if body.stream:
            reports = stream_usage(body.stream_options, echo is None or not echo.discard_output)
            first = await run.start(request)
            events = self._events(
                run, first, body.model, request_id, created, body.logprobs, reports, echo
            )
            return run.respond(events, "text/event-stream")
        await run.collect(request)
        return self._response(run, body, request_id, created, echo)

    def _response(
        self,
        run: GenerationRun,
        body: CompletionRequest,
        request_id: str,
        created: int,
        echo: Echo | None,
    ) -> Response:
        speller = OpenAIServing._speller(run.model)
        discard = echo is not None and echo.discard_output
        choices = []
        for i, c in enumerate(run.choices):
            text = "" if discard else c.output
            logprobs = None
            offset = 0
            if body.logprobs is not None and echo is not None:
                logprobs, offset = echo.logprobs(run, speller, i, body.logprobs)
            if body.logprobs is not None and not discard:
                mine, _ = completion_logprobs(
                    speller, c.token_ids, c.logprobs, body.logprobs, offset
                )
                logprobs = mine if logprobs is None else joined(logprobs, mine)
            choices.append(
                CompletionChoice(
                    index=i,
                    text=text if echo is None else echo.text(i) + text,
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
            usage=StreamUsage(count_output=not discard).final(run),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return JSONResponse(response.model_dump())

    async def _events(
        self,
        run: GenerationRun,
        first: list[GenerationDelta],
        model: str,
        request_id: str,
        created: int,
        top: int | None,
        reports: StreamUsage | None,
        echo: Echo | None,
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
            if reports is not None:
                c.usage = usage or reports.so_far(run)
            return sse(dump_chunk(c))

        offsets = [0] * len(run.choices)
        started = [echo is None] * len(run.choices)  # choices whose prompt went out
        reason: str | None = None
        speller = OpenAIServing._speller(run.model)
        try:
            async for delta in run.stream(first):
                choice = self._choice(run, speller, delta, top, echo, offsets, started)
                if choice is not None:
                    yield chunk([choice])
            if reports is not None:
                yield chunk([], reports.final(run))
        except STREAM_ERRORS as exc:
            reason = "error"
            yield mid_stream_error(exc)
        finally:
            run.close(reason)
        yield sse(_DONE)

    @staticmethod
    def _choice(
        run: GenerationRun,
        speller: TokenSpeller,
        delta: GenerationDelta,
        top: int | None,
        echo: Echo | None,
        offsets: list[int],
        started: list[bool],
    ) -> CompletionChoice | None:
        """The chunk choice for ``delta`` (None when it has nothing to send); a choice's
        first chunk carries its echoed prompt. Mutates ``offsets`` and ``started``."""
        i = delta.index
        discard = echo is not None and echo.discard_output
        text = "" if discard else delta.text
        logprobs = None
        if not started[i]:
            assert echo is not None
            started[i] = True
            text = echo.text(i) + text
            if top is not None:
                logprobs, offsets[i] = echo.logprobs(run, speller, i, top)
        if top is not None and not discard and delta.token_ids:
            mine, offsets[i] = completion_logprobs(
                speller, delta.token_ids, delta.logprobs, top, offsets[i]
            )
            logprobs = mine if logprobs is None else joined(logprobs, mine)
        if not text and logprobs is None and delta.finish_reason is None:
            return None  # no text yet (a held partial character or stop string)
        choice = CompletionChoice(
            index=i, text=text, logprobs=logprobs, finish_reason=delta.finish_reason
        )
        if delta.finish_reason is not None:
            choice.stop_reason = delta.stop_reason
        return choice
