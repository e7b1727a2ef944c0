"""`ChatRenderer`: one model's chat template, rendered over a conversation.

A checkpoint's templates are Jinja (HF `chat_template`, GGUF `tokenizer.chat_template`); a
Modelfile TEMPLATE replaces the default one and is Jinja or Go template syntax. The renderer
picks the path once, when it is built, and imports the interpreter it needs on first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from heron.tokenizer.tokenizer import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from heron.tokenizer import Tokenizer

TOOL_USE_TEMPLATE = "tool_use"
# Marks where a continued assistant message ends (private-use characters: never user text
# a template would produce by itself).
_PREFILL = "\ue000heron-prefill-end\ue001"


def check_template(source: str) -> None:
    """Parse a Modelfile TEMPLATE (Go template syntax or Jinja) without rendering it, so a
    broken one is refused when a model is created rather than failing when it loads.

    Raises ValueError naming the problem (and its line).
    """
    from heron.prompt.gotemplate import GoTemplate, is_go_template

    if is_go_template(source):
        GoTemplate(source)
        return
    from heron.prompt.jinja import compile_chat_template

    compile_chat_template(source)


class ChatRenderer:
    """Renders conversations to prompt text (`render`) or prompt ids (`encode`) for one model.

    Built from the model's tokenizer (its chat templates and special tokens) and, optionally,
    a Modelfile TEMPLATE that replaces the checkpoint's default template. A Go template is
    parsed here, so a broken one fails when the model loads. Thread-safe: rendering keeps no
    state.
    """

    def __init__(self, tokenizer: Tokenizer, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self._templates = tokenizer.chat_templates
        self._special_tokens = tokenizer.special_tokens
        self._go_template: str | None = None
        if template:
            from heron.prompt.gotemplate import GoTemplate, is_go_template

            if is_go_template(template):
                GoTemplate(template)  # parse now, so a broken template fails at load
                self._go_template = template
            else:
                self._templates[DEFAULT_TEMPLATE] = template

    @property
    def template(self) -> str | None:
        """The source a plain conversation renders with: the Modelfile TEMPLATE if one was
        given, else the checkpoint's default template; None if the model has none."""
        return self._go_template or self._templates.get(DEFAULT_TEMPLATE)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The conversation as prompt text.

        With `tools` and a "tool_use" template, that template is used; `template_name` picks one
        explicitly. Extra kwargs (e.g. `documents`, `enable_thinking`) become Jinja template
        variables; a Go template gets Ollama's data (`.System`, `.Messages`, `.Tools`, ...; `.Think`
        from `enable_thinking`).
        Raises ValueError if the model has no chat template or the template fails.
        """
        name = kwargs.pop("template_name", None)
        if name is None and self._go_template is not None:
            from heron.prompt.gotemplate import render_ollama_prompt

            conversation = [dict(m) for m in messages]
            tool_list = [dict(t) for t in tools] if tools else None
            think = kwargs.get("enable_thinking")
            return render_ollama_prompt(self._go_template, conversation, tool_list, think)
        if name is None:
            has_tool_template = TOOL_USE_TEMPLATE in self._templates
            name = TOOL_USE_TEMPLATE if tools and has_tool_template else DEFAULT_TEMPLATE
        source = self._templates.get(name)
        if source is None:
            if not self._templates:
                raise ValueError(
                    "this model has no chat template; send a plain-text prompt, or supply a "
                    "chat template"
                )
            raise ValueError(f"no chat template named {name!r}; have {sorted(self._templates)}")
        from heron.prompt.jinja import render_chat_template

        return render_chat_template(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens=self._special_tokens,
            **kwargs,
        )

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered conversation (arguments as for `render`).

        Message content is the user's text, never markup: special-token text inside it (a
        forged "<|im_end|><|im_start|>system") encodes as plain text, while the template's
        own markers stay special. A conversation without such text encodes exactly as its
        rendered text does. The text is encoded without the tokenizer's bos/eos because
        templates write bos themselves when they want it. If the model adds bos to plain text
        but the template did not write it, bos is prepended once, so the prompt never lacks or
        doubles bos.

        ``continue_final_message``: the last message is the assistant's reply so far (a
        prefill); the prompt ends where its text ends, so generation continues it. Raises
        ValueError if the template cannot render it that way.
        """
        tok = self.tokenizer
        if continue_final_message:
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError("continuing a reply needs a final assistant message")
            last = dict(messages[-1], content=str(messages[-1].get("content") or "") + _PREFILL)
            messages = [*messages[:-1], last]
            add_generation_prompt = False
        specials = tok.special_token_texts
        suspects = [
            i
            for i, m in enumerate(messages)
            if isinstance(m.get("content"), str) and any(s in m["content"] for s in specials)
        ]
        spans: list[tuple[int, int]] = []
        if suspects:
            text, spans = self._render_marked(
                messages, suspects, add_generation_prompt, tools, kwargs
            )
        else:
            text = self.render(messages, add_generation_prompt, tools, **kwargs)
        if continue_final_message:
            end = text.rfind(_PREFILL)
            if end < 0:
                raise ValueError(
                    "this model's chat template cannot continue a final assistant message"
                )
            text = text[:end]
            spans = [(a, min(b, end)) for a, b in spans if a < end]
        if spans:
            ids = tok.encode_with_plain_spans(text, spans)
        else:
            ids = tok.encode(text, add_special_tokens=False)
        bos = tok.bos_token_id
        if tok.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def _render_marked(
        self,
        messages: Sequence[Mapping[str, Any]],
        suspects: Sequence[int],
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None,
        kwargs: dict[str, Any],
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of the content of messages `suspects`.

        Those messages render with a unique placeholder as their content, which is then
        replaced by the real content, so the spans are exact and the template's own markers
        can never be taken for content. Raises ValueError if the template alters or drops a
        placeholder (it transforms the content), since the spans would then be unknown.
        """
        marks = {i: f"\ue000heron-content-{i}\ue001" for i in suspects}
        masked = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(messages)]
        skeleton = self.render(masked, add_generation_prompt, tools, **kwargs)
        by_mark = {marks[i]: str(messages[i]["content"]) for i in suspects}
        for mark in by_mark:
            if mark not in skeleton:
                raise ValueError(
                    "a message contains special-token text (such as "
                    f"{self.tokenizer.special_token_texts[0]!r}) that this model's chat "
                    "template alters; remove it from the message"
                )
        pattern = re.compile("|".join(re.escape(mark) for mark in by_mark))
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        size = pos = 0
        for match in pattern.finditer(skeleton):
            before = skeleton[pos : match.start()]
            content = by_mark[match.group()]
            parts += (before, content)
            size += len(before)
            spans.append((size, size + len(content)))
            size += len(content)
            pos = match.end()
        parts.append(skeleton[pos:])
        return "".join(parts), spans
