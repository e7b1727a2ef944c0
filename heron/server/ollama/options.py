"""Ollama ``options`` (over the model's Modelfile parameters) -> ``SamplingParams``, and the
checks shared by /api/generate and /api/chat. See ``serving.py`` for where Heron differs
from Ollama on purpose."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from heron.sampling_params import SamplingParams
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel
from heron.server.ollama.protocol import Options
from heron.server.parsing import ParserFactory
from heron.server.sampling import engine_fields
from heron.server.state import ServerState
from heron.store.modelfile import ENGINE_PARAMETERS
from heron.structured import StructuredOutputsParams

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20

# SamplingParams' names in its error messages -> the names Ollama clients sent
_VLLM_TO_OLLAMA = (
    ("repetition_penalty", "repeat_penalty"),
    ("max_tokens", "num_predict"),
    ("logprobs", "top_logprobs"),
)


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
    parser: ParserFactory | None = None  # splits the reply (reasoning from content)


def merged_options(options: Options | None, model: LoadedModel) -> Options:
    """The model's Modelfile parameters overridden by the request's ``options``."""
    # (the engine's own parameters configured the model's engine when it loaded)
    defaults = {k: v for k, v in model.spec.parameters.items() if k not in ENGINE_PARAMETERS}
    if not defaults:
        return options or Options()
    given = options.model_dump(exclude_unset=True) if options is not None else {}
    try:
        return Options(**{**defaults, **given})
    except ValueError as exc:
        raise APIError(400, f"invalid Modelfile parameters: {exc}", param="options") from None


def sampling_params(
    options: Options | None,
    state: ServerState,
    top_logprobs: int | None,
    model: LoadedModel,
    structured: StructuredOutputsParams | None = None,
) -> tuple[SamplingParams, int]:
    """Ollama ``options`` over the model's Modelfile parameters, and the ``format``
    constraint (``output_format``) -> SamplingParams (max_tokens
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
            structured_outputs=structured,
            **engine_fields(o, model.engine.model_config.vocab_size, "options."),
        )
    except ValueError as exc:
        message = str(exc)
        for ours, theirs in _VLLM_TO_OLLAMA:
            message = message.replace(ours, theirs)
        raise APIError(400, message, param="options") from None
    return params, num_ctx


def top_logprobs_of(logprobs: bool | None, top: int | None, state: ServerState) -> int | None:
    cap = min(MAX_TOP_LOGPROBS, state.limits.max_logprobs)
    if top is not None and not 0 <= top <= cap:
        raise APIError(400, f"top_logprobs must be between 0 and {cap}", param="top_logprobs")
    if logprobs or (top or 0) > 0:  # asking for alternatives implies logprobs
        return top or 0
    return None


_THINK_LEVELS = ("low", "medium", "high")


def think_choice(think: bool | str | None) -> bool | None:
    """``think`` as on (True), off (False) or the model's default (None): a level asks for
    thinking. Raises APIError 400 for any other string."""
    if isinstance(think, str):
        if think and think not in _THINK_LEVELS:
            raise APIError(
                400,
                f"invalid think value {think[:40]!r}: use true, false, low, medium or high",
                param="think",
            )
        return True if think else None
    return think


def output_format(fmt: str | dict[str, Any] | None) -> StructuredOutputsParams | None:
    """Ollama's ``format``: "json" (any JSON object, as Ollama's JSON grammar), a JSON schema
    object, or "" / null for free text. Raises APIError (400) for any other string; whether a
    schema compiles is checked by the engine client (its ValueError is the run's 400)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return StructuredOutputsParams(json_object=True)
    if isinstance(fmt, str):
        raise APIError(
            400,
            f'invalid format {fmt[:40]!r}: use "json" or a JSON schema object',
            param="format",
        )
    try:
        # Objects without additionalProperties are closed, as Ollama's grammar reads them:
        # heron/structured/schema.py does so for every JSON-schema constraint.
        return StructuredOutputsParams(json=fmt)
    except ValueError as exc:
        raise APIError(400, str(exc), param="format") from None
