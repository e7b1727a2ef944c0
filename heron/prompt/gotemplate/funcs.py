"""Built-in functions of Heron's Go text/template interpreter: `printf` and its verbs,
comparisons, `len`, `index`, `slice`, the escapers and `json`. `and`/`or` live in the
interpreter, which evaluates them lazily."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from .values import (
    JSONList,
    OrderedMap,
    Record,
    TemplateError,
    basic_kind,
    byte_len,
    check_size,
    format_float,
    go_json,
    go_type,
    sprint,
    sprint_value,
    sprintln,
    truth,
)

MAX_FORMAT_WIDTH = 100_000  # largest printf width or precision


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    for char in text:
        if char in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
    return "".join(out) + '"'


_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f"}
_QUOTE_ESCAPES |= {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.?)", re.DOTALL)


def _format_basic(verb: str, flags: str, prec: int | None, arg: Any) -> str | None:
    """One printf verb applied to a basic or stringer value; None when it does not fit."""
    kind = basic_kind(arg)
    if verb == "v" or verb in "sxX" and isinstance(arg, OrderedMap | JSONList | Record):
        text = sprint_value(arg)
        if verb in "vs":
            return text
        return text.encode().hex().upper() if verb == "X" else text.encode().hex()
    if verb == "s" and kind == "string":
        text = str(arg)
        return text if prec is None else text[:prec]
    if verb == "q":
        if kind == "int":
            return "'" + go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'"
        return go_quote(arg) if kind == "string" else None
    if verb == "t":
        return sprint_value(arg) if kind == "bool" else None
    if verb in "dboxXcU" and kind == "int":
        if verb in "cU":
            return chr(arg) if verb == "c" else f"U+{arg:04X}"
        return ("+" if "+" in flags and arg >= 0 else "") + format(
            arg, "d" if verb == "d" else verb
        )
    if verb in "xX" and kind == "string":
        hex_text = str(arg).encode().hex()
        return hex_text if verb == "x" else hex_text.upper()
    if verb in "eEfFgG" and kind == "float":
        if verb in "gG" and prec is None:
            text = format_float(arg)
            return text.upper() if verb == "G" else text
        sign = "+" if "+" in flags else ""
        return format(arg, f"{sign}.{6 if prec is None else prec}{verb}")
    return None


def _format_arg(verb: str, flags: str, width: int, prec: int | None, arg: Any) -> str:
    """One printf verb applied to `arg` (slices and maps element by element, as Go does),
    padded to `width`; a mismatch is written as Go's `%!verb(type=value)`."""
    stringer = isinstance(arg, OrderedMap | JSONList | Record)
    if verb != "v" and not stringer and isinstance(arg, list | tuple | dict):
        parts = [_format_arg(verb, flags, width, prec, item) for item in arg]
        if not isinstance(arg, dict):
            return "[" + " ".join(parts) + "]"
        keys = sorted(arg, key=str)
        pairs = (f"{_format_arg(verb, flags, width, prec, k)}:" for k in keys)
        values = (_format_arg(verb, flags, width, prec, arg[k]) for k in keys)
        return "map[" + " ".join(k + v for k, v in zip(pairs, values, strict=True)) + "]"
    text = _format_basic(verb, flags, prec, arg)
    if text is None:
        return (
            f"%!{verb}(" + ("<nil>" if arg is None else f"{go_type(arg)}={sprint_value(arg)}") + ")"
        )
    if len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    if "0" not in flags or verb not in "dfFeEgGxXbo":
        return text.rjust(width)
    if text[:1] in "+-":
        return text[0] + text[1:].rjust(width - 1, "0")
    return text.rjust(width, "0")


def sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the verbs %v %s %q %d %t %f %e %g %x %X %c %b %o %U and %%,
    with flags `-+0`, width and precision; mismatches are reported inline as Go does."""
    next_arg = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal next_arg
        flags, width_text, prec_text, verb = match.groups()
        if verb == "%":
            return "%"
        if not verb:
            return "%!(NOVERB)"
        width = int(width_text) if width_text else 0
        prec = int(prec_text or "0") if prec_text is not None else None
        if width > MAX_FORMAT_WIDTH or (prec or 0) > MAX_FORMAT_WIDTH:
            raise TemplateError(f"printf width or precision over {MAX_FORMAT_WIDTH}")
        if next_arg >= len(args):
            return f"%!{verb}(MISSING)"
        next_arg += 1
        return check_size(_format_arg(verb, flags, width, prec, args[next_arg - 1]))

    out = _VERB_RE.sub(replace, fmt)
    if next_arg < len(args):
        extra = ", ".join(f"{go_type(a)}={sprint_value(a)}" for a in args[next_arg:])
        out += f"%!(EXTRA {extra})"
    return check_size(out)


def _args_text(args: list[Any]) -> str:
    return args[0] if len(args) == 1 and isinstance(args[0], str) else sprint(args)


def html_escape(args: list[Any]) -> str:
    text = _args_text(args)
    for char, escape in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escape)
    return check_size(text.replace('"', "&#34;").replace("\0", "\ufffd"))


def js_escape(args: list[Any]) -> str:
    out: list[str] = []
    for char in _args_text(args):
        code = ord(char)
        if char in _JS_ESCAPES:
            out.append(_JS_ESCAPES[char])
        elif code < 0x20 or code >= 0x80 and not char.isprintable():
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    return check_size("".join(out))


_JS_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E"}
_JS_ESCAPES |= {"&": "\\u0026", "=": "\\u003D"}


def _arity(name: str, args: list[Any], low: int, high: int | None = None) -> None:
    if len(args) < low or (high is not None and len(args) > high):
        want = f"at least {low}" if high is None else str(low)
        raise TemplateError(f"wrong number of args for {name}: want {want} got {len(args)}")


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    kind_a, kind_b = basic_kind(a), basic_kind(b)
    if kind_a is None or kind_b is None:
        raise TemplateError("non-comparable type")
    if kind_a != kind_b:
        raise TemplateError("incompatible types for comparison")
    return bool(a == b)


def _eq(args: list[Any]) -> bool:
    if len(args) < 2:
        raise TemplateError("missing argument for comparison")
    return any(_equal(args[0], b) for b in args[1:])


def _less(args: list[Any], or_equal: bool) -> bool:
    _arity("comparison", args, 2, 2)
    a, b = args
    kind_a, kind_b = basic_kind(a), basic_kind(b)
    if kind_a not in ("int", "float", "string") or kind_b not in ("int", "float", "string"):
        raise TemplateError("invalid type for comparison")
    if kind_a != kind_b:
        raise TemplateError("incompatible types for comparison")
    return bool(a <= b) if or_equal else bool(a < b)


def _len(args: list[Any]) -> int:
    _arity("len", args, 1, 1)
    value = args[0]
    if isinstance(value, str):
        return byte_len(value)
    if isinstance(value, list | tuple | dict):
        return len(value)
    raise TemplateError(f"len of {'nil pointer' if value is None else 'type ' + go_type(value)}")


def _int_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"cannot index slice/array with type {go_type(value)}")
    return value


def _index(args: list[Any]) -> Any:
    _arity("index", args, 1)
    item = args[0]
    for key in args[1:]:
        if isinstance(item, list | tuple | str):
            seq = item.encode() if isinstance(item, str) else item
            i = _int_index(key)
            if not 0 <= i < len(seq):
                raise TemplateError(f"index out of range: {i}")
            item = seq[i]
        elif isinstance(item, dict):
            if not isinstance(key, str):
                raise TemplateError(f"value has type {go_type(key)}; should be string")
            item = item.get(key)
        else:
            raise TemplateError(f"can't index item of type {go_type(item)}")
    return item


def _slice(args: list[Any]) -> Any:
    _arity("slice", args, 1, 4)
    item, bounds = args[0], [_int_index(i) for i in args[1:]]
    if not isinstance(item, list | tuple | str):
        raise TemplateError(f"can't slice item of type {go_type(item)}")
    if isinstance(item, str) and len(bounds) == 3:
        raise TemplateError("cannot 3-index slice a string")
    seq = item.encode() if isinstance(item, str) else list(item)
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(seq)
    limit = bounds[2] if len(bounds) > 2 else len(seq)
    if not 0 <= start <= stop <= limit <= len(seq):
        raise TemplateError(f"index out of range: {bounds}")
    part = seq[start:stop]
    return part.decode(errors="replace") if isinstance(part, bytes) else part


def _printf(args: list[Any]) -> str:
    _arity("printf", args, 1)
    if not isinstance(args[0], str):
        raise TemplateError(f"wrong type for value; expected string; got {go_type(args[0])}")
    return sprintf(args[0], args[1:])


def _not(args: list[Any]) -> bool:
    _arity("not", args, 1, 1)
    return not truth(args[0])


def _ne(args: list[Any]) -> bool:
    _arity("ne", args, 2, 2)
    return not _equal(args[0], args[1])


def _json(args: list[Any]) -> str:
    _arity("json", args, 1, 1)
    return check_size(go_json(args[0]))


# `and` and `or` are evaluated lazily by the executor, so they are not in this table.
FUNCS: dict[str, Callable[[list[Any]], Any]] = {
    "eq": _eq,
    "ne": _ne,
    "lt": lambda args: _less(args, False),
    "le": lambda args: _less(args, True),
    "gt": lambda args: _less(args[::-1], False),
    "ge": lambda args: _less(args[::-1], True),
    "not": _not,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": sprint,
    "printf": _printf,
    "println": sprintln,
    "html": html_escape,
    "js": js_escape,
    "urlquery": lambda args: check_size(urllib.parse.quote_plus(_args_text(args), safe="")),
    "json": _json,
}
