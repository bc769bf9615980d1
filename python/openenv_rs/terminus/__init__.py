"""Terminus harness helpers for the ``terminal`` environment (``TERMINAL_ENV.md`` §9).

- :data:`TERMINUS_TOOL` — the tool spec shown to the model;
- :func:`build_reset_kwargs` — reset keyword arguments from a task;
- :func:`format_initial_prompt` — the first user message, from the reset result;
- :func:`build_terminal_tool_call` — a model's text → a ``terminal`` call (never raises);
- :func:`build_tool_message` — a call's outcome → the tool chat message;
- :func:`terminus_reward` — rewards from tool messages, for TRL ``reward_funcs``
  (submodule :mod:`openenv_rs.terminus.reward`);
- :class:`TerminusSessionFactory` — one reset session per task.
"""

from .harness import (
    MAX_ARGUMENT_DEPTH,
    MAX_JSON_STARTS,
    TERMINUS_TOOL,
    TERMINUS_USAGE,
    TerminusSession,
    TerminusSessionFactory,
    ToolCall,
    build_reset_kwargs,
    build_terminal_tool_call,
    build_tool_message,
    coerce_commands,
    format_initial_prompt,
    task_instruction,
)
from .reward import REWARD_MODES, terminus_reward, tool_message_reward

__all__ = [
    "MAX_ARGUMENT_DEPTH",
    "MAX_JSON_STARTS",
    "REWARD_MODES",
    "TERMINUS_TOOL",
    "TERMINUS_USAGE",
    "TerminusSession",
    "TerminusSessionFactory",
    "ToolCall",
    "build_reset_kwargs",
    "build_terminal_tool_call",
    "build_tool_message",
    "coerce_commands",
    "format_initial_prompt",
    "task_instruction",
    "terminus_reward",
    "tool_message_reward",
]
