"""Syntax tree of Heron's Go text/template interpreter: what `parse.py` builds and
`interpreter.py` walks. Nodes are frozen, so a parsed template can be shared and rendered
any number of times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class Field:  # .A.B on dot; no names is dot itself
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Var:  # $x.A.B
    name: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lit:  # string, number, bool; None is `nil`
    value: Any


@dataclass(frozen=True, slots=True)
class Func:
    name: str


@dataclass(frozen=True, slots=True)
class Sub:  # (pipeline).A.B
    pipe: Pipe
    names: tuple[str, ...]


Arg: TypeAlias = "Field | Var | Lit | Func | Sub"


@dataclass(frozen=True, slots=True)
class Cmd:
    args: tuple[Arg, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Pipe:
    decl: tuple[str, ...]  # declared or assigned variables
    assign: bool  # `=` rather than `:=`
    cmds: tuple[Cmd, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe


@dataclass(frozen=True, slots=True)
class Branch:  # if/with, each `else if`/`else with` one more arm: (kind, pipe, body)
    arms: tuple[tuple[str, Pipe, tuple[Node, ...]], ...]
    orelse: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Range:
    pipe: Pipe
    body: tuple[Node, ...]
    orelse: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Jump:  # break / continue
    kind: str


Node: TypeAlias = "Text | Action | Branch | Range | Jump"
