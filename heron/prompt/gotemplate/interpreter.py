"""Heron's interpreter for Go text/template: executes what `parse.py` builds.

The package docstring (`heron/prompt/gotemplate/__init__.py`) lists the supported syntax and
the caps. Every failure, syntax or runtime, is a `TemplateError` (a ValueError) naming the line
and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from .funcs import FUNCS
from .nodes import Action, Arg, Branch, Cmd, Field, Func, Lit, Node, Pipe, Range, Sub, Text, Var
from .parse import error_at, parse
from .values import (
    MAX_STRING_BYTES,
    OrderedMap,
    Record,
    TemplateError,
    byte_len,
    go_type,
    sprint_value,
    truth,
)

MAX_SOURCE_BYTES = 64 * 1024
MAX_OUTPUT_BYTES = MAX_STRING_BYTES
MAX_ITERATIONS = 100_000  # range iterations in one render
MAX_STEPS = 2_000_000  # nodes and commands evaluated in one render


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_NO_VALUE: Any = object()  # no piped-in value


class _Exec:
    def __init__(self, source: str, data: Any) -> None:
        self.source = source
        self.out: list[str] = []
        self.size = 0
        self.iterations = 0
        self.steps = 0
        self.vars: list[list[Any]] = [["$", data]]

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"template evaluated more than {MAX_STEPS} steps")

    def write(self, text: str) -> None:
        self.size += byte_len(text)
        if self.size > MAX_OUTPUT_BYTES:
            raise TemplateError(f"template output longer than {MAX_OUTPUT_BYTES} bytes")
        self.out.append(text)

    def walk(self, nodes: Iterable[Node], dot: Any) -> None:
        for node in nodes:
            self.step()
            if isinstance(node, Text):
                self.write(node.text)
            elif isinstance(node, Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.write("<no value>" if value is None else self.show(value, node.pipe.pos))
            elif isinstance(node, Branch):
                self.branch(node, dot)
            elif isinstance(node, Range):
                self.range(node, dot)
            else:
                raise _Break() if node.kind == "break" else _Continue()

    def show(self, value: Any, pos: int) -> str:
        try:
            return sprint_value(value)
        except TemplateError as exc:
            raise error_at(self.source, pos, str(exc)) from None

    def branch(self, node: Branch, dot: Any) -> None:
        mark = len(self.vars)
        try:
            for kind, pipe, body in node.arms:
                value = self.pipe(pipe, dot)
                if truth(value):
                    self.walk(body, value if kind == "with" else dot)
                    return
            self.walk(node.orelse, dot)
        finally:
            del self.vars[mark:]

    def items(self, value: Any, pos: int) -> Iterator[tuple[Any, Any]]:
        if value is None:
            return iter(())
        if isinstance(value, list | tuple):
            return enumerate(value)
        if isinstance(value, dict):
            keys = list(value) if isinstance(value, OrderedMap) else sorted(value, key=str)
            return ((k, value[k]) for k in keys)
        if isinstance(value, int) and not isinstance(value, bool):
            return ((i, i) for i in range(value))
        raise error_at(self.source, pos, f"range can't iterate over {sprint_value(value)}")

    def range(self, node: Range, dot: Any) -> None:
        mark = len(self.vars)
        value = self.pipe(node.pipe, dot, declare=False)
        self.vars.extend([name, value] for name in node.pipe.decl)
        ran = False
        try:
            for key, elem in self.items(value, node.pipe.pos):
                self.iterations += 1
                if self.iterations > MAX_ITERATIONS:
                    raise TemplateError(f"template ran more than {MAX_ITERATIONS} iterations")
                ran = True
                if len(node.pipe.decl) == 2:
                    self.vars[mark][1] = key
                if node.pipe.decl:
                    self.vars[mark + len(node.pipe.decl) - 1][1] = elem
                inner = len(self.vars)
                try:
                    self.walk(node.body, elem)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del self.vars[inner:]
            if not ran:
                self.walk(node.orelse, dot)
        finally:
            del self.vars[mark:]

    def pipe(self, pipe: Pipe, dot: Any, declare: bool = True) -> Any:
        value = _NO_VALUE
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        if declare and pipe.assign:
            self.var(pipe.decl[0], pipe.pos)[1] = value
        elif declare and pipe.decl:
            self.vars.append([pipe.decl[0], value])
        return value

    def var(self, name: str, pos: int) -> list[Any]:
        for entry in self.vars[::-1]:
            if entry[0] == name:
                return entry
        raise error_at(self.source, pos, f"undefined variable {name!r}")

    def command(self, cmd: Cmd, dot: Any, final: Any) -> Any:
        self.step()
        first = cmd.args[0]
        if isinstance(first, Func):
            return self.call(first.name, cmd.args[1:], dot, final, cmd.pos)
        if len(cmd.args) > 1 or final is not _NO_VALUE:
            raise error_at(self.source, cmd.pos, "can't give argument to non-function")
        return self.arg(first, dot, cmd.pos)

    def arg(self, arg: Arg, dot: Any, pos: int) -> Any:
        if isinstance(arg, Field):
            return self.fields(dot, arg.names, pos)
        if isinstance(arg, Var):
            return self.fields(self.var(arg.name, pos)[1], arg.names, pos)
        if isinstance(arg, Lit):
            return arg.value
        if isinstance(arg, Func):
            return self.call(arg.name, (), dot, _NO_VALUE, pos)
        return self.fields(self.pipe(arg.pipe, dot), arg.names, pos)

    def fields(self, value: Any, names: tuple[str, ...], pos: int) -> Any:
        for name in names:
            if isinstance(value, dict):
                value = value.get(name)
            elif value is None:
                raise error_at(self.source, pos, f"nil pointer evaluating interface {{}}.{name}")
            elif isinstance(value, Record) and name in value.fields:
                value = value.fields[name]
            else:
                message = f"can't evaluate field {name} in type {go_type(value)}"
                raise error_at(self.source, pos, message)
        return value

    def call(self, name: str, args: tuple[Arg, ...], dot: Any, final: Any, pos: int) -> Any:
        if name in ("and", "or"):
            count = len(args) + (final is not _NO_VALUE)
            if not count:
                raise error_at(
                    self.source, pos, f"wrong number of args for {name}: want at least 1"
                )
            for i, arg in enumerate(args):
                value = self.arg(arg, dot, pos)
                if i == count - 1 or truth(value) == (name == "or"):
                    return value
            return final
        values = [self.arg(arg, dot, pos) for arg in args]
        if final is not _NO_VALUE:
            values.append(final)
        try:
            return FUNCS[name](values)
        except (ValueError, TypeError, OverflowError) as exc:
            raise error_at(self.source, pos, f"error calling {name}: {exc}") from None


def render_nodes(source: str, nodes: tuple[Node, ...], data: Any) -> str:
    """Execute parsed `nodes` of `source` (for error positions) with `data` as dot and `$`."""
    run = _Exec(source, data)
    try:
        run.walk(nodes, data)
    except RecursionError:
        raise TemplateError("template nested too deeply") from None
    return "".join(run.out)


def _names(nodes: Iterable[Node | Pipe | Arg]) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, Var):
            yield node.name
        if isinstance(node, Field | Var | Sub):
            yield from node.names
        if isinstance(node, Sub):
            yield from _names((node.pipe,))
        elif isinstance(node, Pipe):
            yield from _names(arg for cmd in node.cmds for arg in cmd.args)
        elif isinstance(node, Action):
            yield from _names((node.pipe,))
        elif isinstance(node, Branch):
            for _, pipe, body in node.arms:
                yield from _names((pipe, *body))
            yield from _names(node.orelse)
        elif isinstance(node, Range):
            yield from _names((node.pipe, *node.body, *node.orelse))


class GoTemplate:
    """A parsed Go template; `render` may be called any number of times (it keeps no state)."""

    __slots__ = ("source", "nodes")

    def __init__(self, source: str) -> None:
        if byte_len(source) > MAX_SOURCE_BYTES:
            raise TemplateError(f"template source longer than {MAX_SOURCE_BYTES} bytes")
        self.source = source
        self.nodes = parse(source)

    def render(self, data: dict[str, Any]) -> str:
        """Execute with `data` as dot and `$`; missing map keys print as `<no value>`."""
        return render_nodes(self.source, self.nodes, data)

    def identifiers(self) -> set[str]:
        """Field and variable names the template mentions, lower-cased (`$.Messages` gives
        `$` and `messages`); Ollama picks its data model from these."""
        return {name.lower() for name in _names(self.nodes)}


_ACTION_RE = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)
_GO_REF_RE = re.compile(r"(?:^|[\s(|,])(?:\.[^\W\d]|\.(?=[\s)]|$)|\$)")


def is_go_template(source: str) -> bool:
    """Whether `source` looks like a Go template rather than Jinja: no `{%` and some action
    that refers to dot, a field (`.System`) or a variable (`$`, `$.Messages`)."""
    if "{%" in source:
        return False
    return any(_GO_REF_RE.search(m.group(1).strip()) for m in _ACTION_RE.finditer(source))
