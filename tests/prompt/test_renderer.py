"""ChatRenderer: template choice, Modelfile TEMPLATE overrides (Jinja or Go) and bos handling."""

from __future__ import annotations

import pytest

from heron.prompt import ChatRenderer
from heron.tokenizer import Tokenizer
from tests.tokenizer.helpers import spm_metadata

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
GO_TEMPLATE = "{{ range .Messages }}[{{ .Role }}]{{ .Content }}{{ end }}"


def tokenizer(**templates: str) -> Tokenizer:
    keys = {
        ("tokenizer.chat_template" + ("" if name == "default" else "." + name)): source
        for name, source in templates.items()
    }
    return Tokenizer.from_gguf_metadata(spm_metadata(**keys))


def test_model_without_template_is_an_error() -> None:
    renderer = ChatRenderer(tokenizer())
    assert renderer.template is None
    with pytest.raises(ValueError, match="no chat template"):
        renderer.render(MESSAGES)


def test_named_templates_and_bos() -> None:
    tok = tokenizer(
        default="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
        tool_use="TOOLS{{ tools | length }}",
    )
    renderer = ChatRenderer(tok)
    assert renderer.render(MESSAGES) == "<s>hiyo"
    assert renderer.render(MESSAGES, tools=[{"name": "f"}]) == "TOOLS1"
    assert renderer.render(MESSAGES, template_name="default") == "<s>hiyo"
    with pytest.raises(ValueError, match="no chat template named 'nope'"):
        renderer.render(MESSAGES, template_name="nope")
    # The template writes bos itself: exactly one bos, not two.
    ids = renderer.encode(MESSAGES)
    assert ids[0] == 1 and ids.count(1) == 1


def test_encode_adds_missing_bos() -> None:
    tok = tokenizer(default="{{ messages[0].content }}")
    assert tok.add_bos_token
    assert ChatRenderer(tok).encode(MESSAGES) == tok.encode("hi")
    assert ChatRenderer(tok).encode(MESSAGES)[:1] == [1]


def test_special_tokens_come_from_the_tokenizer() -> None:
    tok = tokenizer(default="{{ bos_token }}|{{ eos_token }}|{{ unk_token }}")
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert ChatRenderer(tok).render(MESSAGES) == "<s>|</s>|<unk>"


def test_jinja_override_replaces_the_default_only() -> None:
    tok = tokenizer(default="checkpoint", tool_use="tools")
    renderer = ChatRenderer(tok, "override {{ messages | length }}")
    assert renderer.template == "override {{ messages | length }}"
    assert renderer.render(MESSAGES) == "override 2"
    assert renderer.render(MESSAGES, tools=[{}]) == "tools"
    assert tok.chat_template == "checkpoint"  # the tokenizer is left alone


def test_go_override_renders_as_ollama_does() -> None:
    tok = tokenizer(default="checkpoint")
    renderer = ChatRenderer(tok, GO_TEMPLATE)
    assert renderer.template == GO_TEMPLATE
    assert renderer.render(MESSAGES) == "[user]hi[assistant]yo"
    assert renderer.render(MESSAGES, template_name="default") == "checkpoint"
    assert renderer.encode(MESSAGES)[:1] == [1]


@pytest.mark.parametrize("template", [None, ""])
def test_no_override(template: str | None) -> None:
    assert ChatRenderer(tokenizer(default="x"), template).template == "x"


def test_broken_go_override_fails_when_built() -> None:
    with pytest.raises(ValueError, match="line 1"):
        ChatRenderer(tokenizer(), "{{ if .System }}unclosed")


def test_enable_thinking_reaches_jinja_and_go_templates() -> None:
    jinja = "{{ 'unset' if enable_thinking is not defined else enable_thinking }}"
    renderer = ChatRenderer(tokenizer(default=jinja))
    assert renderer.render(MESSAGES) == "unset"
    assert renderer.render(MESSAGES, enable_thinking=False) == "False"
    go = "{{ if .IsThinkSet }}{{ if .Think }}on{{ else }}off{{ end }}{{ else }}unset{{ end }}"
    go_renderer = ChatRenderer(tokenizer(), template=go + GO_TEMPLATE)
    assert go_renderer.render(MESSAGES).startswith("unset")
    assert go_renderer.render(MESSAGES, enable_thinking=True).startswith("on")
    assert go_renderer.render(MESSAGES, enable_thinking=False).startswith("off")
