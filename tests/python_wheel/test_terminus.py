"""The Terminus harness helpers (`openenv_rs.terminus`, `TERMINAL_ENV.md` §9): the tool spec,
reset kwargs, the initial prompt, every row of the §9.5 parser table, and `terminus_reward`
in all modes (§9.6)."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from openenv_rs.terminus import (
    TERMINUS_TOOL,
    TERMINUS_USAGE,
    TerminusSessionFactory,
    ToolCall,
    build_reset_kwargs,
    build_terminal_tool_call,
    build_tool_message,
    format_initial_prompt,
    terminus_reward,
)
from openenv_rs.terminus import reward as reward_module


def test_tool_spec() -> None:
    assert json.dumps(TERMINUS_TOOL, separators=(",", ":")) == (
        '{"name":"terminal","description":"Run a shell command in the Terminus sandbox, or '
        'submit final_answer to trigger verification.","parameters":{"type":"object",'
        '"properties":{"command":{"type":"string","description":"Shell command to run in the '
        'sandbox."},"final_answer":{"type":"string","description":"Final answer to submit '
        'when the task is complete."}},"additionalProperties":false}}'
    )


# -- §9.2 -----------------------------------------------------------------------------------

RESET_CASES = [
    (  # the spec's example
        {"setup": "echo a", "verify": None, "verify_scripts": ["v1"],
         "sandbox_backend": "local", "other": 1},
        ["ds"], ["dv"], {"sandbox_image": "x"},
        {"sandbox_image": "x", "sandbox_backend": "local", "setup": ["echo a"], "verify": ["v1"]},
    ),
    ("a string task", ["ds"], "dv", None, {"setup": ["ds"], "verify": ["dv"]}),
    ({"setup": [], "verify": ""}, ["ds"], ["dv"], None, {}),  # explicit empties override
    ({"setup_scripts": ["s1", "  ", 3]}, None, None, None, {"setup": ["s1", "3"]}),
    ({"setup": None, "setup_scripts": "s"}, None, None, None, {"setup": ["s"]}),
    (
        {"task_path": "hello-world", "task_id": "t1", "instruction": "do it",
         "shell_mode": "persistent", "hf_sandbox_flavor": "cpu", "forward_hf_token": False},
        None, None, {"sandbox_backend": "local"},
        {"sandbox_backend": "local", "hf_sandbox_flavor": "cpu", "forward_hf_token": False,
         "task_path": "hello-world", "task_id": "t1", "instruction": "do it",
         "shell_mode": "persistent"},
    ),
]


@pytest.mark.parametrize("task,setup,verify,sandbox,expected", RESET_CASES)
def test_build_reset_kwargs(task: Any, setup: Any, verify: Any, sandbox: Any,
                            expected: Dict[str, Any]) -> None:
    got = build_reset_kwargs(task, setup, verify, sandbox)
    assert got == expected
    assert list(got) == list(expected)


def test_build_reset_kwargs_refuses_non_lists() -> None:
    with pytest.raises(TypeError):
        build_reset_kwargs({"setup": 42})


# -- §9.3 -----------------------------------------------------------------------------------

READY_META = {
    "status": "ready",
    "sandbox_id": "sb-1",
    "message": "Terminus environment ready. Use terminal(command=...) to work. "
               "Setup commands run: 1. Verify commands registered: 1.",
    "verify_commands": ["test -f answer.txt"],
}


class Reset:
    def __init__(self, metadata: Dict[str, Any]) -> None:
        self.metadata = metadata
        self.observation = {"metadata": metadata}


def test_format_initial_prompt_dict_task() -> None:
    task = {"instruction": "Write answer.txt", "setup": ["mkdir -p work"], "verify": ["ignored"]}
    assert format_initial_prompt(Reset(READY_META), task) == "\n\n".join([
        "Task:\nWrite answer.txt",
        f"Environment:\n{READY_META['message']}",
        "Setup commands have already run:\n- mkdir -p work",
        "Verification commands will run after final_answer:\n- test -f answer.txt",
        TERMINUS_USAGE,
    ])


@pytest.mark.parametrize("task,instruction", [
    ("plain text", "plain text"),
    ([{"role": "system", "content": "sys"}, {"role": "user", "content": "first"},
      {"role": "assistant", "content": "a"}, {"role": "user", "content": "last"}], "last"),
    ({"prompt": [{"role": "user", "content": "from chat"}]}, "from chat"),
    ({"question": "q?", "task": "t"}, "q?"),
    ({"instruction": None, "prompt": None, "question": None, "task": "t"}, "t"),
    (7, "7"),
])
def test_task_instruction_shapes(task: Any, instruction: str) -> None:
    prompt = format_initial_prompt({"observation": {"metadata": {}}}, task)
    assert prompt.split("\n\n")[0] == f"Task:\n{instruction}"


def test_format_initial_prompt_fallbacks() -> None:
    # No instruction in the task: the reset metadata's, else the default line.
    meta = {"instruction": "from the server", "verify_commands": []}
    assert format_initial_prompt(Reset(meta), None).split("\n\n")[0] == "Task:\nfrom the server"
    bare = format_initial_prompt(None, None)
    assert bare == "Task:\nUse the terminal tool to solve the current task.\n\n" + TERMINUS_USAGE
    # The dict task's verify list when the metadata has none; a custom usage line.
    prompt = format_initial_prompt({}, {"verify_scripts": ["v1", "v2"]}, usage="Go.")
    assert prompt.endswith("Verification commands will run after final_answer:\n- v1\n- v2\n\nGo.")


# -- §9.5: every row of the table -----------------------------------------------------------

NESTED_3000 = '{"arguments": ' * 3000 + '{"command": "deep"}' + "}" * 3000

PARSER_TABLE = [
    ('{"command": "pytest -q"}', {"command": "pytest -q"}),
    ('```json\n{"final_answer": "done"}\n```', {"final_answer": "done"}),
    ('terminal(command="echo terminus > answer.txt")', {"command": "echo terminus > answer.txt"}),
    ("terminal(final_answer='done')", {"final_answer": "done"}),
    ("terminal(final_answer=42)", {"final_answer": "42"}),
    ("terminal(command=ls)", {"command": "ls"}),
    ('<tool_call>{"name": "terminal", "arguments": "{\\"final_answer\\": \\"done\\"}"}</tool_call>',
     {"final_answer": "done"}),
    ('{"name": "other_tool", "arguments": {"command": "ls"}}', {"command": "ls"}),
    ('{"command": "printf terminus > answer.txt", "final_answer": "done"}',
     {"command": "printf terminus > answer.txt"}),
    ('I will run {"command": "ls"} now', {"command": "ls"}),
    ('{"foo": {"command": "x"}}', {"command": "x"}),
    ('{"arguments": "not json"} {"command": "pwd"}', {"command": "pwd"}),
    ('{"command": "a"}{"command": "b"}', {"command": "a"}),
    ('{"command": null, "final_answer": "x"}', {"final_answer": "x"}),
    ('{"final_answer": ""}', {"final_answer": ""}),
    ('{"command": "", "final_answer": "x"}', {"command": "", "final_answer": "x"}),
    ('{"command": "ls", "final_answer": ""}', {"command": "ls", "final_answer": ""}),
    ("", {"command": ""}),
    ("   ", {"command": "   "}),
    ("ls -la", {"command": "ls -la"}),
    ("```python\nls\n```", {"command": "```python\nls\n```"}),
    ('terminal(command="a)b")', {"command": 'terminal(command="a)b")'}),
    ('terminal(command=f"x")', {"command": 'terminal(command=f"x")'}),
    ('terminal(cmd="ls")', {"command": 'terminal(cmd="ls")'}),
    ('terminal("ls")', {"command": 'terminal("ls")'}),
    ('{"foo": 1}', {"command": '{"foo": 1}'}),
    (NESTED_3000, {"command": NESTED_3000}),
]


@pytest.mark.parametrize("text,args", PARSER_TABLE,
                         ids=[f"row{i}" for i in range(len(PARSER_TABLE))])
def test_build_terminal_tool_call_table(text: str, args: Dict[str, str]) -> None:
    call = build_terminal_tool_call(text)
    assert call == ToolCall(id="terminal-0", name="terminal", args=args)


def test_build_terminal_tool_call_values_and_ids() -> None:
    assert build_terminal_tool_call('{"command": true}', "c-7") == ToolCall("c-7", "terminal",
                                                                            {"command": "True"})
    assert build_terminal_tool_call('{"final_answer": 1.0}').args == {"final_answer": "1.0"}
    assert build_terminal_tool_call('{"command": [1, "a"]}').args == {"command": "[1, 'a']"}
    assert build_terminal_tool_call('{"command": {"k": 1}}').args == {"command": "{'k': 1}"}
    # Arguments nested within the cap unwrap; past it, nothing is found.
    within = '{"arguments": ' * 31 + '{"command": "ok"}' + "}" * 31
    assert build_terminal_tool_call(within).args == {"command": "ok"}
    # Never raises, whatever comes in.
    assert build_terminal_tool_call(None).args == {"command": ""}  # type: ignore[arg-type]
    many = "{" * 5000 + '{"command": "late"}'
    assert build_terminal_tool_call(many).args == {"command": many}


def test_build_tool_message() -> None:
    call = ToolCall("call-1", "terminal", {"command": "ls"})
    ok = {"tool_name": "terminal", "error": None,
          "result": {"content": [{"type": "text", "text": "a.txt"}], "data": "a.txt"}}
    message = build_tool_message(call, ok, 0.0, False)
    assert message["role"] == "tool" and message["tool_call_id"] == "call-1"
    assert message["name"] == "terminal"
    assert json.loads(message["content"]) == {
        "tool_name": "terminal", "arguments": {"command": "ls"}, "output": "a.txt",
        "reward": 0.0, "done": False,
    }
    assert message["content"] == json.dumps(json.loads(message["content"]), sort_keys=True)
    no_data = dict(ok, result={"content": [{"type": "text", "text": "x"},
                                           {"type": "text", "text": "y"}]})
    assert json.loads(build_tool_message(call, no_data)["content"])["output"] == "xy"
    failed = {"tool_name": "terminal", "result": None,
              "error": {"error_type": "timeout", "message": "slow"}}
    data = json.loads(build_tool_message(call, failed, None, True)["content"])
    assert data["output"] is None and data["error"]["error_type"] == "timeout"
    assert data["done"] is True


# -- §9.6 -----------------------------------------------------------------------------------


def tool(content: Any) -> Dict[str, Any]:
    return {"role": "tool", "content": content}


COMPAT = [
    [tool('{"reward": 0.25}'), tool('{"done": true, "reward": 1.0}')],
    [{"role": "assistant", "content": "working"},
     tool("out\nVerification: 1/2 passed; reward=0.5")],
    [{"role": "assistant", "content": "no tools"}],
]


@pytest.mark.parametrize("mode", ["legacy", "json_then_summary"])
def test_terminus_reward_compat(mode: str) -> None:
    assert terminus_reward(COMPAT, mode=mode) == [1.0, 0.5, 0.0]


def test_terminus_reward_json_mode_reads_json_only() -> None:
    # The summary line is not JSON: only the legacy and default modes read it.
    assert terminus_reward(COMPAT, mode="json") == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("content,legacy,default,json_only", [
    ('{"reward": 0.75}', 0.75, 0.75, 0.75),
    ('{"reward": true}', 1.0, None, None),
    ('{"reward": "0.5"}', 0.5, None, None),
    ('{"reward": "abc"}', None, None, None),
    ('{"reward": null, "output": "reward=0.9"}', 0.9, None, None),
    ("reward=1e-05", 1.0, None, None),
    ("agent printed: echo reward=1", 1.0, None, None),
    ("Verification: 1/3 passed; reward=0.3333333333333333", 0.3333333333333333,
     0.3333333333333333, None),
    ("Verification: 0/1 passed; reward=1e-05", 1.0, 1e-05, None),
    ("Verification: 1/1 passed; reward=1.0\nthen: Verification: 0/1 passed; reward=0.0",
     1.0, 1.0, None),
    ("x\nVerification: 1/2 passed; reward=0.5\nVerification: 2/2 passed; reward=1.0",
     0.5, 1.0, None),
    ("[1, 2]", None, None, None),
    ("0.5", None, None, None),
    (1.5, None, None, None),
])
def test_tool_message_reward_modes(content: Any, legacy: Any, default: Any,
                                   json_only: Any) -> None:
    read = reward_module.tool_message_reward
    assert read(content, "legacy") == legacy
    assert read(content, "json_then_summary") == default
    assert read(content, "json") == json_only


def test_terminus_reward_shapes() -> None:
    assert terminus_reward() == []
    assert terminus_reward(["plain text completion", None]) == [0.0, 0.0]
    # Last reward wins; messages without one leave it; extra kwargs (TRL's) are ignored.
    completion = [tool('{"reward": 0.2}'), tool("no reward here"), "not a dict",
                  {"role": "user", "content": '{"reward": 9}'}]
    assert terminus_reward([completion], prompts=["p"], environments=None) == [0.2]
    with pytest.raises(ValueError):
        terminus_reward([], mode="nope")
    assert terminus_reward is reward_module.terminus_reward


# -- sessions -------------------------------------------------------------------------------


def test_session_factory_on_a_fake_terminal(fake_terminal) -> None:
    factory = TerminusSessionFactory(fake_terminal.url, default_verify=["test -f out"])
    assert factory.tools() == [TERMINUS_TOOL]
    session = factory.create({"instruction": "make out"}, seed=3, episode_id="ep")
    assert fake_terminal.handler.resets[-1] == {"instruction": "make out", "verify": ["test -f out"], "seed": 3,
                                               "episode_id": "ep"}
    assert session.initial_prompt.startswith("Task:\nmake out\n\nEnvironment:\n")
    message = session.call(build_terminal_tool_call('{"command": "touch out"}', "c1"))
    assert json.loads(message["content"])["output"] == "(no output)"
    assert session.done is False
    result = session.verify_result()  # a non-final call's reward is 0.0 (§4.1)
    assert result["env_reward"] == 0.0 and result["done"] is False
    assert result["metrics"] == {
        "done": False, "step_count": 1, "commands": 1, "verify_commands": 1,
        "setup_commands": 0, "submitted_answer": False, "sandbox_id": "fake-sandbox",
    }
    session.close()
    empty = factory.create("no calls")
    with pytest.raises(RuntimeError, match="did not produce an environment reward"):
        empty.verify_result()
    empty.close()
