"""The TRL adapter (`openenv_rs.trl`) under TRL 1.16's `environment_factory` contract.

TRL itself needs torch (a multi-GB download here), so it is not installed; what TRL does with
an environment is reproduced from `trl/trainer/grpo_trainer.py` (1.16.0), and the tool schema
is derived with `transformers.utils.get_json_schema`, the function TRL's chat-template path
applies to the tool methods.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List

import pytest

from _expected import TERMINAL_SCHEMA
from openenv_rs import OpenEnvError
from openenv_rs.trl import (
    TRL_USAGE,
    TRL_VERIFY_HEADING,
    TerminalEnv,
    server_reward,
    terminal_env_factory,
)


def trl_tools(instance: Any) -> List[Callable[..., Any]]:
    """GRPOTrainer.__init__ (TRL 1.16): every function on the class that is not `reset`,
    `get_reward` or private becomes a tool; `reset` is required."""
    members = inspect.getmembers(type(instance), predicate=inspect.isfunction)
    names = [name for name, _ in members]
    assert "reset" in names, "TRL requires a callable reset"
    return [
        getattr(instance, name)
        for name, _ in members
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def test_tools_and_schema_as_trl_derives_them() -> None:
    from transformers.utils import get_json_schema

    env = terminal_env_factory("http://127.0.0.1:1")()
    tools = trl_tools(env)
    assert [tool.__name__ for tool in tools] == ["terminal"]
    assert inspect.iscoroutinefunction(env.get_reward) is False
    schema = get_json_schema(tools[0])
    assert schema == TERMINAL_SCHEMA


def test_factory_round_robin() -> None:
    factory = terminal_env_factory(["http://a:1", "http://b:2"], request_timeout=9.0)
    urls = [factory().url for _ in range(4)]
    assert urls == ["http://a:1", "http://b:2", "http://a:1", "http://b:2"]
    with pytest.raises(ValueError):
        terminal_env_factory([])


def rollout(env: TerminalEnv, row: Dict[str, Any], commands: List[str]) -> str:
    """What TRL does per rollout: reset(**row), the tool calls, then the reward funcs."""
    prompt = env.reset(**row)
    for command in commands:
        env.terminal(command=command)
    return prompt


def test_episode_on_a_fake_terminal_server(fake_terminal) -> None:
    factory = terminal_env_factory(fake_terminal.url)
    envs = [factory(), factory()]
    rows = [
        {"prompt": [{"role": "user", "content": "Create answer.txt"}],
         "verify": ["test -f answer.txt"], "seed": 1, "other_column": "x"},
        {"prompt": [{"role": "user", "content": "Create both files"}],
         "verify": ["test -f a", "test -f b"], "instruction": "Create a and b."},
    ]
    prompt = rollout(envs[0], rows[0], ["touch answer.txt"])
    rollout(envs[1], rows[1], ["touch a"])
    # The row's task keys reached the server; its prompt did not.
    sent = fake_terminal.handler.resets
    assert sent[0] == {"verify": ["test -f answer.txt"], "seed": 1}
    assert sent[1] == {"instruction": "Create a and b.", "verify": ["test -f a", "test -f b"]}
    # TRL appends the text to the row's user message: it starts with a blank line.
    assert prompt == "\n\n" + "\n\n".join([
        "Task:\nUse the terminal tool to solve the current task.",
        "Environment:\nTerminus environment ready. Use terminal(command=...) to work. "
        "Verify commands registered: 1.",
        f"{TRL_VERIFY_HEADING}\n- test -f answer.txt",
        TRL_USAGE,
    ])
    assert envs[0].terminal("cat answer.txt") == ""
    # TRL's reward sources: get_reward() per env, and server_reward in reward_funcs.
    assert server_reward(completions=[[], []], environments=envs) == [1.0, 0.5]
    assert [env.get_reward() for env in envs] == [1.0, 0.5]  # verified once, then cached
    assert all(env.done for env in envs)
    assert server_reward([[]], environments=[object()]) == [None]
    with pytest.raises(ValueError, match="environments"):
        server_reward([[]])
    # The next batch reuses the instance (TRL pools them): a new episode, a new reward.
    envs[0].reset(verify=["test -f x"])
    assert envs[0].done is False
    assert envs[0].get_reward() == 0.0


def test_terminal_before_reset() -> None:
    env = TerminalEnv("http://127.0.0.1:1")
    with pytest.raises(OpenEnvError, match="reset"):
        env.terminal("ls")


def test_reset_failure_is_raised(fake_terminal, monkeypatch) -> None:
    env = TerminalEnv(fake_terminal.url)
    env.reset(verify=["test -f a"])
    client = env._client
    assert client is not None

    class Failed:
        done = True
        metadata = {"status": "error", "error": "failed to create local sandbox: boom"}
        observation: Dict[str, Any] = {}

    monkeypatch.setattr(env, "_reset_on_server", lambda kwargs: Failed())
    with pytest.raises(OpenEnvError, match="failed to create local sandbox: boom"):
        env.reset()


def test_reconnects_after_the_server_ends_the_session(start_server, monkeypatch) -> None:
    """An idle session closed by the server between batches: reset opens a new one."""
    server = start_server("--idle-timeout-s", "1")
    env = TerminalEnv(server.url)
    env.reset()  # the echo env ignores the kwargs; enough for the connection logic
    first = env._client
    import time

    time.sleep(2.0)
    env.reset()
    assert env._client is not None and env._client is not first


def test_real_terminal_env(terminal_server) -> None:
    env = terminal_env_factory(terminal_server.url)()
    prompt = env.reset(
        prompt=[{"role": "user", "content": "Write 42 to answer.txt"}],
        verify=['test "$(cat answer.txt)" = 42'],
    )
    assert prompt.startswith("\n\nTask:\n")
    assert f"{TRL_VERIFY_HEADING}\n- test \"$(cat answer.txt)\" = 42" in prompt
    assert "final_answer" not in prompt
    assert env.last_reset is not None and env.last_reset.metadata["status"] == "ready"
    assert env.terminal("echo 42 > answer.txt && cat answer.txt") == "42"
    assert env.get_reward() == 1.0
    # No prompt column (or an empty last message): nothing to keep apart from.
    assert env.reset(verify=["test -f nothing-here"]).startswith("Task:\n")
    assert env.terminal("true") == "(no output)"
    assert env.get_reward() == 0.0
