"""Values and built-in functions of Heron's Go text/template interpreter (see `gotemplate.py`).

Template data is plain Python: None is Go's nil, bool/int/float/str are Go's basic kinds, lists
are slices and dicts are maps (keys visited in sorted order by `range`, `print` and `json`, as
Go does). Three extra types model the Go structs of Ollama's template data: `Record` (a struct
with capitalised fields), `OrderedMap` (a map that keeps insertion order and prints as JSON) and
`JSONList` (a slice that prints as JSON). Nothing here reaches Python attributes.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable
from decimal import Decimal
from typing import Any

MAX_STRING_BYTES = 1 << 20  # longest string any function may build (and the output cap)
MAX_VALUE_DEPTH = 100  # deepest nested value that `print` or `json` will walk
MAX_FORMAT_WIDTH = 100_000  # largest printf width or precision


class TemplateError(ValueError):
    """A Go template failed to parse or to render; the message names the position if known."""


class OrderedMap(dict[str, Any]):
    """A map that `range` and `json` visit in insertion order and that prints as its JSON."""


class JSONList(list[Any]):
    """A slice that prints as its JSON (a Go slice type with a JSON `String` method)."""


class Record:
    """A Go struct: a fixed set of capitalised `fields`.

    `json_value` is what Go's encoding/json makes of it (tags, omitempty and field order
    applied). A `stringer` record prints as that JSON (its Go type has a String method);
    any other record prints as Go's `{field values}`.
    """

    __slots__ = ("fields", "json_value", "stringer")

    def __init__(self, fields: dict[str, Any], json_value: Any, stringer: bool = False) -> None:
        self.fields = fields
        self.json_value = json_value
        self.stringer = stringer

    def __repr__(self) -> str:
        return f"Record({self.fields!r})"


def byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def check_size(text: str) -> str:
    if byte_len(text) > MAX_STRING_BYTES:
        raise TemplateError(f"string longer than {MAX_STRING_BYTES} bytes")
    return text


def truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, slices and maps are false; structs true."""
    if value is None:
        return False
    if isinstance(value, Record):
        return True
    if isinstance(value, bool | int | float | str | list | tuple | dict):
        return bool(value)
    return True


def go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


_TYPE_NAMES: tuple[tuple[Any, str], ...] = (
    (bool, "bool"),
    (int, "int"),
    (float, "float64"),
    (str, "string"),
    (list | tuple, "[]interface {}"),
    (dict, "map[string]interface {}"),
    (Record, "struct"),
)


def _basic_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string" if isinstance(value, str) else None


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(value) and the decimal exponent of the first digit."""
    _sign, digits, exp = Decimal(repr(abs(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    return text, len(text) + int(exp) - 1


def format_float(value: float) -> str:
    """Go's `%v` of a float64: shortest digits, exponent form below 1e-4 or from 1e6."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, exp = _shortest_digits(value)
    sign = "-" if value < 0 else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole = digits[: exp + 1].ljust(exp + 1, "0")
    frac = digits[exp + 1 :]
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _json_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise TemplateError(f"json: unsupported value: {format_float(value)}")
    if value == 0 or 1e-6 <= abs(value) < 1e21:
        return format(Decimal(repr(value)).normalize(), "f")
    return re.sub(r"e-0(\d)$", r"e-\1", repr(value))


def go_json(value: Any, depth: int = 0) -> str:
    """encoding/json's Marshal: compact, map keys sorted, `<`, `>` and `&` escaped."""
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"value nested deeper than {MAX_VALUE_DEPTH}")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char, escape in _JSON_ESCAPES:
            text = text.replace(char, escape)
        return text
    if isinstance(value, Record):
        return go_json(value.json_value, depth + 1)
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(item, depth + 1) for item in value) + "]"
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, OrderedMap) else sorted(value, key=str)
        items = (go_json(str(k)) + ":" + go_json(value[k], depth + 1) for k in keys)
        return "{" + ",".join(items) + "}"
    raise TemplateError(f"json: unsupported type {go_type(value)}")


_JSON_ESCAPES: tuple[tuple[str, str], ...] = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))
_JSON_ESCAPES += (("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def sprint_value(value: Any, depth: int = 0) -> str:
    """fmt's `%v` of one value."""
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"value nested deeper than {MAX_VALUE_DEPTH}")
    if value is None:
        return "<nil>"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, OrderedMap | JSONList) or isinstance(value, Record) and value.stringer:
        return go_json(value, depth)
    if isinstance(value, Record):
        return "{" + " ".join(sprint_value(v, depth + 1) for v in value.fields.values()) + "}"
    if isinstance(value, list | tuple):
        return "[" + " ".join(sprint_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k}:{sprint_value(value[k], depth + 1)}" for k in sorted(value, key=str))
        return "map[" + " ".join(items) + "]"
    return str(value)


def sprint(args: list[Any]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    parts: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            parts.append(" ")
        parts.append(sprint_value(arg))
    return check_size("".join(parts))


def sprintln(args: list[Any]) -> str:
    return check_size(" ".join(sprint_value(a) for a in args) + "\n")


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
    kind = _basic_kind(arg)
    if verb == "v" or verb in "sxX" and isinstance(arg, OrderedMap | JSONList | Record):
        text = sprint_value(arg)
        if verb in "vs":
            return text
        return text.encode().hex().upper() if verb == "X" else text.encode().hex()
    if verb == "s" and kind == "string":
        return arg if prec is None else arg[:prec]
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
        return arg.encode().hex() if verb == "x" else arg.encode().hex().upper()
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
    kind_a, kind_b = _basic_kind(a), _basic_kind(b)
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
    kind_a, kind_b = _basic_kind(a), _basic_kind(b)
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
