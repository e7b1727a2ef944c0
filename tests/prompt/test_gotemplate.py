"""Go text/template interpreter for Ollama Modelfile TEMPLATEs: syntax, functions, Go's value
printing, caps and errors (Ollama's prompt data is in test_gotemplate_ollama.py).

Expected strings are derived by hand from Go's text/template rules; while writing them they
were also checked against Go's own text/template (for the features its 1.19 release has)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from heron.prompt.gotemplate import GoTemplate, TemplateError, interpreter


def render(source: str, data: dict[str, Any] | None = None) -> str:
    return GoTemplate(source).render(data or {})


# --- syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain text, } and { alone", "plain text, } and { alone"),
        ("a {{- ` ` -}} c", "a c"),
        ("a  {{- 1}}  b {{2 -}}  c", "a1  b 2c"),
        ("x\n\t {{- 1 -}} \n\ty", "x1y"),
        ("{{ 1 -}}   \n   {{- 2 }}", "12"),
        ("{{-\t1\t-}} x", "1x"),
        ("a {{/* note */}} b", "a  b"),
        ("a {{- /* note */ -}} b", "ab"),
        ("a {{/* multi\nline */}}b", "a b"),
        ("{{- if true -}}\n  yes\n{{- else -}}\n  no\n{{- end }}", "yes"),
        ("}}{{ `}}` }}{{ `{{` }}", "}}}}{{"),
    ],
)
def test_text_trim_markers_and_comments(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ "tab\\t\\"q\\" \\x41\\u00e9\\101\\\\" }}', 'tab\t"q" A\u00e9A\\'),
        ("{{ `raw \\n {{ }}` }}", "raw \\n {{ }}"),
        (
            "{{ 1 }} {{ -2 }} {{ +3 }} {{ 0x1F }} {{ 010 }} {{ 0b11 }} {{ 1_000 }}",
            "1 -2 3 31 8 3 1000",
        ),
        # Go's %v of a float64: shortest digits, exponent form from 1e6 and below 1e-4.
        (
            "{{ 1.5 }} {{ 2.50 }} {{ .5 }} {{ 1e3 }} {{ 1e6 }} {{ 1e-5 }} {{ 0.0001 }}",
            "1.5 2.5 0.5 1000 1e+06 1e-05 0.0001",
        ),
        ("{{ 'a' }} {{ '\\n' }}", "97 10"),
        ("{{ true }} {{ false }}", "true false"),
    ],
)
def test_literals(source: str, expected: str) -> None:
    assert render(source) == expected


def test_fields_variables_and_missing_keys() -> None:
    data = {"A": "x", "B": {"C": "y", "D": {"E": "z"}}, "N": None, "L": ["p", "q"]}
    assert render("{{ .A }}|{{ .B.C }}|{{ .B.D.E }}|{{ $.B.C }}", data) == "x|y|z|y"
    # A missing map key (or a null value) prints as Go's "<no value>"; `print` shows <nil>.
    assert render("{{ .Missing }}|{{ .N }}|{{ print .Missing }}", data) == (
        "<no value>|<no value>|<nil>"
    )
    assert render("{{ $x := .A }}{{ $x }}{{ $x = .B.C }}{{ $x }}{{ $y := $x }}{{ $y }}", data) == (
        "xyy"
    )
    assert render("{{ $b := .B }}{{ $b.D.E }}{{ (index .L 1) }}{{ (.B).C }}", data) == "zqy"
    # Declarations print nothing; variables declared in a block end with it.
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ end }}{{ $x }}") == "2"
    assert render("{{ with $v := .A }}{{ $v }}{{ . }}{{ end }}", data) == "xx"


def test_if_else_if_with_and_truthiness() -> None:
    source = "{{ if .A }}a{{ else if .B }}b{{ else if .C }}c{{ else }}none{{ end }}"
    assert render(source, {"A": 1}) == "a"
    assert render(source, {"A": 0, "B": "x"}) == "b"
    assert render(source, {"A": "", "B": [], "C": {"k": 1}}) == "c"
    assert render(source, {"A": False, "B": {}, "C": 0.0}) == "none"
    assert render(source, {}) == "none"
    with_source = "{{ with .A }}[{{ .K }}]{{ else with .B }}({{ . }}){{ else }}-{{ end }}"
    assert render(with_source, {"A": {"K": "v"}}) == "[v]"
    assert render(with_source, {"A": {}, "B": "b"}) == "(b)"
    assert render(with_source, {}) == "-"


def test_range() -> None:
    data = {"L": ["a", "b"], "E": [], "M": {"b": "2", "a": "1", "c": "3"}}
    assert render("{{ range .L }}[{{ . }}]{{ else }}empty{{ end }}", data) == "[a][b]"
    assert render("{{ range .E }}x{{ else }}empty{{ end }}{{ range .Nope }}x{{ end }}", data) == (
        "empty"
    )
    assert render("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", data) == "0=a;1=b;"
    assert render("{{ range $v := .L }}{{ $v }}{{ end }}", data) == "ab"
    # Maps are visited in sorted key order; one variable gets the value.
    assert render("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", data) == "a=1;b=2;c=3;"
    assert render("{{ range .M }}{{ . }}{{ end }}", data) == "123"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    # `$` stays the root inside a range; `.` is the element.
    assert render("{{ range .L }}{{ . }}{{ len $.L }}{{ end }}", data) == "a2b2"
    nested = {"G": [{"Items": ["a", "b"]}, {"Items": ["c"]}]}
    source = "{{ range $i, $g := .G }}{{ range $g.Items }}{{ $i }}{{ . }}{{ end }}{{ end }}"
    assert render(source, nested) == "0a0b1c"


def test_break_and_continue() -> None:
    source = (
        '{{ range .L }}{{ if eq . "b" }}{{ continue }}{{ end }}'
        '{{ if eq . "d" }}{{ break }}{{ end }}{{ . }}{{ end }}.'
    )
    assert render(source, {"L": ["a", "b", "c", "d", "e"]}) == "ac."


def test_pipelines_and_parentheses() -> None:
    data = {"A": "hi", "L": [1, 2, 3]}
    assert render('{{ .A | printf "%s!" }}', data) == "hi!"
    assert render('{{ "x" | printf "%s-%s" "y" }}', data) == "y-x"  # piped value goes last
    assert render('{{ .A | len | printf "%d chars" }}', data) == "2 chars"
    assert render("{{ len (slice .L 1) }} {{ eq (len .L) 3 }}", data) == "2 true"
    assert render('{{ (printf "%s" .A) }}', data) == "hi"


# --- functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            '{{ eq 1 1 }} {{ eq 1 2 3 1 }} {{ eq "a" "b" }} {{ eq .R "user" "system" }}',
            "true true false true",
        ),
        (
            "{{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 2.5 }} {{ ge `b` `a` }}",
            "true true true false true",
        ),
        ("{{ eq .Missing `x` }} {{ eq nil nil }} {{ ne .Missing `x` }}", "false true true"),
        (
            '{{ and 1 0 }} {{ and 1 "x" }} {{ or 0 "" }} {{ or 0 3 }} {{ not 0 }} {{ not .R }}',
            "0 x  3 true false",
        ),
        ("{{ and false (index .L 9) }} {{ or true (index .L 9) }}", "false true"),  # lazy
        ('{{ "x" | and 1 }} {{ 0 | or "" }}', "x 0"),
        ('{{ len "héllo" }} {{ len .L }} {{ len .M }}', "6 1 1"),  # len counts bytes, as Go
        (
            '{{ index .L 0 }} {{ index .M "k" }} {{ index .M "zz" }} {{ index .D "a" "b" }}',
            "z v <no value> deep",
        ),
        (
            "{{ slice .S 1 3 }} {{ slice .S 2 }} {{ slice .L 0 1 }} {{ slice .S }}",
            "el llo [z] hello",
        ),
        (
            '{{ print 1 2 "a" 3 "b" "c" }}|{{ println 1 "a" }}|{{ print nil true 1.5 }}',
            "1 2a3bc|1 a\n|<nil> true 1.5",
        ),
        ("{{ html `<a href='x'>&\"</a>` }}", "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"),
        ('{{ js `it\'s <b> & = "q"` }}', 'it\\\'s \\u003Cb\\u003E \\u0026 \\u003D \\"q\\"'),
        ("{{ urlquery `a b&c=d/é` }}", "a+b%26c%3Dd%2F%C3%A9"),
    ],
)
def test_builtin_functions(source: str, expected: str) -> None:
    data = {"R": "system", "L": ["z"], "M": {"k": "v"}, "D": {"a": {"b": "deep"}}, "S": "hello"}
    assert render(source, data) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('"%d %s %v %q %t" 42 "s" 1.5 "q\\n" true', '42 s 1.5 "q\\n" true'),
        (
            '"%5d|%-5s|%05d|%+d|%x|%X|%c|%%" 7 "ab" -3 5 255 "hi" 65',
            "    7|ab   |-0003|+5|ff|6869|A|%",
        ),
        (
            '"%.2f %e %g %8.3f %.1s" 3.14159 1234.5 0.000012 2.5 "xyz"',
            "3.14 1.234500e+03 1.2e-05    2.500 x",
        ),
        ('"%d" "x"', "%!d(string=x)"),
        ('"%s %d"', "%!s(MISSING) %!d(MISSING)"),
        ('"x" 1 "y"', "x%!(EXTRA int=1, string=y)"),
        ('"%v|%s|%d" .L .L .L', "[a b]|[a b]|[%!d(string=a) %!d(string=b)]"),
    ],
)
def test_printf(args: str, expected: str) -> None:
    assert render("{{ printf " + args + " }}", {"L": ["a", "b"]}) == expected


def test_value_printing_and_json() -> None:
    data = {"L": ["a", 1, None, True, 2.5], "M": {"b": 1, "a": "x"}, "F": 1e21, "I": 10**6}
    assert render("{{ .L }} {{ .M }}", data) == "[a 1 <nil> true 2.5] map[a:x b:1]"
    assert (
        render("{{ .I }} {{ .F }} {{ print 123456789.0 }}", data) == "1000000 1e+21 1.23456789e+08"
    )
    assert render("{{ json .M }} {{ json .L }}", data) == '{"a":"x","b":1} ["a",1,null,true,2.5]'
    # encoding/json: HTML characters escaped, floats without a needless ".0", exponents trimmed.
    assert render('{{ json "<&>\u2028" }}') == '"\\u003c\\u0026\\u003e\\u2028"'
    assert render("{{ json 1.0 }} {{ json 1e20 }} {{ json 1e21 }} {{ json 1e-7 }}") == (
        "1 100000000000000000000 1e+21 1e-7"
    )
    assert render('{{ json "é\\n" }} {{ json nil }} {{ json false }}') == '"é\\n" null false'


# --- errors and caps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ .A", "unclosed action"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ `abc }}", "unterminated raw quoted string"),
        ('{{ "\\q" }}', "invalid escape"),
        ("{{/* x }}", "unclosed comment"),
        ("{{ 1 }}{{/* a */ }}", "unclosed comment"),
        ("{{ $x }}", "undefined variable '$x'"),
        ("{{ $x = 1 }}", "undefined variable '$x'"),
        ("{{ nope 1 }}", "function 'nope' not defined"),
        ("{{ if .A }}x", "missing {{end}} for {{if}}"),
        ("{{ range .A }}x{{ else }}", "missing {{end}} for {{range}}"),
        ("x{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ if 1 }}a{{ else }}b{{ else }}c{{ end }}", "expected {{end}}; found {{else}}"),
        ("{{ with 1 }}a{{ else if 2 }}b{{ end }}", "unexpected 'if' in else"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ range .L }}{{ else }}{{ continue }}{{ end }}", "{{continue}} outside {{range}}"),
        ('{{ define "x" }}a{{ end }}', "{{define}} is not supported"),
        ('{{ template "x" }}', "{{template}} is not supported"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ }}", "missing value for command"),
        ("{{ .A | }}", "missing value for command"),
        ("{{ ( 1 }}", "unclosed left paren"),
        ("{{ 1 ) }}", "unexpected ')'"),
        ("{{ 3x }}", "bad character"),
        ("{{ 'ab' }}", "malformed character constant"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ $a, $b := 1 }}", "too many declarations"),
        ('{{ "a".B }}', "unexpected . after term"),
        ("{{ .A # }}", "bad character '#'"),
    ],
)
def test_syntax_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match="template: line 1, col") as info:
        GoTemplate(source)
    assert message in str(info.value)


def test_syntax_error_position() -> None:
    with pytest.raises(TemplateError, match=r"line 3, col 6: function 'bogus' not defined"):
        GoTemplate("a\nb\nc {{ bogus }}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ .N.B }}", "nil pointer evaluating interface {}.B"),
        ("{{ .S.B }}", "can't evaluate field B in type string"),
        ("{{ index .L 5 }}", "error calling index: index out of range: 5"),
        ("{{ index .L -1 }}", "index out of range: -1"),
        ('{{ index .L "a" }}', "cannot index slice/array with type string"),
        ("{{ slice .L 2 1 }}", "error calling slice"),
        ("{{ eq 1 1.0 }}", "error calling eq: incompatible types for comparison"),
        ("{{ eq .L .L }}", "non-comparable type"),
        ("{{ lt true false }}", "invalid type for comparison"),
        ("{{ len 3 }}", "len of type int"),
        ("{{ not 1 2 }}", "wrong number of args for not"),
        ("{{ 1 2 }}", "can't give argument to non-function"),
        ("{{ .S 1 }}", "can't give argument to non-function"),
        ('{{ "a" | "b" }}', "can't give argument to non-function"),
        ("{{ range .S }}{{ end }}", "range can't iterate over abc"),
        ("{{ json 1 2 }}", "wrong number of args for json"),
        ("{{ printf 1 }}", "wrong type for value; expected string"),
    ],
)
def test_runtime_errors(source: str, message: str) -> None:
    template = GoTemplate(source)
    with pytest.raises(TemplateError, match="template: line 1, col") as info:
        template.render({"L": [1], "S": "abc", "N": None})
    assert message in str(info.value)


class _Secret:
    password = "hunter2"


@pytest.mark.parametrize(
    "source",
    [
        "{{ .S.upper }}",
        "{{ .L.append }}",
        "{{ .O.password }}",
        "{{ .O.__class__ }}",
        "{{ .S.__class__.__mro__ }}",
        "{{ index .O `password` }}",
    ],
)
def test_no_python_attribute_access(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, {"S": "abc", "L": [], "O": _Secret()})


def test_dunder_names_are_only_map_keys() -> None:
    assert render("{{ .__class__ }}|{{ .__dict__ }}") == "<no value>|<no value>"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GoTemplate("x" * (64 * 1024 + 1)), "source longer than 65536 bytes"),
        (
            lambda: render("{{ range .L }}{{ $.S }}{{ end }}", {"L": [0] * 2000, "S": "y" * 1000}),
            "output longer than 1048576 bytes",
        ),
        (
            lambda: render("{{ range .L }}{{ range $.L }}{{ end }}{{ end }}", {"L": [0] * 400}),
            "more than 100000 iterations",
        ),
        (lambda: render("{{ range 1000000000 }}{{ end }}"), "more than 100000 iterations"),
        (lambda: GoTemplate("{{ if 1 }}" * 101 + "{{ end }}" * 101), "nesting deeper than 100"),
        (
            lambda: GoTemplate("{{ " + "(" * 101 + "1" + ")" * 101 + " }}"),
            "nesting deeper than 100",
        ),
        (
            lambda: render(
                '{{ $x := "ab" }}{{ range .L }}{{ $x = printf "%s%s" $x $x }}{{ end }}',
                {"L": [0] * 64},
            ),
            "string longer than 1048576 bytes",
        ),
        (lambda: render('{{ printf "%999999999d" 1 }}'), "width or precision over"),
        (lambda: render("{{ json . }}", _deep(200)), "nested deeper than 100"),
    ],
)
def test_caps_raise_quickly(build: Any, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(TemplateError, match=message):
        build()
    assert time.perf_counter() - start < 2.0


def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def test_caps_allow_what_fits() -> None:
    assert render("{{ if 1 }}" * 100 + "x" + "{{ end }}" * 100) == "x"
    assert render("{{ range .L }}.{{ end }}", {"L": [0] * 99_999}) == "." * 99_999
    assert len(GoTemplate("x" * 64 * 1024).render({})) == 64 * 1024


def test_step_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreter, "MAX_STEPS", 1000)
    with pytest.raises(TemplateError, match="more than 1000 steps"):
        render("{{ range .L }}{{ $x := 1 }}{{ $x := 2 }}{{ end }}", {"L": [0] * 500})


def test_render_is_repeatable() -> None:
    template = GoTemplate("{{ range $i, $x := .L }}{{ $i }}{{ $x }}{{ end }}")
    assert template.render({"L": ["a"]}) == template.render({"L": ["a"]}) == "0a"
    assert template.render({"L": ["b", "c"]}) == "0b1c"
