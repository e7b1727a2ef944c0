"""The interactive session of ``heron run``: ``>>>`` prompts, slash commands and ``\"\"\"``
multi-line input. The conversation is kept across turns until ``/clear``.

Input goes through ``input()`` (with readline when it is available), so the session works on
any terminal, pseudo-terminals included.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from heron.cli.chat import chat_body, print_stats, stream_chat
from heron.cli.client import Client, ServerError
from heron.cli.models import parameter_lines, summary

PROMPT = ">>> "
CONTINUE = "... "
QUOTES = '"""'

HELP = f"""Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? set          Help for /set
  /? show         Help for /show

Use {QUOTES} to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""

PARAMETER_HELP = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


def read_message(read: Callable[[str], str] = input) -> str:
    """One message: a line, or with an unclosed ``\"\"\"`` every line up to the closing one.
    The quotes are removed, and so are the line breaks right inside them. Raises EOFError on
    end of input."""
    lines = [read(PROMPT)]
    if lines[0].count(QUOTES) % 2 == 0:
        text = lines[0]
    else:
        while True:
            lines.append(read(CONTINUE))
            if QUOTES in lines[-1]:
                break
        text = "\n".join(lines)
    before, quoted, rest = text.partition(QUOTES)
    if not quoted:
        return text
    inner, _, after = rest.rpartition(QUOTES) if QUOTES in rest else (rest, "", "")
    return before + inner.strip("\n") + after


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as typed: "0", not "0.0"
    return str(value)


class Session:
    """One interactive conversation with ``model``: history, system message and options."""

    def __init__(
        self, client: Client, model: str, verbose: bool = False, keepalive: str | None = None
    ) -> None:
        self.client = client
        self.model = model
        self.verbose = verbose
        self.keepalive = keepalive
        self.system: str | None = None
        self.options: dict[str, Any] = {}
        self.history: list[dict[str, str]] = []

    def loop(self, read: Callable[[str], str] = input) -> None:
        """Read and answer until ``/bye`` or end of input (Ctrl-D)."""
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        # Load the model before the first prompt, so a load failure shows at once.
        self.client.send("POST", "/api/chat", self._body([]) | {"stream": False})
        while True:
            try:
                text = read_message(read)
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            if not text.strip():
                continue
            try:
                if text.startswith("/"):
                    if not self.command(text.strip()):
                        return
                else:
                    self.send(text)
            except ServerError as exc:
                print(f"Error: {exc.message}", file=sys.stderr, flush=True)

    def _body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return chat_body(self.model, messages, self.options, self.keepalive)

    def send(self, text: str) -> None:
        """One turn: stream the reply; it joins the history only if it completed."""
        user = {"role": "user", "content": text}
        system = [{"role": "system", "content": self.system}] if self.system else []
        body = self._body([*system, *self.history, user])
        try:
            reply = stream_chat(self.client, body, sys.stdout)
        except KeyboardInterrupt:
            print("\n")
            return
        print("\n", flush=True)
        self.history += [user, {"role": "assistant", "content": reply.text}]
        if self.verbose:
            print_stats(reply)

    # ----------------------------------------------------------------------- commands
    def command(self, line: str) -> bool:
        """Run a slash command; False ends the session."""
        words = line.split(maxsplit=2)
        name = words[0].lower()
        args = words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            topic = args[0].lower() if args else ""
            print({"set": SET_HELP, "show": SHOW_HELP}.get(topic, HELP))
        elif name == "/clear":
            self.history.clear()
            print("Cleared session context")
        elif name == "/set":
            self.set(args)
        elif name == "/show":
            self.show(args[0].lower() if args else "")
        else:
            print(f"Unknown command '{words[0]}'. Type /? for help")
        return True

    def set(self, args: list[str]) -> None:
        what = args[0].lower() if args else ""
        rest = args[1] if len(args) > 1 else ""
        if what == "parameter":
            self.set_parameter(rest)
        elif what == "system":
            self.system = rest or None
            print("Set system message." if rest else "Cleared system message.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif not what:
            print(SET_HELP)
        else:
            print(f"Unknown command '/set {args[0]}'. Type /? for help")

    def set_parameter(self, text: str) -> None:
        from heron.store.modelfile import ModelfileError, coerce_parameter

        words = text.split()
        if len(words) < 2:
            print(PARAMETER_HELP)
            return
        name, values = words[0].lower(), words[1:]
        try:
            if name == "stop":
                value: Any = [coerce_parameter(name, v) for v in values]
            else:
                value = coerce_parameter(name, " ".join(values))
        except ModelfileError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return
        self.options[name] = value
        print(f"Set parameter '{name}' to '{', '.join(values)}'")

    def show(self, what: str) -> None:
        if what not in ("info", "license", "modelfile", "parameters", "system", "template"):
            print(SHOW_HELP if not what else f"Unknown command '/show {what}'. Type /? for help")
            return
        info = self.client.show(self.model, system=self.system)
        if what == "info":
            print(summary(info))
        elif what == "parameters":
            self._show_parameters(info)
        elif what == "system":
            print(self.system or info.get("system") or _missing("system message"))
        else:
            value = info.get(what) or ""
            if isinstance(value, list):
                value = "\n".join(str(v) for v in value)
            print(str(value).rstrip("\n") or _missing(what))

    def _show_parameters(self, info: dict[str, Any]) -> None:
        model_params = parameter_lines(info.get("parameters"))
        if self.options:
            print("User defined parameters:")
            for key, value in self.options.items():
                for item in value if isinstance(value, list) else [value]:
                    print(f"{key:<30} {_format_value(item)}")
            print()
        if model_params:
            print("Model defined parameters:")
            for key, value in model_params:
                print(f"{key:<30} {value}")
        if not self.options and not model_params:
            print("No parameters were specified for this model.")


def _missing(what: str) -> str:
    if what == "template":
        what = "prompt template"
    return f"No {what} was specified for this model."
