"""Parser of Heron's Go text/template interpreter (see `interpreter.py`): the lexer (trim
markers, comments, string/number/char literals) and a recursive-descent parser that checks
variables, functions, `break`/`continue` placement and the nesting cap."""

from __future__ import annotations

import re
from typing import Any

from .funcs import FUNCS
from .nodes import (
    Action,
    Arg,
    Branch,
    Cmd,
    Field,
    Func,
    Jump,
    Lit,
    Node,
    Pipe,
    Range,
    Sub,
    Text,
    Var,
)
from .values import TemplateError

MAX_DEPTH = 100  # nested control structures and parentheses


# (kind, value, position, preceded by space); kinds: lit (with its Python value), field, var,
# dot, ident (function), kw (keyword), the punctuation ( ) | , := = themselves, eoa (end)
Token = tuple[str, Any, int, bool]
_SPACE = " \t\r\n"
_KEYWORDS = frozenset("if else end range with break continue define template block".split())
_CONSTANTS = {"true": True, "false": False, "nil": None}
_WORD_RE = re.compile(r"[^\W\d]\w*")
_FIELD_RE = re.compile(r"\.([^\W\d]\w*)")
_VAR_RE = re.compile(r"\$\w*")
_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)(?![\w.])"
)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_HEX_LEN = {"x": 2, "u": 4, "U": 8}


def error_at(source: str, pos: int, message: str) -> TemplateError:
    line = source.count("\n", 0, pos) + 1
    col = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return TemplateError(f"template: line {line}, col {col}: {message}")


def _right_delim(source: str, pos: int) -> tuple[int, bool] | None:
    """End of an action at `pos`: (position after it, trims following space) or None."""
    if source.startswith("}}", pos):
        return pos + 2, False
    if source[pos : pos + 1] in tuple(_SPACE) and source.startswith("-}}", pos + 1):
        return pos + 4, True
    return None


def _unquote(source: str, pos: int, quote: str) -> tuple[str, int]:
    out: list[str] = []
    i = pos + 1
    while True:
        char = source[i : i + 1]
        if char in ("", "\n"):
            raise error_at(source, pos, "unterminated quoted string")
        if char == quote:
            return "".join(out), i + 1
        if char != "\\":
            out.append(char)
            i += 1
            continue
        esc = source[i + 1 : i + 2]
        if esc in _ESCAPES or esc in ("\\", quote):
            out.append(_ESCAPES.get(esc, esc))
            i += 2
        elif esc and esc in "xuU01234567":
            hexadecimal = esc in _HEX_LEN
            start, size = (i + 2, _HEX_LEN[esc]) if hexadecimal else (i + 1, 3)
            digits = source[start : start + size]
            pattern = f"[0-9a-fA-F]{{{size}}}" if hexadecimal else "[0-7]{3}"
            code = int(digits, 16 if hexadecimal else 8) if re.fullmatch(pattern, digits) else -1
            if not 0 <= code <= 0x10FFFF:
                raise error_at(source, i, "invalid escape in quoted string")
            out.append(chr(code))
            i = start + size
        else:
            raise error_at(source, i, "invalid escape in quoted string")


def _number(source: str, text: str, pos: int) -> int | float:
    plain = text.replace("_", "")
    body = plain.lstrip("+-")
    try:
        if body[:2].lower() in ("0x", "0o", "0b"):
            return int(plain, 0)
        if any(c in body for c in ".eE"):
            return float(plain)
        return int(plain, 8) if len(body) > 1 and body[0] == "0" else int(plain)
    except ValueError:
        raise error_at(source, pos, f"bad number syntax: {text!r}") from None


def _lex_action(source: str, pos: int, start: int) -> tuple[list[Token], int, bool]:
    """Tokens of the action whose body starts at `pos`; returns (tokens, end, trim right)."""
    tokens: list[Token] = []
    spaced = True
    while True:
        end = _right_delim(source, pos)
        if end is not None:
            return tokens, end[0], end[1]
        if pos >= len(source):
            raise error_at(source, start, "unclosed action")
        char, at = source[pos], pos
        value: Any = None
        if char in _SPACE:
            pos, spaced = pos + 1, True
            continue
        if source.startswith(":=", pos):
            kind, pos = ":=", pos + 2
        elif char in "()|,=":
            kind, pos = char, pos + 1
        elif char in "\"'":
            kind, (value, pos) = "lit", _unquote(source, pos, char)
            if char == "'":
                if len(value) != 1:
                    raise error_at(source, at, "malformed character constant")
                value = ord(value)
        elif char == "`":
            close = source.find("`", pos + 1)
            if close < 0:
                raise error_at(source, at, "unterminated raw quoted string")
            kind, value, pos = "lit", source[pos + 1 : close].replace("\r", ""), close + 1
        elif match := _VAR_RE.match(source, pos):
            kind, value, pos = "var", match.group(), match.end()
        elif match := _FIELD_RE.match(source, pos):
            kind, value, pos = "field", match.group(1), match.end()
        elif match := _NUMBER_RE.match(source, pos):
            kind, value, pos = "lit", _number(source, match.group(), pos), match.end()
        elif char == ".":
            kind, pos = "dot", pos + 1
        elif match := _WORD_RE.match(source, pos):
            value, pos = match.group(), match.end()
            kind = "kw" if value in _KEYWORDS else "ident"
            if value in _CONSTANTS:
                kind, value = "lit", _CONSTANTS[value]
        else:
            raise error_at(source, at, f"bad character {char!r} in action")
        tokens.append((kind, value, at, spaced))
        spaced = False


def _scan(source: str) -> list[Text | tuple[list[Token], int]]:
    """Split the source into text and actions, applying trim markers and dropping comments."""
    items: list[Text | tuple[list[Token], int]] = []
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                items.append(Text(text))
            return items
        body = start + 2
        if source[body : body + 1] == "-" and source[body + 1 : body + 2] in tuple(_SPACE):
            text, body = text.rstrip(_SPACE), body + 2
        if text:
            items.append(Text(text))
        if source.startswith("/*", body):
            close = source.find("*/", body + 2)
            end = None if close < 0 else _right_delim(source, close + 2)
            if end is None:
                raise error_at(source, start, "unclosed comment")
            pos, trim_next = end
            continue
        tokens, pos, trim_next = _lex_action(source, body, start)
        items.append((tokens, start))


class Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items = _scan(source)
        self.index = 0  # next item
        self.tokens: list[Token] = []  # the current action
        self.at = 0  # next token of the current action
        self.pos = 0  # the current action's position
        self.vars = ["$"]
        self.depth = 0
        self.loops = 0

    def fail(self, message: str, pos: int | None = None) -> TemplateError:
        return error_at(self.source, self.pos if pos is None else pos, message)

    def peek(self) -> Token:
        if self.at < len(self.tokens):
            return self.tokens[self.at]
        return ("eoa", None, self.pos, True)

    def next(self) -> Token:
        token = self.peek()
        self.at += 1
        return token

    def expect_end(self, context: str) -> None:
        kind, value, pos, _ = self.peek()
        if kind != "eoa":
            raise self.fail(
                f"unexpected {value if value is not None else kind!r} in {context}", pos
            )

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH}")

    def parse(self) -> tuple[Node, ...]:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.fail(f"unexpected {{{{{stop}}}}}")
        return nodes

    def parse_list(self) -> tuple[tuple[Node, ...], str | None]:
        """Nodes up to an `{{else}}` or `{{end}}` (returned, its action current) or the end."""
        nodes: list[Node] = []
        while self.index < len(self.items):
            item = self.items[self.index]
            self.index += 1
            if isinstance(item, Text):
                nodes.append(item)
                continue
            self.tokens, self.pos = item
            self.at = 0
            kind, value, pos, _ = self.peek()
            if kind != "kw":
                pipe = self.parse_pipe("command")
                self.expect_end("command")
                nodes.append(Action(pipe))
            elif value in ("else", "end"):
                return tuple(nodes), value
            elif value in ("if", "with", "range"):
                self.enter()
                mark = len(self.vars)
                nodes.append(self.parse_range() if value == "range" else self.parse_branch())
                del self.vars[mark:]
                self.depth -= 1
            elif value in ("break", "continue"):
                if not self.loops:
                    raise self.fail(f"{{{{{value}}}}} outside {{{{range}}}}")
                self.next()
                self.expect_end(value)
                nodes.append(Jump(value))
            else:
                raise self.fail(f"{{{{{value}}}}} is not supported")
        return tuple(nodes), None

    def parse_body(self, context: str) -> tuple[tuple[Node, ...], str]:
        start = self.pos
        nodes, stop = self.parse_list()
        if stop is None:
            raise self.fail(f"unexpected EOF: missing {{{{end}}}} for {{{{{context}}}}}", start)
        self.next()
        return nodes, stop

    def parse_branch(self) -> Branch:
        arms: list[tuple[str, Pipe, tuple[Node, ...]]] = []
        while True:
            kind = self.next()[1]
            pipe = self.parse_pipe(kind)
            self.expect_end(kind)
            body, stop = self.parse_body(kind)
            arms.append((kind, pipe, body))
            if stop == "end":
                self.expect_end("end")
                return Branch(tuple(arms), ())
            if self.peek()[:2] != ("kw", arms[0][0]):  # `else if` in if, `else with` in with
                self.expect_end("else")
                orelse, stop = self.parse_body(kind)
                if stop != "end":
                    raise self.fail("expected {{end}}; found {{else}}")
                self.expect_end("end")
                return Branch(tuple(arms), orelse)

    def parse_range(self) -> Range:
        self.next()
        pipe = self.parse_pipe("range", range_decl=True)
        if pipe.assign:
            raise self.fail("range can't assign with =", pipe.pos)
        self.expect_end("range")
        self.loops += 1
        body, stop = self.parse_body("range")
        self.loops -= 1
        orelse: tuple[Node, ...] = ()
        if stop == "else":
            self.expect_end("else")
            orelse, stop = self.parse_body("range")
            if stop != "end":
                raise self.fail("expected {{end}}; found {{else}}")
        self.expect_end("end")
        return Range(pipe, body, orelse)

    def parse_pipe(self, context: str, range_decl: bool = False) -> Pipe:
        pos = self.peek()[2]
        decl: tuple[str, ...] = ()
        assign = False
        kinds = [t[0] for t in self.tokens[self.at : self.at + 4]]
        if kinds[:2] in (["var", ":="], ["var", "="]):
            decl, assign = (self.next()[1],), self.next()[0] == "="
        elif kinds[:4] == ["var", ",", "var", ":="] and range_decl:
            first, _, second, _ = (self.next() for _ in range(4))
            decl = (first[1], second[1])
        elif kinds[:2] == ["var", ","]:
            raise self.fail("too many declarations in command", pos)
        if assign and decl[0] not in self.vars:
            raise self.fail(f"undefined variable {decl[0]!r}", pos)
        cmds = [self.parse_cmd(context)]
        while self.peek()[0] == "|":
            self.next()
            cmds.append(self.parse_cmd(context))
        if not assign:
            self.vars.extend(decl)
        return Pipe(decl, assign, tuple(cmds), pos)

    def parse_cmd(self, context: str) -> Cmd:
        pos = self.peek()[2]
        args: list[Arg] = []
        while self.peek()[0] not in ("eoa", "|", ")"):
            args.append(self.parse_operand())
        if not args:
            raise self.fail(f"missing value for {context}", pos)
        if args[0] == Lit(None):
            raise self.fail("nil is not a command", pos)
        return Cmd(tuple(args), pos)

    def chain(self) -> tuple[str, ...]:
        names: list[str] = []
        while self.peek()[0] == "field" and not self.peek()[3]:
            names.append(self.next()[1])
        return tuple(names)

    def parse_operand(self) -> Arg:
        kind, value, pos, _ = self.next()
        if kind == "field":
            return Field((value, *self.chain()))
        if kind == "dot":
            return Field(())
        if kind == "var":
            if value not in self.vars:
                raise self.fail(f"undefined variable {value!r}", pos)
            return Var(value, self.chain())
        if kind == "ident":
            if value not in FUNCS and value not in ("and", "or"):
                raise self.fail(f"function {value!r} not defined", pos)
            return Func(value)
        if kind == "lit":
            if self.peek()[0] == "field" and not self.peek()[3]:
                raise self.fail("unexpected . after term", self.peek()[2])
            return Lit(value)
        if kind == "(":
            self.enter()
            pipe = self.parse_pipe("parenthesized pipeline")
            if self.next()[0] != ")":
                raise self.fail("unclosed left paren", pos)
            self.depth -= 1
            return Sub(pipe, self.chain())
        raise self.fail(f"unexpected {value if value is not None else kind!r} in operand", pos)


def parse(source: str) -> tuple[Node, ...]:
    return Parser(source).parse()
