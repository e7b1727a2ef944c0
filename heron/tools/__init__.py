"""Tool calling: tool specs and choices, call formats (parsers and grammars), Heron's
built-in tool prompt, and ``plan_tools``, which the API families share."""

from heron.tools.plan import ToolPlan, plan_tools
from heron.tools.spec import ToolChoice, ToolSpec, check_tools

__all__ = ["ToolChoice", "ToolPlan", "ToolSpec", "check_tools", "plan_tools"]
