"""Whether a request's reply thinks, decided once for every API family.

Each family maps its own switch onto ``enabled`` (OpenAI ``reasoning_effort`` or vLLM's
``chat_template_kwargs.enable_thinking``, Anthropic ``thinking``, Ollama ``think``): True asks for thinking, False turns it off, None leaves the
model's default (its chat template's). A model thinks if its chat template says so
(``heron.reasoning.detect``). Asking a model that does not think to think is a 400 in every
family; turning thinking off on it is allowed (there is nothing to turn off).

On a thinking model the choice reaches the chat template as ``enable_thinking`` (Qwen3's
templates read it; Ollama's Go templates get ``.Think``). Its output is split by the
model's reasoning parser, unless thinking was turned off: then all text is content.

NOTE: an output constraint (structured outputs, Ollama ``format``, a forced tool call) holds
the whole reply, reasoning included: a template that opens ``<think>`` for the reply leaves
a constrained answer inside the reasoning unless the grammar writes ``</think>``. Turn
thinking off to constrain only the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heron.reasoning import detect, make_parser, opens_reasoning
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel
from heron.server.parsing import ChainParser, OutputParser, ParserFactory

_CACHE_KEY = "reasoning.parser"
_TAIL_TOKENS = 16  # enough of the prompt's end to see an open "<think>"


def reasoning_parser_name(model: LoadedModel) -> str | None:
    """The model's reasoning parser (None: it does not think); read once per model."""
    if _CACHE_KEY not in model.cache:
        model.cache[_CACHE_KEY] = detect(model.engine.renderer.template)
    name: str | None = model.cache[_CACHE_KEY]
    return name


@dataclass(frozen=True, slots=True)
class Thinking:
    """One request's thinking: the model's parser (None if it does not think) and the
    request's choice (None: the model's default)."""

    parser: str | None
    enabled: bool | None

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """What the chat template gets: ``enable_thinking`` when the request chose."""
        if self.parser is None or self.enabled is None:
            return {}
        return {"enable_thinking": self.enabled}

    def parser_factory(
        self, model: LoadedModel, prompt: list[int], tools: ParserFactory | None = None
    ) -> ParserFactory | None:
        """The per-choice parser for a reply to ``prompt``: reasoning first (when the model
        thinks and thinking is not off), then ``tools`` on its content."""
        if self.parser is None or self.enabled is False:
            return tools
        name = self.parser
        tail = model.engine.tokenizer.decode(prompt[-_TAIL_TOKENS:], skip_special_tokens=False)
        in_reasoning = opens_reasoning(tail)

        def factory() -> OutputParser:
            reasoning = make_parser(name, in_reasoning)
            return ChainParser(reasoning, tools()) if tools is not None else reasoning

        return factory


def effort_choice(effort: str | None, enable_thinking: bool | None = None) -> bool | None:
    """OpenAI's ``reasoning_effort`` as a choice: "none" turns thinking off, any other level
    turns it on (the level itself changes nothing: Heron's models have no effort setting).
    vLLM's ``chat_template_kwargs.enable_thinking`` says the same; given both, they must
    agree (else APIError 400)."""
    choice = None if effort is None else effort != "none"
    if enable_thinking is None:
        return choice
    if choice is not None and choice != enable_thinking:
        raise APIError(
            400,
            "reasoning_effort and chat_template_kwargs.enable_thinking disagree",
            param="chat_template_kwargs.enable_thinking",
        )
    return enable_thinking


def resolve_thinking(
    model: LoadedModel, enabled: bool | None, param: str, shown: str | None = None
) -> Thinking:
    """The request's ``Thinking``. Raises APIError 400 (naming ``param``, and the model as
    ``shown``, the client's spelling) if it asks a model that does not think to think."""
    parser = reasoning_parser_name(model)
    if enabled and parser is None:
        name = shown or model.name
        raise APIError(400, f'"{name}" does not support thinking ({param})', param=param)
    return Thinking(parser, enabled)
