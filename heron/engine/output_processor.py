"""Turns sampled tokens into text: incremental detokenization, stop strings, outputs.

Stop strings are matched on text, so they are applied here rather than in the scheduler;
text that could still be the start of a stop string is held back from streamed output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heron.outputs import CompletionOutput, RequestOutput
from heron.request import FINISH_REASONS, Request, RequestStatus
from heron.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass(slots=True)
class _Sequence:
    request: Request
    detokenizer: IncrementalDetokenizer
    text: str = ""
    num_decoded: int = 0
    stopped: bool = False


@dataclass(slots=True)
class RequestGroup:
    """The n sequences of one user request."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[_Sequence] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.request.is_finished for s in self.sequences)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def new_sequence(self, request: Request) -> _Sequence:
        skip = request.sampling_params.skip_special_tokens
        return _Sequence(request, IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip))

    def process(self, group: RequestGroup) -> list[str]:
        """Detokenize new tokens of every sequence and apply stop strings.

        Mutates each sequence's text; returns the request ids that hit a stop string (the
        engine finishes them)."""
        stopped: list[str] = []
        for seq in group.sequences:
            req = seq.request
            new_ids = req.output_token_ids[seq.num_decoded :]
            if not new_ids or seq.stopped:
                continue
            seq.num_decoded = req.num_output_tokens
            before = len(seq.text)
            seq.text += seq.detokenizer.add(new_ids)
            if req.is_finished:
                seq.text += seq.detokenizer.flush()  # release bytes held for an unfinished char
            params = req.sampling_params
            if params.stop and req.num_output_tokens >= params.min_tokens:
                hit = self._find_stop(seq.text, before, params.stop)
                if hit is not None:
                    pos, stop = hit
                    seq.text = (
                        seq.text[: pos + len(stop)]
                        if params.include_stop_str_in_output
                        else seq.text[:pos]
                    )
                    req.stop_reason = stop
                    seq.stopped = True
                    if req.is_finished:  # finished by length on this very token: the stop wins
                        req.status = RequestStatus.FINISHED_STOPPED
                    else:
                        stopped.append(req.request_id)
        return stopped

    @staticmethod
    def _find_stop(text: str, new_from: int, stops: list[str]) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in stops:
            # Only a match that ends inside the new text is new.
            start = max(0, new_from - len(stop) + 1)
            pos = text.find(stop, start)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        return best

    def make_output(self, group: RequestGroup) -> RequestOutput:
        outputs = []
        for i, seq in enumerate(group.sequences):
            req = seq.request
            finished = req.is_finished
            text = seq.text
            stops = req.sampling_params.stop
            if stops and not finished:
                # Hold back a tail that may still grow into a stop string.
                text = text[: max(0, len(text) - (max(len(s) for s in stops) - 1))]
            outputs.append(
                CompletionOutput(
                    index=i,
                    text=text,
                    token_ids=list(req.output_token_ids),
                    finish_reason=FINISH_REASONS.get(req.status) if finished else None,
                    stop_reason=req.stop_reason,
                    logprobs=None if req.logprobs is None else list(req.logprobs),
                )
            )
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            outputs=outputs,
            finished=group.finished,
            num_cached_tokens=group.sequences[0].request.num_cached_tokens,
        )
