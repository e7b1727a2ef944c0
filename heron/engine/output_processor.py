"""The front end's half of generation: n > 1 fan-out, detokenization, stop strings, logprob
text, and outputs. ``LLMEngine`` (in process) and ``AsyncEngineClient`` (the HTTP process)
both use it, so a request behaves the same offline and served.

The engine core sends, per step, only the new token ids of each sequence. Per choice this
keeps an incremental detokenizer (never splitting a UTF-8 character) and, when the request
has stop strings, a held-back tail of at most ``max(len(stop)) - 1`` characters that could
still grow into one. A stop string is found in held + new text only (a match cannot start
earlier: everything before the held tail was already checked), so the work per step is
proportional to the new tokens, not to the output so far. A choice that hits a stop string
finishes here; its engine sequence is returned in ``to_abort`` for the caller to abort.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from heron.engine.protocol import (
    EngineCoreOutput,
    EngineCoreRequest,
    PromptLogprobs,
    TokenLogprobs,
)
from heron.lora.request import LoRARequest
from heron.outputs import CompletionOutput, GenerationDelta, Logprob, RequestOutput
from heron.outputs import PromptLogprobs as SpelledPromptLogprobs
from heron.sampling_params import SamplingParams
from heron.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass(slots=True)
class _Choice:
    index: int
    engine_id: str
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    max_stop_len: int  # 0 without stop strings
    held: str = ""  # decoded text not yet released (could start a stop string)
    num_output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # cumulative mode only (LLMEngine): everything released so far
    parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass(slots=True)
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    choices: list[_Choice]
    cumulative: bool
    num_cached_tokens: int = 0
    prompt_logprobs: SpelledPromptLogprobs | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)


@dataclass(slots=True)
class ProcessedOutputs:
    deltas: list[GenerationDelta]  # one per choice that advanced, in arrival order
    advanced: list[str]  # request ids with new output (each once)
    finished: list[str]  # request ids whose every choice has finished (now forgotten)
    to_abort: list[str]  # engine ids stopped here (stop strings): abort them in the core


class OutputProcessor:
    """Fans requests out into engine sequences and turns their outputs back into text.

    Not thread-safe: the caller serialises ``add_request``, ``process_outputs`` and
    ``abort_request``.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}
        self._by_engine_id: dict[str, tuple[_RequestState, _Choice]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # ---------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        cumulative: bool = False,
        lora_request: LoRARequest | None = None,
    ) -> list[EngineCoreRequest]:
        """Register a request and return the engine requests to submit: one per choice
        (ids ``rid`` for n == 1, ``rid#i`` otherwise; siblings fork the first's prompt and
        get derived seeds; only the first scores the prompt, for ``prompt_logprobs``).
        ``cumulative`` keeps whole outputs for ``make_request_output``.
        Raises ValueError for an id that collides with a live request or sequence."""
        n = params.n
        engine_ids = [request_id] if n == 1 else [f"{request_id}#{i}" for i in range(n)]
        if request_id in self._requests or any(e in self._by_engine_id for e in engine_ids):
            raise ValueError(f"request id {request_id!r} collides with a live request")
        max_stop = max((len(s) for s in params.stop), default=0)
        skip = params.skip_special_tokens
        state = _RequestState(request_id, prompt, list(prompt_token_ids), [], cumulative)
        engine_requests = []
        for i, engine_id in enumerate(engine_ids):
            child = params
            if n > 1:
                prompt_logprobs = None if i else params.prompt_logprobs
                child = dataclasses.replace(
                    params, n=1, seed=_seed(params, i), prompt_logprobs=prompt_logprobs
                )
            choice = _Choice(
                i, engine_id, child, IncrementalDetokenizer(self.tokenizer, skip), max_stop
            )
            if cumulative and params.logprobs is not None:
                choice.logprobs = []
            state.choices.append(choice)
            engine_requests.append(
                EngineCoreRequest(
                    engine_id,
                    state.prompt_token_ids,
                    child,
                    priority=priority,
                    cache_salt=cache_salt,
                    fork_of=engine_ids[0] if i else None,
                    lora=lora_request,
                )
            )
        self._requests[request_id] = state
        for choice in state.choices:
            self._by_engine_id[choice.engine_id] = (state, choice)
        return engine_requests

    def engine_ids(self, request_id: str) -> list[str]:
        state = self._requests.get(request_id)
        return [] if state is None else [c.engine_id for c in state.choices]

    def request_of(self, engine_id: str) -> str | None:
        entry = self._by_engine_id.get(engine_id)
        return None if entry is None else entry[0].request_id

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; returns the engine ids of its unfinished choices, which the
        caller aborts in the core."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return []
        for c in state.choices:
            self._by_engine_id.pop(c.engine_id, None)
        return [c.engine_id for c in state.choices if c.finish_reason is None]

    # ------------------------------------------------------------------ outputs
    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        """Detokenize one step's outputs, apply stop strings and build deltas. Mutates each
        choice's state; forgets requests that finished."""
        result = ProcessedOutputs([], [], [], [])
        seen: set[str] = set()
        for out in outputs:
            entry = self._by_engine_id.get(out.request_id)
            if entry is None:
                continue  # aborted here while the step ran
            state, choice = entry
            if choice.finish_reason is not None:
                continue  # stopped by a stop string; the core's abort is on its way
            state.num_cached_tokens = out.num_cached_tokens
            if choice.max_stop_len and len(out.new_token_ids) > 1:
                delta = self._advance_each(state, choice, out)
            else:
                delta = self._advance(state, choice, out)
            if delta.finish_reason == "stop" and out.finish_reason is None:
                result.to_abort.append(choice.engine_id)
            result.deltas.append(delta)
            if state.request_id not in seen:
                seen.add(state.request_id)
                result.advanced.append(state.request_id)
        for rid in result.advanced:
            state = self._requests[rid]
            if state.finished:
                result.finished.append(rid)
                if not state.cumulative:  # LLMEngine forgets after its last output
                    self.abort_request(rid)
        return result

    def _advance_each(
        self, state: _RequestState, choice: _Choice, out: EngineCoreOutput
    ) -> GenerationDelta:
        """``_advance`` one token at a time (a speculative step brings several), so a stop
        string ends the output at the token that completed it, as it would have one step
        at a time; the tokens after it are dropped. Returns the merged delta."""
        ids, lps, last = out.new_token_ids, out.new_logprobs, len(out.new_token_ids) - 1
        deltas: list[GenerationDelta] = []
        for j, token in enumerate(ids):
            piece = EngineCoreOutput(
                out.request_id,
                [token],
                None if lps is None else [lps[j]],
                out.finish_reason if j == last else None,
                out.stop_reason if j == last else None,
                out.num_cached_tokens,
                out.prompt_logprobs if j == 0 else None,
            )
            deltas.append(self._advance(state, choice, piece))
            if deltas[-1].finish_reason is not None:
                break
        merged = deltas[-1]
        merged.text = "".join(d.text for d in deltas)
        merged.token_ids = [t for d in deltas for t in d.token_ids]
        if lps is not None:
            merged.logprobs = [lp for d in deltas for lp in d.logprobs or []]
        merged.prompt_logprobs = deltas[0].prompt_logprobs
        return merged

    def _advance(
        self, state: _RequestState, choice: _Choice, out: EngineCoreOutput
    ) -> GenerationDelta:
        new_ids = out.new_token_ids
        choice.num_output_tokens += len(new_ids)
        finished = out.finish_reason is not None
        new_from = len(choice.held)  # where this step's text starts in ``text``
        text = choice.held + choice.detokenizer.add(new_ids)
        if finished:
            text += choice.detokenizer.flush()  # release bytes held for an unfinished char
        params = choice.params
        released, choice.held = text, ""
        finish_reason = out.finish_reason
        stop_reason: int | str | None = out.stop_reason
        if choice.max_stop_len:
            hit = None
            if choice.num_output_tokens >= params.min_tokens:
                hit = _find_stop(text, new_from, params.stop)
            if hit is not None:
                pos, stop = hit
                released = (
                    text[: pos + len(stop)] if params.include_stop_str_in_output else text[:pos]
                )
                # finished by length (or EOS) on this very token: the stop string wins
                finish_reason, stop_reason = "stop", stop
            elif not finished:
                keep = min(len(text), choice.max_stop_len - 1)
                released, choice.held = text[: len(text) - keep], text[len(text) - keep :]
        choice.finish_reason = finish_reason
        choice.stop_reason = stop_reason
        logprobs = None
        if out.new_logprobs is not None:
            logprobs = [self._spell(t, lp) for t, lp in zip(new_ids, out.new_logprobs, strict=True)]
        prompt_logprobs = None
        if out.prompt_logprobs is not None:
            prompt_logprobs = self._spell_prompt(state.prompt_token_ids, out.prompt_logprobs)
            state.prompt_logprobs = prompt_logprobs
        if state.cumulative:
            choice.parts.append(released)
            choice.token_ids.extend(new_ids)
            if choice.logprobs is not None and logprobs is not None:
                choice.logprobs.extend(logprobs)
        return GenerationDelta(
            state.request_id,
            choice.index,
            released,
            list(new_ids),
            logprobs,
            finish_reason,
            stop_reason,
            len(state.prompt_token_ids),
            state.num_cached_tokens,
            choice.num_output_tokens,
            prompt_logprobs,
        )

    def _spell(self, token: int, lp: TokenLogprobs) -> dict[int, Logprob]:
        """One token's logprobs with each token's text: the top alternatives (ranks 1..k)
        and the sampled token with its own rank."""
        entry = {
            tid: Logprob(val, r + 1, self._token_text(tid))
            for r, (tid, val) in enumerate(zip(lp.top_ids, lp.top_logprobs, strict=True))
        }
        entry[token] = Logprob(lp.logprob, lp.rank, self._token_text(token))
        return entry

    def _spell_prompt(self, prompt: list[int], lps: PromptLogprobs) -> SpelledPromptLogprobs:
        """The prompt's logprobs in vLLM's shape: None for the first token, then each
        token's alternatives (ranks 1..k) and the token itself with its own rank."""
        spelled: SpelledPromptLogprobs = [None]
        for i, token in enumerate(prompt[1 : len(lps.logprobs) + 1]):
            lp = TokenLogprobs(lps.logprobs[i], lps.ranks[i], lps.top_ids[i], lps.top_logprobs[i])
            spelled.append(self._spell(token, lp))
        return spelled

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def make_request_output(self, request_id: str) -> RequestOutput:
        """The cumulative output of a request registered with ``cumulative=True``; a finished
        request is forgotten afterwards."""
        state = self._requests[request_id]
        outputs = [
            CompletionOutput(
                index=c.index,
                text="".join(c.parts),
                token_ids=list(c.token_ids),
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
                logprobs=None if c.logprobs is None else list(c.logprobs),
            )
            for c in state.choices
        ]
        if state.finished:
            self.abort_request(request_id)
        return RequestOutput(
            request_id=request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=outputs,
            finished=state.finished,
            num_cached_tokens=state.num_cached_tokens,
            prompt_logprobs=state.prompt_logprobs,
        )


def _find_stop(text: str, new_from: int, stops: list[str]) -> tuple[int, str] | None:
    """The earliest stop string that ends at or after ``new_from`` (a match that ends in
    the new text is new), as (position, stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop, max(0, new_from - len(stop) + 1))
        if pos != -1 and (best is None or pos < best[0]):
            best = (pos, stop)
    return best


def _seed(params: SamplingParams, index: int) -> int | None:
    """Sibling ``index`` of a seeded n > 1 request gets its own, derived seed."""
    if index == 0 or params.seed is None:
        return params.seed
    return (params.seed + index * 0x9E3779B97F4A7C15) % 2**63
