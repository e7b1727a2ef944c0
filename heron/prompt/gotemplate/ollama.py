"""Modelfile TEMPLATEs rendered as Ollama renders them (`render_ollama_prompt`), and the
template data: chat messages and tools as the Go structs Ollama's templates see.

Messages become records with `Role`, `Content`, `Thinking`, `Images`, `ToolCalls`, `ToolName`
and `ToolCallID`; a tool call has `ID` and `Function` (`Index`, `Name`, `Arguments`); a tool
has `Type`, `Items` and `Function` (`Name`, `Description`, `Parameters` with `Type`, `Defs`,
`Items`, `Required`, `Properties`). Tools, tool functions, their parameters and tool-call
arguments print as JSON, as their Go types do; JSON keeps Ollama's field order and drops the
empty `omitempty` fields (and, as Ollama's structs do, any JSON-schema keys they lack).
"""

from __future__ import annotations

import json
from typing import Any

from .interpreter import MAX_OUTPUT_BYTES, GoTemplate, render_nodes
from .nodes import Action, Branch, Cmd, Field, Node, Pipe, Range, Sub
from .values import MAX_VALUE_DEPTH, JSONList, OrderedMap, Record, TemplateError, byte_len


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI-style content parts: keep the text ones
        parts = (p for p in value if isinstance(p, dict) and p.get("type") == "text")
        return "".join(_text(p.get("text"), what) for p in parts)
    raise TemplateError(f"{what} must be a string, not {type(value).__name__}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TemplateError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TemplateError(f"{what} must be a list, not {type(value).__name__}")
    return value


def _struct_json(*fields: tuple[str, Any, bool]) -> OrderedMap:
    """A struct's JSON: (key, value, omitempty) in order; omitempty drops nil, "" and []."""
    kept = (
        (key, value)
        for key, value, omit in fields
        if not (omit and (value is None or (isinstance(value, str | list) and not value)))
    )
    return OrderedMap(kept)


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, chat) as Ollama prepares them: the system prompt is every system
    message joined by blank lines; consecutive messages of one role other than `tool` are
    merged, their contents joined by a blank line. Roles are lower-cased."""
    system: list[str] = []
    chat: list[dict[str, Any]] = []
    for message in _list(messages, "messages"):
        message = _object(message, "a message")
        role = _text(message.get("role"), "role").lower()
        content = _text(message.get("content"), "message content")
        if role == "system":
            system.append(content)
        if chat and chat[-1]["role"] == role and role != "tool":
            chat[-1]["content"] += "\n\n" + content
        else:
            chat.append({**message, "role": role, "content": content})
    return "\n\n".join(system), chat


def legacy_turns(chat: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(System, Prompt, Response) of each render of a legacy template: a turn closes when a
    system message follows a prompt or a response, or a user message follows a response.
    The last turn is the one to generate (its Response is empty unless the chat ends with an
    assistant message to continue). Tool messages are left out, as Ollama does."""
    turns: list[tuple[str, str, str]] = []
    system = prompt = response = ""
    for message in chat:
        role, content = message["role"], message["content"]
        if role == "system" and (prompt or response) or role == "user" and response:
            turns.append((system, prompt, response))
            system = prompt = response = ""
        if role == "system":
            system = content
        elif role == "user":
            prompt = content
        elif role == "assistant":
            response = content
    turns.append((system, prompt, response))
    return turns


def _tool_call(call: Any) -> Record:
    call = _object(call, "a tool call")
    function = _object(call.get("function"), "a tool call's function")
    raw = function.get("arguments")
    if isinstance(raw, str):  # OpenAI sends the arguments as JSON text
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, RecursionError) as exc:
            raise TemplateError(f"tool call arguments are not JSON: {exc}") from None
    arguments = OrderedMap(_object(raw, "tool call arguments"))
    index = function.get("index", 0)
    name = _text(function.get("name"), "a tool call's name")
    func = Record(
        {"Index": index, "Name": name, "Arguments": arguments},
        _struct_json(
            ("index", index, False), ("name", name, False), ("arguments", arguments, False)
        ),
    )
    call_id = _text(call.get("id"), "a tool call's id")
    return Record(
        {"ID": call_id, "Function": func},
        _struct_json(("id", call_id, True), ("function", func, False)),
    )


def message_record(message: dict[str, Any]) -> Record:
    """One collated chat message as Ollama's `api.Message`."""
    fields = {
        "Role": message["role"],
        "Content": message["content"],
        "Thinking": _text(message.get("thinking"), "thinking"),
        "Images": list(_list(message.get("images"), "images")),
        "ToolCalls": [_tool_call(c) for c in _list(message.get("tool_calls"), "tool_calls")],
        "ToolName": _text(message.get("tool_name") or message.get("name"), "tool_name"),
        "ToolCallID": _text(message.get("tool_call_id"), "tool_call_id"),
    }
    keys = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")
    json_value = _struct_json(
        *((k, v, i > 1) for i, (k, v) in enumerate(zip(keys, fields.values(), strict=True)))
    )
    return Record(fields, json_value)


def _properties(value: Any, depth: int) -> OrderedMap:
    props = _object(value, "tool properties")
    return OrderedMap((str(name), _property(prop, depth)) for name, prop in props.items())


def _property(value: Any, depth: int) -> Record:
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"tool parameters nested deeper than {MAX_VALUE_DEPTH}")
    prop = _object(value, "a tool property")
    any_of = [_property(p, depth + 1) for p in _list(prop.get("anyOf"), "anyOf")]
    kind = prop.get("type")
    if isinstance(kind, list) and len(kind) == 1:
        kind = kind[0]
    nested = None if prop.get("properties") is None else _properties(prop["properties"], depth + 1)
    description = _text(prop.get("description"), "a property description")
    enum = list(_list(prop.get("enum"), "enum"))
    fields = {"AnyOf": any_of, "Type": "" if kind is None else kind, "Items": prop.get("items")}
    fields |= {"Description": description, "Enum": enum, "Properties": nested}
    json_value = _struct_json(
        ("anyOf", any_of, True),
        ("type", kind, True),
        ("items", prop.get("items"), True),
        ("description", description, True),
        ("enum", enum, True),
        ("properties", nested, True),
    )
    return Record(fields, json_value)


def _tool(value: Any) -> Record:
    tool = _object(value, "a tool")
    function = _object(tool.get("function"), "a tool's function")
    params = _object(function.get("parameters"), "a tool's parameters")
    props = params.get("properties")
    properties = None if props is None else _properties(props, 1)
    required = list(_list(params.get("required"), "required"))
    kind = _text(params.get("type"), "parameters type")
    defs, items = params.get("$defs"), params.get("items")
    parameters = Record(
        {
            "Type": kind,
            "Defs": defs,
            "Items": items,
            "Required": required,
            "Properties": properties,
        },
        _struct_json(
            ("type", kind, False),
            ("$defs", defs, True),
            ("items", items, True),
            ("required", required, True),
            ("properties", properties, False),
        ),
        stringer=True,
    )
    name = _text(function.get("name"), "a tool's name")
    description = _text(function.get("description"), "a tool's description")
    func = Record(
        {"Name": name, "Description": description, "Parameters": parameters},
        _struct_json(
            ("name", name, False),
            ("description", description, True),
            ("parameters", parameters, False),
        ),
        stringer=True,
    )
    tool_type, tool_items = _text(tool.get("type"), "a tool's type"), tool.get("items")
    return Record(
        {"Type": tool_type, "Items": tool_items, "Function": func},
        _struct_json(
            ("type", tool_type, False), ("items", tool_items, True), ("function", func, False)
        ),
        stringer=True,
    )


def tools_value(tools: list[dict[str, Any]] | None) -> JSONList:
    """`.Tools`: the request's tools (OpenAI/Ollama `{"type", "function"}` objects)."""
    return JSONList(_tool(t) for t in _list(tools, "tools"))


def _mentions_response(pipe: Pipe) -> bool:
    for cmd in pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, Field) and "Response" in arg.names:
                return True
            if isinstance(arg, Sub) and _mentions_response(arg.pipe):
                return True
    return False


def _cut_after_response(nodes: tuple[Node, ...]) -> tuple[tuple[Node, ...], bool]:
    """Drop everything after the first action printing `.Response` (bodies searched in order,
    conditions not), for the turn being generated; returns (nodes, whether it was found)."""
    kept: list[Node] = []
    for node in nodes:
        if isinstance(node, Action) and _mentions_response(node.pipe):
            return (*kept, node), True
        if isinstance(node, Branch):
            arms: list[tuple[str, Pipe, tuple[Node, ...]]] = []
            for kind, pipe, body in node.arms:
                body, cut = _cut_after_response(body)
                arms.append((kind, pipe, body))
                if cut:
                    return (*kept, Branch(tuple(arms), ())), True
            orelse, cut = _cut_after_response(node.orelse)
            node = Branch(tuple(arms), orelse)
        elif isinstance(node, Range):
            body, cut = _cut_after_response(node.body)
            orelse, cut_else = _cut_after_response(() if cut else node.orelse)
            node, cut = Range(node.pipe, body, orelse), cut or cut_else
        else:
            cut = False
        kept.append(node)
        if cut:
            return tuple(kept), True
    return tuple(kept), False


_RESPONSE = Action(Pipe((), False, (Cmd((Field(("Response",)),), 0),), 0))


def render_ollama_prompt(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    think: bool | None = None,
) -> str:
    """The prompt for the next assistant turn of `messages`, rendered as Ollama would.

    A template that mentions `.Messages` is rendered once with `System` (every system message,
    joined by blank lines), `Messages` (consecutive same-role messages merged; records with
    `Role`, `Content`, `ToolCalls`, ...) and `Tools`. Any other (legacy) template is rendered
    once per user turn with `System`, `Prompt` and `Response` (`{{ .Response }}` appended if it
    does not print it) and the results joined; the last turn is cut just after its Response.
    `think` sets `.Think` (and `.IsThinkSet` when it is not None).
    """
    tmpl = GoTemplate(template)
    names = tmpl.identifiers()
    system, chat = collate(messages)
    if "messages" in names or "document" in names:
        data: dict[str, Any] = {"System": system, "Messages": [message_record(m) for m in chat]}
        data |= {"Tools": tools_value(tools), "Response": "", "Think": bool(think)}
        data |= {"IsThinkSet": think is not None, "Query": "", "Document": "", "Instruction": ""}
        return tmpl.render(data)
    nodes = tmpl.nodes if "response" in names else (*tmpl.nodes, _RESPONSE)
    turns = legacy_turns(chat)
    parts: list[str] = []
    for i, (turn_system, prompt, response) in enumerate(turns):
        data = {"System": turn_system, "Prompt": prompt, "Response": response}
        data |= {"Think": bool(think), "IsThinkSet": think is not None}
        last = i == len(turns) - 1
        parts.append(render_nodes(template, _cut_after_response(nodes)[0] if last else nodes, data))
    out = "".join(parts)
    if byte_len(out) > MAX_OUTPUT_BYTES:
        raise TemplateError(f"template output longer than {MAX_OUTPUT_BYTES} bytes")
    return out
