"""Terminus harness functions (``TERMINAL_ENV.md`` §9): the tool spec shown to the model,
reset keyword arguments from a task, the initial prompt, parsing a model's text into a
``terminal`` tool call, tool messages, and a session factory that runs one episode per
session on a terminal-env server.

Pure Python; compatible with OpenEnv's Terminus harness (PR #729), with the project's fixes:
the tool-call parser never raises, unwraps ``arguments`` iteratively (depth cap 32) and tries
at most 1024 ``{`` positions.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = [
    "MAX_ARGUMENT_DEPTH",
    "MAX_JSON_STARTS",
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
]

#: The tool spec shown to the model (§9.1), exactly as the peer harness has it.
TERMINUS_TOOL: Dict[str, Any] = {
    "name": "terminal",
    "description": (
        "Run a shell command in the Terminus sandbox, or submit final_answer to trigger "
        "verification."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "Shell command to run in the sandbox."},
            "final_answer": {
                "type": "string",
                "description": "Final answer to submit when the task is complete.",
            },
        },
        "additionalProperties": False,
    },
}

#: The last part of the initial prompt (§9.3 part 5).
TERMINUS_USAGE = (
    'Use {"command": "..."} to inspect and modify the sandbox. When finished, use '
    '{"final_answer": "..."} exactly once so verification runs and emits the environment reward.'
)

#: The default first part when no instruction is known (§9.3 part 1).
DEFAULT_TASK = "Task:\nUse the terminal tool to solve the current task."

#: Reset keys copied from a dict task when present (§9.2, with the project's additions).
_COPIED_KEYS = (
    "sandbox_image",
    "sandbox_flavor",
    "sandbox_timeout",
    "hf_sandbox_image",
    "hf_sandbox_flavor",
    "hf_sandbox_timeout",
    "forward_hf_token",
    "sandbox_backend",
    "sandbox_root",
    "task_path",
    "task_id",
    "instruction",
    "shell_mode",
)

#: Nesting of ``{"arguments": ...}`` unwrapped at most (the peer recursed without bound).
MAX_ARGUMENT_DEPTH = 32
#: ``{`` positions tried at most by the JSON scan (the peer's scan was quadratic).
MAX_JSON_STARTS = 1024


# -- reset kwargs --------------------------------------------------------------------------


def coerce_commands(value: Any) -> List[str]:
    """A setup/verify value as a list of commands (§3.1): ``None`` → ``[]``; a string →
    ``[s]`` if it is not blank; an iterable → ``str(item)`` of every item whose ``str`` is not
    blank (not stripped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (bytes, bytearray)):
        raise TypeError("setup and verify must be a string or a list of strings, not bytes")
    try:
        items = iter(value)
    except TypeError:
        raise TypeError(
            f"setup and verify must be a string or a list of strings, not {type(value).__name__}"
        ) from None
    return [str(item) for item in items if str(item).strip()]


def _first_not_none(task: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = task.get(key)
        if value is not None:
            return value
    return None


def _task_commands(task: Mapping[str, Any], key: str) -> Optional[List[str]]:
    """The task's `key` commands (``key`` else ``key + "_scripts"``), ``None`` if it has none."""
    value = _first_not_none(task, key, f"{key}_scripts")
    if value is None:
        return None
    return coerce_commands(value)


def build_reset_kwargs(
    task: Any,
    default_setup: Any = None,
    default_verify: Any = None,
    default_sandbox: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Reset keyword arguments for ``task`` (§9.2).

    A copy of ``default_sandbox``; for a dict task, ``setup``/``verify`` come from the task
    (``setup`` else ``setup_scripts``, first non-``None``; an explicit ``[]`` or ``""``
    overrides the default with nothing), else from the defaults; the sandbox keys (and
    ``task_path``, ``task_id``, ``instruction``, ``shell_mode``) are copied when present.
    ``setup``/``verify`` are added only when non-empty.

    >>> build_reset_kwargs(
    ...     {"setup": "echo a", "verify": None, "verify_scripts": ["v1"],
    ...      "sandbox_backend": "local", "other": 1},
    ...     ["ds"], ["dv"], {"sandbox_image": "x"})
    {'sandbox_image': 'x', 'sandbox_backend': 'local', 'setup': ['echo a'], 'verify': ['v1']}
    """
    kwargs: Dict[str, Any] = dict(default_sandbox or {})
    setup = coerce_commands(default_setup)
    verify = coerce_commands(default_verify)
    if isinstance(task, Mapping):
        task_setup = _task_commands(task, "setup")
        if task_setup is not None:
            setup = task_setup
        task_verify = _task_commands(task, "verify")
        if task_verify is not None:
            verify = task_verify
        for key in _COPIED_KEYS:
            if key in task:
                kwargs[key] = task[key]
    if setup:
        kwargs["setup"] = setup
    if verify:
        kwargs["verify"] = verify
    return kwargs


# -- initial prompt ------------------------------------------------------------------------


def task_instruction(task: Any) -> str:
    """The instruction of a task (§9.3 part 1): a string is itself; a chat list gives the
    ``content`` of its last user message (else ``str(task)``); a dict its first non-``None``
    of ``instruction``, ``prompt``, ``question``, ``task`` (read the same way); anything else
    ``str(task or "")``."""
    if isinstance(task, str):
        return task
    if isinstance(task, list):
        for message in reversed(task):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return str(message.get("content"))
        return str(task)
    if isinstance(task, Mapping):
        value = _first_not_none(task, "instruction", "prompt", "question", "task")
        if value is None:
            return ""
        return task_instruction(value)
    return str(task or "")


def _metadata(reset_result: Any) -> Dict[str, Any]:
    """The reset metadata, from a ``StepResult`` (ours or OpenEnv's) or a dict envelope."""
    if reset_result is None:
        return {}
    if isinstance(reset_result, Mapping):
        meta = reset_result.get("metadata")
        observation = reset_result.get("observation")
    else:
        meta = getattr(reset_result, "metadata", None)
        observation = getattr(reset_result, "observation", None)
    if isinstance(meta, Mapping) and meta:
        return dict(meta)
    if isinstance(observation, Mapping):
        inner = observation.get("metadata")
        if isinstance(inner, Mapping):
            return dict(inner)
    elif observation is not None:
        inner = getattr(observation, "metadata", None)
        if isinstance(inner, Mapping):
            return dict(inner)
    return {}


def _bullets(title: str, commands: Sequence[str]) -> str:
    return title + "\n" + "\n".join(f"- {command}" for command in commands)


#: The heading of the verify commands in the initial prompt (§9.3 part 4).
VERIFY_HEADING = "Verification commands will run after final_answer:"


def format_initial_prompt(
    reset_result: Any,
    task: Any,
    *,
    usage: str = TERMINUS_USAGE,
    verify_heading: str = VERIFY_HEADING,
) -> str:
    """The first user message of a Terminus episode (§9.3), parts joined by a blank line:
    the task, the environment's reset message, the task's setup commands, the verify
    commands (under ``verify_heading``), and ``usage``."""
    meta = _metadata(reset_result)
    instruction = task_instruction(task)
    if not instruction:
        instruction = str(meta.get("instruction") or "")
    parts = [f"Task:\n{instruction}" if instruction else DEFAULT_TASK]
    message = meta.get("message")
    if message:
        parts.append(f"Environment:\n{message}")
    if isinstance(task, Mapping):
        setup = _task_commands(task, "setup")
        if setup:
            parts.append(_bullets("Setup commands have already run:", setup))
    verify = meta.get("verify_commands")
    commands = coerce_commands(verify) if isinstance(verify, list) else []
    if not commands and isinstance(task, Mapping):
        commands = _task_commands(task, "verify") or []
    if commands:
        parts.append(_bullets(verify_heading, commands))
    parts.append(usage)
    return "\n\n".join(parts)


# -- tool-call parsing ---------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A parsed ``terminal`` tool call."""

    id: str
    name: str = "terminal"
    args: Dict[str, str] = field(default_factory=dict)


_DECODER = json.JSONDecoder()
_CALL_RE = re.compile(r"terminal\s*\((?P<body>.*?)\)", re.DOTALL)
_TOOL_KEYS = ("command", "final_answer")


def _normalise(value: Any) -> Optional[Dict[str, Any]]:
    """A decoded JSON value as tool arguments (§9.5 step 2), ``None`` if it is not one."""
    for _ in range(MAX_ARGUMENT_DEPTH):
        if not isinstance(value, dict):
            return None
        if "arguments" in value:
            inner = value["arguments"]
            if isinstance(inner, str):
                try:
                    inner = json.loads(inner)
                except Exception:  # noqa: BLE001 - any decode failure means "no call here"
                    return None
            value = inner
            continue
        if value.get("command") is not None or value.get("final_answer") is not None:
            return value
        return None
    return None


def _scan_json(text: str) -> Optional[Dict[str, Any]]:
    start = text.find("{")
    tried = 0
    while start != -1 and tried < MAX_JSON_STARTS:
        tried += 1
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except Exception:  # noqa: BLE001 - ValueError, RecursionError: skip this position
            value = None
        else:
            found = _normalise(value)
            if found is not None:
                return found
        start = text.find("{", start + 1)
    return None


def _call_expression(text: str) -> Optional[Dict[str, Any]]:
    match = _CALL_RE.search(text)
    if match is None:
        return None
    try:
        tree = ast.parse(f"terminal({match.group('body')})", mode="eval")
    except Exception:  # noqa: BLE001 - SyntaxError, RecursionError, ...
        return None
    call = tree.body
    if not isinstance(call, ast.Call) or call.args:
        return None
    found: Dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg not in _TOOL_KEYS:
            return None
        node = keyword.value
        if isinstance(node, ast.Name):
            found[keyword.arg] = node.id
            continue
        try:
            found[keyword.arg] = ast.literal_eval(node)
        except Exception:  # noqa: BLE001 - not a literal (f-string, call, ...)
            return None
    return found or None


def _py_str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def build_terminal_tool_call(text: str, call_id: str = "terminal-0") -> ToolCall:
    """Parses a model's text into a ``terminal`` call (§9.5); never raises.

    JSON objects anywhere in the text (``command``/``final_answer``, possibly wrapped in
    ``arguments``, also as a JSON string), then a ``terminal(command=...)`` call expression,
    else the whole text is the command. Values become strings; with both arguments
    non-empty only ``command`` is kept.
    """
    try:
        found = _parse(text)
    except Exception:  # noqa: BLE001 - the contract is "never raises"
        found = None
    if found is None:
        found = {"command": text}
    args = {key: _py_str(found[key]) for key in _TOOL_KEYS if found.get(key) is not None}
    if not args:
        args = {"command": ""}
    if args.get("command") and args.get("final_answer"):
        args = {"command": args["command"]}
    return ToolCall(id=call_id, name="terminal", args=args)


def _parse(text: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").strip()
        if stripped.startswith("json"):
            stripped = stripped[len("json") :].strip()
    return _scan_json(stripped) or _call_expression(stripped)


# -- tool messages -------------------------------------------------------------------------


def _tool_output(result: Any) -> Optional[str]:
    """``result.data``, else the joined ``content[*].text``; ``None`` if there is neither."""
    if isinstance(result, Mapping):
        if "data" in result and result["data"] is not None:
            return _py_str(result["data"])
        content = result.get("content")
        if isinstance(content, list):
            texts = [
                str(block.get("text", ""))
                for block in content
                if isinstance(block, Mapping) and block.get("text") is not None
            ]
            return "".join(texts) if texts else None
        return None
    if result is None:
        return None
    return _py_str(result)


def build_tool_message(
    call: ToolCall,
    observation: Mapping[str, Any],
    reward: Any = None,
    done: bool = False,
) -> Dict[str, Any]:
    """The chat message for a tool call's outcome (§9.4): ``content`` is
    ``json.dumps({"tool_name", "arguments", "output", "reward", "done"[, "error"]},
    sort_keys=True)``, ``output`` being ``None`` on error."""
    error = observation.get("error")
    data: Dict[str, Any] = {
        "tool_name": observation.get("tool_name", call.name),
        "arguments": dict(call.args),
        "output": None if error else _tool_output(observation.get("result")),
        "reward": reward,
        "done": bool(done),
    }
    if error:
        data["error"] = error
    return {
        "role": "tool",
        "tool_call_id": call.id,
        "name": "terminal",
        "content": json.dumps(data, sort_keys=True),
    }


# -- sessions ------------------------------------------------------------------------------


class TerminusSession:
    """One Terminus episode on its own session: reset in the constructor (the client is
    closed if reset raises), one tool, ``done`` stops the rollout.

    ``client`` is an :class:`openenv_rs.EnvClient` (or anything with its ``reset`` and
    ``step`` methods).
    """

    def __init__(
        self,
        client: Any,
        task: Any,
        *,
        seed: Optional[int] = None,
        episode_id: Optional[str] = None,
        default_setup: Any = None,
        default_verify: Any = None,
        default_sandbox: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.client = client
        self.task = task
        kwargs = build_reset_kwargs(task, default_setup, default_verify, default_sandbox)
        if seed is not None:
            kwargs["seed"] = seed
        if episode_id is not None:
            kwargs["episode_id"] = episode_id
        self.reset_kwargs = kwargs
        try:
            self.reset_result = client.reset(**kwargs)
        except BaseException:
            client.close()
            raise
        self.initial_prompt = format_initial_prompt(self.reset_result, task)
        self.done: bool = bool(self.reset_result.done)
        self.trace: List[Dict[str, Any]] = []
        self.tools: List[Dict[str, Any]] = [TERMINUS_TOOL]
        self.commands = 0
        self.submitted_answer = False

    def call(self, call: ToolCall) -> Dict[str, Any]:
        """Runs one tool call and returns its tool message (§9.4)."""
        action = {"type": "call_tool", "tool_name": "terminal", "arguments": dict(call.args)}
        result = self.client.step(action)
        observation = dict(result.observation)
        self.done = bool(result.done)
        self.trace.append(
            {"arguments": dict(call.args), "reward": result.reward, "done": result.done}
        )
        if call.args.get("final_answer"):
            self.submitted_answer = True
        elif call.args.get("command", "").strip():
            self.commands += 1
        return build_tool_message(call, observation, result.reward, result.done)

    def verify_result(self) -> Dict[str, Any]:
        """``env_reward`` (the last call's reward), ``done`` and metrics (§9.4). Raises if the
        rollout produced no reward, or if the trace disagrees with it."""
        rewards = [step["reward"] for step in self.trace if step["reward"] is not None]
        last = self.trace[-1]["reward"] if self.trace else None
        if last is None or not rewards:
            raise RuntimeError("rollout did not produce an environment reward")
        env_reward = float(last)
        if not math.isclose(float(rewards[-1]), env_reward, rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError("the trace's last reward differs from the environment reward")
        meta = _metadata(self.reset_result)
        return {
            "env_reward": env_reward,
            "done": self.done,
            "metrics": {
                "done": self.done,
                "step_count": len(self.trace),
                "commands": self.commands,
                "verify_commands": len(self.reset_kwargs.get("verify", [])),
                "setup_commands": len(self.reset_kwargs.get("setup", [])),
                "submitted_answer": self.submitted_answer,
                "sandbox_id": meta.get("sandbox_id"),
            },
        }

    def close(self) -> None:
        self.client.close()


class TerminusSessionFactory:
    """Creates one :class:`TerminusSession` per task, each on a fresh connection to
    ``base_url`` (keyword arguments go to :class:`openenv_rs.EnvClient`)."""

    def __init__(
        self,
        base_url: str,
        *,
        default_setup: Any = None,
        default_verify: Any = None,
        default_sandbox: Optional[Mapping[str, Any]] = None,
        **client_kwargs: Any,
    ) -> None:
        self.base_url = base_url
        self.default_setup = default_setup
        self.default_verify = default_verify
        self.default_sandbox = dict(default_sandbox or {})
        self.client_kwargs = client_kwargs

    def create(
        self, task: Any, seed: Optional[int] = None, episode_id: Optional[str] = None
    ) -> TerminusSession:
        from .. import EnvClient

        client = EnvClient(self.base_url, **self.client_kwargs)
        return TerminusSession(
            client,
            task,
            seed=seed,
            episode_id=episode_id,
            default_setup=self.default_setup,
            default_verify=self.default_verify,
            default_sandbox=self.default_sandbox,
        )

    def tools(self) -> List[Dict[str, Any]]:
        return [TERMINUS_TOOL]
