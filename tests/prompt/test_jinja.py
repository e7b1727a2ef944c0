"""Jinja chat template rendering: sandboxing, limits, errors and the environment templates expect."""

from __future__ import annotations

import time
from typing import Any

import pytest

from heron.prompt.jinja import compile_chat_template, render_chat_template

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def render(source: str, **kwargs: Any) -> str:
    return render_chat_template(source, MESSAGES, **kwargs)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ namespace.__init__ }}",
        "{{ messages.__class__ }}",
        "{{ ()|attr('__class__') }}",
        "{{ self._TemplateReference__context }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ raise_exception.__globals__ }}",
        "{% set _ = messages.append({'role': 'x'}) %}",
        "{% set _ = messages[0].update({'role': 'x'}) %}",
    ],
)
def test_sandbox_escapes_fail(source: str) -> None:
    with pytest.raises(ValueError, match="chat template failed"):
        render(source)


def test_messages_are_not_mutated() -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError):
        render_chat_template("{% set _ = messages[0].pop('role') %}", messages)
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{% for %}", "does not parse"),
        ("{% if x %}unclosed", "does not parse"),
        ("{{ raise_exception('Conversation roles must alternate') }}", "roles must alternate"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ missing.attribute }}", "undefined"),
        ("{{ messages[0]['content'] + 1 }}", "TypeError"),
    ],
)
def test_template_errors_are_value_errors(source: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render(source)


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'a' * 1000000000 }}",
        "{{ [0] * 1000000000 }}",
        "{% set n = 10 %}{{ n ** 100000000 }}",
    ],
)
def test_template_bombs_stop(source: str) -> None:
    start = time.monotonic()
    with pytest.raises(ValueError, match="too long|over"):
        render(source)
    assert time.monotonic() - start < 10


def test_output_cap_is_configurable() -> None:
    source = "{% for i in range(100) %}0123456789{% endfor %}"
    assert len(render(source, max_output_chars=1000)) == 1000
    with pytest.raises(ValueError, match="over 999 characters"):
        render(source, max_output_chars=999)


def test_template_environment() -> None:
    source = (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}[{{ m.role }}:{{ m['content'] | trim }}]{% endgeneration %}\n"
        "{% endfor %}"
        "{{ ns.n }} {{ data | tojson }} {{ strftime_now('%Y') | length }}"
        "{% if add_generation_prompt %}<go>{% endif %}"
    )
    data = {"html": "<b>&'", "text": "ü"}
    out = render(source, data=data)
    # trim_blocks eats the newline after a block tag; the namespace counts both turns.
    assert out == '[user:hi]2 {"html": "<b>&\'", "text": "ü"} 4<go>'
    assert not render(source, data=data, add_generation_prompt=False).endswith("<go>")


def test_tools_and_kwargs_reach_the_template() -> None:
    source = "{{ tools | tojson }}|{{ enable_thinking }}|{{ bos_token }}"
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = render(source, tools=tools, enable_thinking=False, special_tokens={"bos_token": "<s>"})
    assert out == '[{"type": "function", "function": {"name": "f"}}]|False|<s>'


def test_compiled_once() -> None:
    source = "{{ messages | length }} cached"
    assert compile_chat_template(source) is compile_chat_template(source)


def _render_bounded(source: str, seconds: float = 20.0) -> BaseException | str | None:
    """Render in a daemon thread; None if it did not finish within `seconds` (a hang)."""
    import threading

    result: list[BaseException | str] = []

    def run() -> None:
        try:
            result.append(render(source))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def test_silent_nested_loops_stop_on_the_step_budget() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    outcome = _render_bounded(source)
    assert isinstance(outcome, ValueError), outcome
    assert "steps" in str(outcome) or "time" in str(outcome)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "source",
    [
        "{{ '%0500000000d' % 1 }}",
        "{{ '%.500000000f' % 1.5 }}",
        "{{ '%*d' % (500000000, 1) }}",
        "{{ '%0500000000d'|format(1) }}",
        "{{ '{:0500000000d}'.format(1) }}",
        "{{ '{:>{w}}'.format('x', w=500000000) }}",
        "{{ 'x'|center(500000000) }}",
        "{{ 'a\nb'|indent(500000000) }}",
        "{{ 'x'.ljust(500000000) }}",
        "{{ 'x'.rjust(500000000) }}",
        "{{ 'x'.center(500000000) }}",
        "{{ 'x'.zfill(500000000) }}",
        "{{ ('a' * 1000000).replace('a', 'b' * 1000) }}",
        "{{ ('a' * 100000)|replace('a', 'b' * 100000) }}",
        "{{ ('a' * 1000000).join(['x' * 1000] * 1000) }}",
        "{{ (['x' * 1000000] * 1000)|join('y') }}",
        "{% set a = 'x' * 1000000 %}{% set b = a ~ a ~ a ~ a ~ a ~ a ~ a ~ a %}"
        "{% set c = b ~ b ~ b ~ b ~ b ~ b ~ b ~ b %}{{ c|length }}",
        "{{ [1]|slice(500000000) }}",
        "{{ ('a ' * 500000)|wordwrap(1, wrapstring='x' * 100000) }}",
        "{{ {'a': 1}|tojson(indent=500000000) }}",
        "{{ lipsum(100000000) }}",
        "{% set n = 10 ** 60 %}{% set n = n * n * n * n * n * n %}{{ n * n * n * n * n * n }}",
    ],
)
def test_wide_formatting_is_refused_before_it_allocates(source: str) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        outcome = _render_bounded(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, ValueError), outcome
    assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_ordinary_formatting_still_works() -> None:
    source = (
        "{{ '%05d|%-4s|%.2f' % (7, 'ab', 1.5) }} {{ '%s-%s'|format('a', 'b') }} "
        "{{ '{:>5}|{:.3f}'.format('x', 2) }} {{ 'ab'|center(6) }}|{{ 'a\nb'|indent(2) }} "
        "{{ 'x'.ljust(3) }}|{{ ['a', 'b']|join(', ') }} {{ 'aa'|replace('a', 'b') }}"
    )
    assert render(source) == "00007|ab  |1.50 a-b     x|2.000   ab  |a\n  b x  |a, b bb"


def test_a_real_template_renders_within_the_budget() -> None:
    source = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    many = [{"role": "user", "content": f"message {i}"} for i in range(2000)]
    assert render_chat_template(source, many).count("<|im_start|>") == 2001
