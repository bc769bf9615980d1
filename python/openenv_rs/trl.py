"""TRL adapter: terminal tasks served by ``env-server --env terminal`` as a
``GRPOTrainer(environment_factory=...)`` environment.

TRL (1.16) creates one instance per rollout slot with ``environment_factory()``, calls
``reset(**row)`` before each generation (the dataset row as keyword arguments; a returned
string is appended to the last user message), exposes every public method of the class
other than ``reset`` and ``get_reward`` as a tool (schema from the type hints and the
Google-style docstring, via ``transformers.utils.get_json_schema``), and, since the class
defines ``get_reward()``, calls it once per finished rollout as a reward source. So
:class:`TerminalEnv` has exactly one public tool, ``terminal(command)``; everything else is
private or a property.

The reward is computed by the server: ``get_reward()`` sends the ``verify`` frame, which
stops the agent's processes, runs the task's verifier in the sandbox and ends the episode
(``TERMINAL_ENV.md`` §4.2). The model never submits a ``final_answer`` here; the episode is
verified when the rollout ends.

>>> from trl import GRPOConfig, GRPOTrainer                                  # doctest: +SKIP
>>> from openenv_rs.trl import terminal_env_factory                         # doctest: +SKIP
>>> trainer = GRPOTrainer(model="Qwen/Qwen3-0.6B", train_dataset=dataset,   # doctest: +SKIP
...                       environment_factory=terminal_env_factory("http://127.0.0.1:8000"),
...                       args=GRPOConfig(max_completion_length=2048))
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ._native import (
    ConnectionClosedError,
    EnvClient,
    OpenEnvError,
    SessionError,
    StepResult,
    TransportError,
)
from .terminus.harness import build_reset_kwargs, format_initial_prompt

__all__ = ["TRL_USAGE", "TRL_VERIFY_HEADING", "TerminalEnv", "server_reward", "terminal_env_factory"]

#: The last part of the initial prompt for TRL rollouts (no ``final_answer``: the rollout
#: ends when the model stops calling tools, and the episode is then verified).
TRL_USAGE = (
    "Use the terminal tool to run shell commands in the sandbox. When the task is done, "
    "stop calling tools and reply with a short summary: your work is then verified and "
    "scored by the environment."
)

#: The heading of the verify commands in a TRL rollout's prompt (there is no
#: ``final_answer``: the episode is verified when the model stops calling tools).
TRL_VERIFY_HEADING = "Verification commands will run when you stop calling tools:"

#: Dataset columns forwarded to the server's ``reset`` as they are, besides the ones
#: :func:`~openenv_rs.terminus.build_reset_kwargs` takes.
_PASSTHROUGH = ("seed", "episode_id", "files", "command_timeout_s")

#: Failures after which a reset reconnects once (the server closed an idle session, or the
#: connection dropped between batches).
_RECONNECT = (ConnectionClosedError, SessionError, TransportError)


class TerminalEnv:
    """One terminal-task episode at a time on one ``env-server`` session, for TRL.

    Args:
        url: The server's base URL (``http://host:port``; ``/ws`` is appended).
        default_setup: Setup commands for rows that name none.
        default_verify: Verify commands for rows that name none.
        default_sandbox: Reset keyword arguments sent with every reset (e.g.
            ``{"shell_mode": "persistent"}``).
        request_timeout: Seconds a call may take (commands run up to the server's
            ``command_timeout_s``, 120 s by default, so keep this above it).
        connect_timeout: Seconds to connect.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        default_setup: Any = None,
        default_verify: Any = None,
        default_sandbox: Optional[Mapping[str, Any]] = None,
        request_timeout: Optional[float] = 300.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._defaults = (default_setup, default_verify, dict(default_sandbox or {}))
        self._client_kwargs: Dict[str, Any] = {
            "request_timeout": request_timeout,
            "connect_timeout": connect_timeout,
        }
        self._client: Optional[EnvClient] = None
        self._reset: Optional[StepResult] = None
        self._reward: Optional[float] = None
        self._done = False

    # -- TRL's contract ------------------------------------------------------------------

    def reset(self, **kwargs: Any) -> str:
        """Starts a new episode for a dataset row and returns the initial prompt text.

        The row's task keys (``task_path``/``task_id``, ``instruction``, ``setup``,
        ``verify``, sandbox keys, ``files``, ``seed``, ``episode_id``,
        ``command_timeout_s``) go to the server's reset; its ``prompt`` stays in the
        conversation and is not repeated.
        """
        setup, verify, sandbox = self._defaults
        task = {key: value for key, value in kwargs.items() if key != "prompt"}
        reset_kwargs = build_reset_kwargs(task, setup, verify, sandbox)
        for key in _PASSTHROUGH:
            if key in task:
                reset_kwargs[key] = task[key]
        self._reward = None
        self._done = False
        result = self._reset_on_server(reset_kwargs)
        self._reset = result
        if result.done:
            meta = result.metadata or result.observation.get("metadata") or {}
            why = meta.get("error") or meta.get("message") or "the episode ended at reset"
            raise OpenEnvError(f"terminal env reset failed: {why}")
        text = format_initial_prompt(
            result, task, usage=TRL_USAGE, verify_heading=TRL_VERIFY_HEADING
        )
        # TRL appends this text to the row's last message as it is: keep a blank line
        # between that message and the task.
        return "\n\n" + text if _last_content(kwargs.get("prompt")) else text

    def terminal(self, command: str) -> str:
        """Run a shell command in the task's sandbox and return its output.

        Args:
            command: The shell command to run with bash, e.g. `ls -la` or `python3 main.py`.

        Returns:
            The command's output: stdout, then stderr, then `ERROR:` and the exit code if it failed.
        """
        call = self._session().call_tool_result("terminal", command=command)
        if call.done:
            self._done = True
            if isinstance(call.reward, (int, float)) and not isinstance(call.reward, bool):
                self._reward = float(call.reward)
        value = call.value
        return value if isinstance(value, str) else str(value)

    def get_reward(self) -> float:
        """The episode's reward, computed by the server (``verify``; sent once per episode)."""
        if self._reward is None:
            verified = self._session().verify()
            self._reward = float(verified.reward)
            self._done = True
        return self._reward

    # -- helpers (private or properties: TRL turns public methods into tools) ------------

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    @property
    def done(self) -> bool:
        """Whether the current episode has ended."""
        return self._done

    @property
    def last_reset(self) -> Optional[StepResult]:
        """The reply to the last reset (its ``metadata`` has ``sandbox_id``, ``instruction``…)."""
        return self._reset

    def _session(self) -> EnvClient:
        if self._client is None:
            raise OpenEnvError("call reset() before using the terminal environment")
        return self._client

    def _reset_on_server(self, reset_kwargs: Dict[str, Any]) -> StepResult:
        if self._client is None:
            self._client = EnvClient(self._url, **self._client_kwargs)
        try:
            return self._client.reset(**reset_kwargs)
        except _RECONNECT:
            # The server ended the session (idle timeout) or the connection dropped while the
            # trainer was busy: a new session, once.
            self._close()
            self._client = EnvClient(self._url, **self._client_kwargs)
            return self._client.reset(**reset_kwargs)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except OpenEnvError:
                pass

    def __enter__(self) -> "TerminalEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"TerminalEnv(url={self._url!r}, done={self._done})"


def _last_content(prompt: Any) -> str:
    """The text of a conversational prompt's last message ("" when there is none)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        content = prompt[-1].get("content")
        if isinstance(content, str):
            return content
    return ""


def terminal_env_factory(
    url: Union[str, Sequence[str]] = "http://127.0.0.1:8000", **kwargs: Any
) -> Callable[[], TerminalEnv]:
    """A ``GRPOTrainer(environment_factory=...)`` callable. With several URLs, successive
    environments go to the servers in turn (each environment keeps its server). Keyword
    arguments go to :class:`TerminalEnv`."""
    urls: List[str] = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("terminal_env_factory needs at least one server URL")
    turn = itertools.cycle(urls)
    lock = threading.Lock()

    def factory() -> TerminalEnv:
        with lock:
            chosen = next(turn)
        return TerminalEnv(chosen, **kwargs)

    return factory


def server_reward(
    completions: Optional[List[Any]] = None,
    environments: Optional[List[Any]] = None,
    **kwargs: Any,
) -> List[Optional[float]]:
    """A TRL reward function returning each rollout's server-computed reward.

    TRL passes the rollouts' environments as ``environments`` when it has an
    ``environment_factory``. Rollouts whose environment is not a :class:`TerminalEnv` get
    ``None`` (TRL ignores them). :class:`TerminalEnv` defines ``get_reward``, which TRL
    already uses as a reward source; add ``server_reward`` to ``reward_funcs`` only to weight
    it explicitly (``reward_weights``), else the reward counts twice. ``verify`` is sent once
    per episode either way.
    """
    if environments is None:
        raise ValueError(
            "server_reward needs the rollouts' environments: use it with "
            "GRPOTrainer(environment_factory=terminal_env_factory(...))"
        )
    return [env.get_reward() if isinstance(env, TerminalEnv) else None for env in environments]
