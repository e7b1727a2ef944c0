"""Render a model's Jinja chat template safely.

Templates come from model files, so they are untrusted code. They run in jinja2's immutable
sandbox (no attribute starting with `_`, no mutation of passed-in data, `range` capped), with
Heron's extra limits (`jinja_limits.py`): a budget of steps and time per render (every loop
iteration, call and lookup counts), no operator, filter or string method that builds a huge
value from small inputs (`*`, `**`, `+`, `~`, `%`, `format`, padding, `indent`, `replace`,
`join`, ...), and rendering stops once the output passes `max_output_chars`. The environment matches what chat templates
expect: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`, a
`tojson` that leaves HTML characters alone, and `{% generation %}` blocks (rendered as-is).

Every failure (syntax, runtime error, `raise_exception`, sandbox violation, limit) is a ValueError.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

from heron.prompt import jinja_limits as limits
from heron.prompt.jinja_limits import MAX_VALUE_LEN, Budget

MAX_OUTPUT_CHARS = 4 * 1024 * 1024  # 4 MiB of text: far beyond any real prompt template
MAX_EXPONENT = 64
MAX_INT_BITS = 4096  # largest integer product a template may build
_GUARD_ITER = "heron_guard_iter__"  # names the guards are bound to in the template globals
_CONCAT = "heron_concat__"


class ChatTemplateError(jinja2.TemplateError):
    """Raised by a template through `raise_exception(message)`."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML; chat prompts want the plain JSON.
    limits.check_width(indent, "tojson indent")
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or max > 1000:
        raise jinja2.TemplateRuntimeError("lipsum asks for too much text")
    return str(generate_lorem_ipsum(n, html, min, max))


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: marks assistant text for training masks.

    Heron only renders prompts, so the block renders its body unchanged.
    """

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Guard(NodeTransformer):
    """Rewrites a parsed template: every `{% for %}` iterates through `guard_iter` (one budget
    step per item) and every `~` goes through the size-checked `concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # rewrites the children in place
        node.iter = nodes.Call(
            nodes.Name(_GUARD_ITER, "load"), [node.iter], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.Name(_CONCAT, "load"), node.nodes, [], None, None)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with Heron's budgets: loops, calls and lookups tick the render's budget;
    `*`, `**`, `+` and `%` are checked so a template cannot build huge values; string methods
    that pad, replace or join are size-checked."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for found in tree.find_all(nodes.Name):
            if found.name in (_GUARD_ITER, _CONCAT):
                raise jinja2.TemplateSyntaxError(f"{found.name} is reserved", found.lineno)
        guarded = _Guard().visit(tree)
        assert isinstance(guarded, nodes.Template)
        return guarded

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # jinja2 returns an Undefined that renders as ""; fail loudly instead.
        raise SecurityError(f"template tried to reach {type(obj).__name__}.{attribute}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        limits.tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        limits.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        limits.tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", None) in ("format", "format_map"):
            limits.check_brace_format(owner)
            return super().wrap_str_format(value)
        return limits.wrap_str_method(value)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        limits.tick()
        if op == "%":
            if isinstance(left, str):
                return limits.percent_format(left, right)
            return operator.mod(left, right)
        if op == "**":
            if isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise jinja2.TemplateRuntimeError(f"exponent {right} is over {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int):
                if abs(left).bit_length() * abs(right) > MAX_INT_BITS:
                    raise jinja2.TemplateRuntimeError("power builds a number too large")
            return operator.pow(left, right)
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if _sized(seq) and isinstance(times, int) and _sized(seq) * times > MAX_VALUE_LEN:
                    raise jinja2.TemplateRuntimeError("repetition builds a value that is too long")
            if isinstance(left, int) and isinstance(right, int):
                if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                    raise jinja2.TemplateRuntimeError("multiplication builds a number too large")
            return operator.mul(left, right)
        if _sized(left) + _sized(right) > MAX_VALUE_LEN:
            raise jinja2.TemplateRuntimeError("concatenation builds a value that is too long")
        return operator.add(left, right)


def _make_environment() -> _ChatSandbox:
    env = _ChatSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols, _GenerationBlock],
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters.update(limits.SAFE_FILTERS)
    env.filters["tojson"] = _tojson
    globals_: dict[str, Callable[..., Any]] = {
        "raise_exception": _raise_exception,
        "strftime_now": _strftime_now,
        "lipsum": _lipsum,
        _GUARD_ITER: limits.guard_iter,
        _CONCAT: limits.concat,
    }
    env.globals.update(globals_)
    return env


_ENV = _make_environment()


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template once; later calls with the same source reuse it.

    Raises ValueError if the template does not parse.
    """
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not parse (line {e.lineno}): {e.message}") from e


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str | None] | None = None,
    max_output_chars: int = MAX_OUTPUT_CHARS,
    **kwargs: Any,
) -> str:
    """Render `source` for a conversation and return the prompt text.

    `messages` are OpenAI-style dicts (`role`, `content`, optionally `tool_calls`, ...).
    `special_tokens` supplies template variables such as `bos_token` and `eos_token`; extra
    `kwargs` (e.g. `enable_thinking`, `documents`) become template variables too.
    Raises ValueError for any template failure or when the output passes `max_output_chars`.
    """
    template = compile_chat_template(source)
    variables: dict[str, Any] = dict(special_tokens or {})
    variables.update(kwargs)
    variables.update(
        messages=[dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        tools=[dict(t) for t in tools] if tools is not None else None,
    )
    parts: list[str] = []
    size = 0
    token = limits.BUDGET.set(Budget())
    try:
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > max_output_chars:
                raise ValueError(f"chat template output is over {max_output_chars} characters")
            parts.append(chunk)
    except ValueError:
        raise
    except jinja2.TemplateError as e:
        raise ValueError(f"chat template failed: {e}") from e
    except Exception as e:  # template bugs surface as TypeError, KeyError, RecursionError, ...
        raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from e
    finally:
        limits.BUDGET.reset(token)
    return "".join(parts)
