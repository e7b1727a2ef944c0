"""Values of Heron's Go text/template interpreter and how Go prints them (`%v`, JSON).

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
from decimal import Decimal
from typing import Any

MAX_STRING_BYTES = 1 << 20  # longest string any function may build (and the output cap)
MAX_VALUE_DEPTH = 100  # deepest nested value that `print` or `json` will walk


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


def basic_kind(value: Any) -> str | None:
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
