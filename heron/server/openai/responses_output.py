"""The output of a Responses API run: items built from the run's parsed events, and the
server-sent events that stream them.

One ``OutputBuilder`` serves both replies: a streamed one sends the bytes each call returns,
a whole one ignores them and returns the finished ``ResponseObject``. Text opens an
assistant ``message`` item with one ``output_text`` part; each tool call is a
``function_call`` item; a thinking model's reasoning is a ``reasoning`` item with one
``reasoning_text`` part. Every event carries its ``sequence_number``, in order:

    response.created, response.in_progress,
    per item: response.output_item.added,
      message:       response.content_part.added, response.output_text.delta ...,
                     response.output_text.done, response.content_part.done
      reasoning:     response.reasoning_text.delta ..., response.reasoning_text.done
      function_call: response.function_call_arguments.delta ...,
                     response.function_call_arguments.done
    response.output_item.done,
    then response.completed | response.incomplete | (error, response.failed).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from heron.server.common import sse
from heron.server.openai.responses_protocol import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputReasoningText,
    OutputText,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)
from heron.server.parsing import Event, TextPart
from heron.server.run import GenerationRun


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(run: GenerationRun) -> ResponseUsage:
    output = run.num_output_tokens
    return ResponseUsage(
        input_tokens=run.num_prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=run.num_cached_tokens),
        output_tokens=output,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=run.num_prompt_tokens + output,
    )


class OutputBuilder:
    """Builds ``response.output`` from parsed events (mutates ``response``) and returns
    the SSE bytes of each step. One item is open at a time; a new kind closes it."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self.sequence_number = 0
        self._open: OutputItem | None = None
        self._calls: dict[int, OutputFunctionCall] = {}  # tool call index -> its item

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return sse(data, event=kind)

    def _snapshot(self, kind: str) -> bytes:
        return self._event(kind, response=self.response.model_dump())

    def start(self) -> bytes:
        """response.created and response.in_progress, with the response in progress."""
        return self._snapshot("response.created") + self._snapshot("response.in_progress")

    # ------------------------------------------------------------------- items
    @property
    def _index(self) -> int:
        return len(self.response.output) - 1

    def _add_item(self, item: OutputItem) -> bytes:
        out = self._close()
        self.response.output.append(item)
        self._open = item
        out += self._event(
            "response.output_item.added", output_index=self._index, item=item.model_dump()
        )
        if isinstance(item, OutputMessage):
            out += self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=self._index,
                content_index=0,
                part=OutputText(text="").model_dump(),
            )
        return out

    def _text(self, text: str) -> bytes:
        out = b""
        if not isinstance(self._open, OutputMessage):
            message = OutputMessage(
                id=new_id("msg"), status="in_progress", content=[OutputText(text="")]
            )
            out += self._add_item(message)
        assert isinstance(self._open, OutputMessage)
        self._open.content[0].text += text
        return out + self._event(
            "response.output_text.delta",
            item_id=self._open.id,
            output_index=self._index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _reasoning(self, text: str) -> bytes:
        out = b""
        if not isinstance(self._open, OutputReasoning):
            item = OutputReasoning(
                id=new_id("rs"), status="in_progress", content=[OutputReasoningText(text="")]
            )
            out += self._add_item(item)
        assert isinstance(self._open, OutputReasoning)
        self._open.content[0].text += text
        return out + self._event(
            "response.reasoning_text.delta",
            item_id=self._open.id,
            output_index=self._index,
            content_index=0,
            delta=text,
        )

    def _call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        item = self._calls.get(index)
        if item is None:
            item = OutputFunctionCall(
                id=new_id("fc"),
                call_id=call_id or new_id("call"),
                name=name or "",
                arguments="",
                status="in_progress",
            )
            self._calls[index] = item
            out += self._add_item(item)
        if not arguments:
            return out
        item.arguments += arguments
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=self.response.output.index(item),
            delta=arguments,
        )

    def add(self, events: list[Event]) -> bytes:
        """Put the run's new ``events`` into the output; returns their SSE bytes."""
        out = b""
        for event in events:
            if isinstance(event, TextPart):
                if event.text:
                    step = self._text if event.kind == "content" else self._reasoning
                    out += step(event.text)
            else:
                out += self._call(event.index, event.id, event.name, event.arguments)
        return out

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        item.status = "incomplete" if self.response.status == "incomplete" else "completed"
        index = self.response.output.index(item)
        out = b""
        if isinstance(item, OutputMessage):
            part = item.content[0]
            where = {"item_id": item.id, "output_index": index, "content_index": 0}
            out += self._event("response.output_text.done", **where, text=part.text, logprobs=[])
            out += self._event("response.content_part.done", **where, part=part.model_dump())
        elif isinstance(item, OutputReasoning):
            out += self._event(
                "response.reasoning_text.done",
                item_id=item.id,
                output_index=index,
                content_index=0,
                text=item.content[0].text,
            )
        else:
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=index,
                name=item.name,
                arguments=item.arguments,
            )
        return out + self._event(
            "response.output_item.done", output_index=index, item=item.model_dump()
        )

    # ----------------------------------------------------------------- endings
    def finish(self, run: GenerationRun) -> bytes:
        """Close the output as the run ended (a length stop is ``incomplete`` with reason
        max_output_tokens); returns the last events, response.completed or
        response.incomplete. A reply with neither text nor calls gets an empty message."""
        response = self.response
        if run.finish_reason == "length":
            response.status = "incomplete"
            response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        else:
            response.status = "completed"
            response.completed_at = int(time.time())
        out = b""
        if not any(
            isinstance(item, OutputMessage | OutputFunctionCall) for item in response.output
        ):
            empty = OutputMessage(
                id=new_id("msg"), status="in_progress", content=[OutputText(text="")]
            )
            out += self._add_item(empty)
        out += self._close()
        response.usage = usage(run)
        return out + self._snapshot(f"response.{response.status}")

    def fail(self, code: str, message: str) -> bytes:
        """The run failed mid-way: an ``error`` event, then response.failed."""
        response = self.response
        response.status = "failed"
        response.error = ResponseError(code=code, message=message)
        out = self._event("error", code=code, message=message, param=None)
        return out + self._snapshot("response.failed")
