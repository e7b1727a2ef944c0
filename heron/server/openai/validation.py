"""OpenAI requests checked and translated: the model, unsupported fields, caps, the output
budget, sampling parameters, chat messages and completion prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from heron import __version__
from heron.sampling_params import SamplingParams
from heron.server.common import APIError
from heron.server.openai.protocol import (
    INT64_MAX,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from heron.server.openai.structured import structured_outputs
from heron.server.openai.tools import tool_message
from heron.server.sampling import ENGINE_FIELD_NAMES, engine_fields
from heron.server.state import ServerState
from heron.tokenizer import Tokenizer

SYSTEM_FINGERPRINT = f"heron-{__version__}"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = "[DONE]"


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request", param)


# ----------------------------------------------------------------------- validation
def parse_logit_bias(raw: dict[str, Any] | None) -> dict[int, float] | None:
    """OpenAI's ``{"token id": bias}`` -> {id: bias}; None when empty. Raises a 400 for a
    key that is not a token id (ASCII digits only: ``int()`` also reads other scripts' digits)
    or a value that is not a number."""
    if not raw:
        return None
    out: dict[int, float] = {}
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise bad_request(f"logit_bias key {key[:40]!r} is not a token id", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request("logit_bias values must be numbers in [-100, 100]", "logit_bias")
        out[int(key)] = float(value)
    return out


def reject_unsupported(body: SamplingFields) -> None:
    """Refuse OpenAI fields that Heron accepts only in their no-op form."""
    if isinstance(body, ChatCompletionRequest):
        if body.functions:
            raise bad_request("functions is not supported; use tools", "functions")
    elif isinstance(body, CompletionRequest):
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
    context: int,
    prompt_lens: Sequence[int],
    requested: int | None,
    default: int,
    prompt_param: str,
    max_tokens_param: str,
) -> int:
    """The output budget: ``requested`` if it fits the context, else 400
    ``context_length_exceeded``; without a request, ``default`` cut to what fits."""
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


_SAMPLING_NAMES = (
    frozenset(
        {
            "n",
            "logit_bias",
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
    | ENGINE_FIELD_NAMES
)


def sampling_params(
    body: SamplingFields,
    max_tokens: int,
    logprobs: int | None,
    vocab_size: int,
    defaults: dict[str, Any] | None = None,
) -> SamplingParams:
    """Map the request onto ``SamplingParams`` over the model's Modelfile ``defaults`` (what
    the request leaves unset); its ValueErrors become 400s naming the field."""
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
        "logit_bias": parse_logit_bias(body.logit_bias),
        **engine_fields(body, vocab_size),
        "structured_outputs": structured_outputs(body),
    }
    kwargs: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k != "max_tokens"}
    kwargs.update({k: v for k, v in given.items() if v is not None})
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
    call_names: dict[str, str] = {}  # call id -> tool name, for the tool results
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        for name in ("function_call", "audio", "refusal"):
            if getattr(m, name) is not None:
                raise bad_request(f"{name} is not supported in messages", f"{where}.{name}")
        tool_part = tool_message(m, where, call_names)
        if m.reasoning_content is not None:
            if m.role != "assistant":
                raise bad_request(
                    "only assistant messages have reasoning_content", f"{where}.reasoning_content"
                )
            tool_part = {**(tool_part or {}), "reasoning_content": m.reasoning_content}
        if m.content is None and tool_part is not None and m.role == "assistant":
            out.append({"role": "assistant", **tool_part, "content": ""})
            continue
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
        out.append({**message, **(tool_part or {}), "content": text})
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
