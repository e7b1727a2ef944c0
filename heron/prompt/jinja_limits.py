"""The budgets of one Jinja render, and the size checks that run before a value is built.

A chat template is untrusted code, so rendering is bounded three ways:

- **steps and time:** every loop iteration, call, attribute and item lookup ticks the render's
  `Budget`; past `MAX_STEPS` steps or `MAX_RENDER_SECONDS` the render fails. Loops are ticked
  through `guard_iter`, which `jinja.py` wraps around every `{% for %}`'s iterable.
- **memory:** each operation that can build a large string from a small input (`%` and `format`
  widths, `center`/`ljust`/`rjust`/`zfill`/`indent`/`expandtabs`, `replace`, `join`, `~`,
  `wordwrap`, `slice`/`batch` fill, `tojson` indent, `lipsum`) checks the size it would build
  against `MAX_VALUE_LEN` (or the width against `MAX_WIDTH`) before building it.
- **output:** `render_chat_template` stops at its output cap.

Every refusal is a `jinja2.TemplateRuntimeError`, which the renderer turns into a ValueError.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import filters

MAX_VALUE_LEN = 1024 * 1024  # longest string/list one operation may build
MAX_WIDTH = 10_000  # widest field a format, padding or indent may ask for
MAX_ITEMS = 100_000  # most slices or fill items `slice`/`batch` may build
MAX_STEPS = 1_000_000  # loop iterations, calls and lookups in one render
MAX_RENDER_SECONDS = 2.0
_CLOCK_EVERY = 1024  # steps between clock reads


class Budget:
    """The steps and time one render may use; `tick` fails once either runs out."""

    __slots__ = ("steps", "max_steps", "deadline")

    def __init__(self, max_steps: int = MAX_STEPS, seconds: float = MAX_RENDER_SECONDS) -> None:
        self.steps = 0
        self.max_steps = max_steps
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise jinja2.TemplateRuntimeError(f"chat template ran more than {self.max_steps} steps")
        if self.steps % _CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise jinja2.TemplateRuntimeError("chat template ran out of time")


BUDGET: ContextVar[Budget | None] = ContextVar("heron_jinja_budget", default=None)


def tick() -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.tick()


def guard_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """`iterable`, one budget step per item (wrapped around every loop's iterable)."""
    for item in iterable:
        tick()
        yield item


def _refuse(what: str) -> jinja2.TemplateRuntimeError:
    return jinja2.TemplateRuntimeError(f"{what} builds a value that is too long")


def check_len(size: int, what: str) -> None:
    if size > MAX_VALUE_LEN:
        raise _refuse(what)


def check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_WIDTH:
        raise jinja2.TemplateRuntimeError(f"{what} width {width} is over {MAX_WIDTH}")


def concat(*parts: Any) -> str:
    """The `~` operator, refusing a result over `MAX_VALUE_LEN`."""
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    check_len(sum(map(len, texts)), "concatenation")
    return "".join(texts)


# `%`-formatting: %[(key)][flags][width][.precision][length]type
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)


def check_percent_format(fmt: str) -> None:
    """Refuse `%` conversions with a width or precision over `MAX_WIDTH`, or given by `*`."""
    for match in _PERCENT_SPEC.finditer(fmt):
        width, precision, _ = match.groups()
        for value in (width, precision):
            if value == "*":
                raise jinja2.TemplateRuntimeError("'*' widths are not supported in templates")
            if value:
                check_width(int(value), "format")


def percent_format(fmt: str, args: Any) -> str:
    check_percent_format(fmt)
    return str(fmt % args)


_DIGITS = re.compile(r"\d+")


def check_brace_format(fmt: str) -> None:
    """Refuse `str.format` fields whose spec asks for a width or precision over `MAX_WIDTH`,
    or takes it from an argument (`{:{w}}`)."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise jinja2.TemplateRuntimeError(f"bad format string: {exc}") from None
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise jinja2.TemplateRuntimeError("nested format specs are not supported in templates")
        for digits in _DIGITS.findall(spec):
            check_width(int(digits), "format")


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def wrap_str_method(value: Any) -> Callable[..., Any] | None:
    """A size-checked stand-in for a bound `str` method that can build a large string from
    small arguments; None for any other value."""
    owner = getattr(value, "__self__", None)
    name = getattr(value, "__name__", None)
    if not isinstance(owner, str) or not callable(value):
        return None
    if name in _PADDING_METHODS:

        def padded(width: Any = 0, *args: Any) -> Any:
            check_width(width, name)
            return value(width, *args)

        return padded
    if name == "expandtabs":

        def expanded(tabsize: Any = 8) -> Any:
            check_width(tabsize, "expandtabs")
            if isinstance(tabsize, int):
                check_len(len(owner) + owner.count("\t") * tabsize, "expandtabs")
            return value(tabsize)

        return expanded
    if name == "replace":

        def replaced(old: Any, new: Any, count: Any = -1) -> Any:
            check_replace(owner, old, new, count)
            return value(old, new, count)

        return replaced
    if name == "join":

        def joined(items: Iterable[Any]) -> Any:
            items = list(items)
            check_join(owner, items)
            return value(items)

        return joined
    return None


def check_replace(s: str, old: Any, new: Any, count: Any) -> None:
    if not isinstance(old, str) or not isinstance(new, str):
        return
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    check_len(len(s) + hits * max(len(new) - len(old), 0), "replace")


def check_join(sep: str, items: list[Any]) -> None:
    size = len(sep) * max(len(items) - 1, 0)
    size += sum(len(x) for x in items if isinstance(x, str))
    check_len(size, "join")


# ------------------------------------------------------------------------------ filters
def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    if isinstance(value, str):
        check_percent_format(value)
    return filters.do_format(value, *args, **kwargs)


def _center(value: Any, width: Any = 80) -> str:
    check_width(width, "center")
    return filters.do_center(value, width)


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    pad = width if isinstance(width, int) else len(str(width))
    check_width(pad, "indent")
    check_len(len(text) + (text.count("\n") + 1) * pad, "indent")
    return filters.do_indent(text, width, first, blank)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    items = list(value)
    if attribute is None:
        check_join(str(d), items)
    return str(filters.do_join(eval_ctx, items, d, attribute))


@jinja2.pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    check_replace(str(s), old, new, -1 if count is None else count)
    return filters.do_replace(eval_ctx, s, old, new, count)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    if slices > MAX_ITEMS:
        raise jinja2.TemplateRuntimeError(f"slice count {slices} is over {MAX_ITEMS}")
    return filters.do_slice(value, slices, fill_with)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    if linecount > MAX_ITEMS:
        raise jinja2.TemplateRuntimeError(f"batch size {linecount} is over {MAX_ITEMS}")
    return filters.do_batch(value, linecount, fill_with)


@jinja2.pass_environment
def _wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = str(s)
    lines = len(text) // max(width, 1) + sum(text.count(c) for c in " \t\n-") + 1
    check_len(len(text) + lines * len(wrapstring or "\n"), "wordwrap")
    return filters.do_wordwrap(
        environment, text, width, break_long_words, wrapstring, break_on_hyphens
    )


SAFE_FILTERS: dict[str, Callable[..., Any]] = {
    "format": _format,
    "center": _center,
    "indent": _indent,
    "join": _join,
    "replace": _replace,
    "slice": _slice,
    "batch": _batch,
    "wordwrap": _wordwrap,
}
