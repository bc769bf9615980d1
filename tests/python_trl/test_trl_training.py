"""TRL's GRPOTrainer with `environment_factory=terminal_env_factory(url)` against the real
terminal env-server, on CPU with a tiny local model: the example
python/examples/trl_grpo_terminal.py, checked.

- the adapter's tool, as TRL itself extracts it from the environment class and renders it
  into the prompt (TRL's probe of the factory, its chat-template rendering, which calls
  `transformers.utils.get_json_schema`, and its tool-call parser);
- one GRPO step with a random model: every rollout is an episode on the server, each
  rollout's reward is the server's verify of its own task (a task folder, `true`, `false`);
- one GRPO step with the tiny model taught to call `terminal`: TRL parses the call, runs it
  through `TerminalEnv.terminal` in the episode's sandbox, and the verifier sees its effect.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

import trl_grpo_terminal as example
from _expected import TERMINAL_SCHEMA
from conftest import TAUGHT_COMMAND, TerminalServer

from openenv_rs.trl import TerminalEnv, terminal_env_factory


def trainer_for(model: Path, url: str, dataset: Any, tmp_path: Path, **config: Any):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=32, use_cpu=True, bf16=False,
                      report_to="none", save_strategy="no", **config)
    return GRPOTrainer(model=str(model), train_dataset=dataset,
                       environment_factory=terminal_env_factory(url), args=args)


def test_trl_extracts_the_terminal_tool(tiny_model: Path, tmp_path: Path) -> None:
    """TRL's own code path: the probe instance's public methods become the tools, the class's
    `get_reward` a reward column; the schema rendered into the prompt is the expected one, and
    TRL's parser turns the model's call back into a call of `terminal(command=...)`."""
    from transformers.utils import get_json_schema
    from trl.chat_template_utils import parse_response

    dataset = example.make_dataset([], ["true"], repeat=1)
    # No server needed: TRL creates one probe instance, which connects only at its first reset.
    trainer = trainer_for(tiny_model, "http://127.0.0.1:9", dataset, tmp_path)

    tools = trainer._env_tools[None]
    assert [tool.__name__ for tool in tools] == ["terminal"]
    assert isinstance(tools[0].__self__, TerminalEnv)
    assert trainer.reward_func_names == ["TerminalEnv"]  # get_reward is the only reward source
    assert get_json_schema(tools[0]) == TERMINAL_SCHEMA

    # The prompt TRL generates from: the tool schema inside the chat template's <tools> block.
    trainer._batch_environments = [None]
    prompt_ids, _, _ = trainer._tokenize_prompts([[{"role": "user", "content": "hi"}]])
    text = trainer.processing_class.decode(prompt_ids[0])
    block = re.search(r"<tools>\n(.*?)\n</tools>", text, re.DOTALL)
    assert block is not None, text
    assert [json.loads(line) for line in block.group(1).splitlines()] == [TERMINAL_SCHEMA]

    call = '<tool_call>\n{"name": "terminal", "arguments": {"command": "ls -la"}}\n</tool_call>'
    ids = trainer.processing_class(call + "<|im_end|>", add_special_tokens=False)["input_ids"]
    parsed = parse_response(trainer.processing_class, ids, prefix=prompt_ids[0], tools=tools)
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "terminal", "arguments": {"command": "ls -la"}}}
    ]


def rewards_by_task(trainer: Any, tasks: Dict[str, str]) -> Dict[str, List[float]]:
    """Each rollout's `TerminalEnv` reward of the last step, keyed by the task whose marker
    (a line of its reset text) is in the rollout's user message."""
    prompts = list(trainer._logs["prompt"])
    rewards = list(trainer._logs["rewards"]["TerminalEnv"])
    assert len(prompts) == len(rewards)
    out: Dict[str, List[float]] = {name: [] for name in tasks}
    for prompt, reward in zip(prompts, rewards):
        content = next(m["content"] for m in prompt if m["role"] == "user")
        names = [name for name, marker in tasks.items() if marker in content]
        assert len(names) == 1, content
        out[names[0]].append(reward)
    return out


def test_grpo_step_with_server_rewards(terminal_server: TerminalServer, tiny_model: Path,
                                       tmp_path: Path) -> None:
    """A random model: the rewards are the server's verdicts on untouched sandboxes, different
    per task, and each of the 6 rollouts (3 tasks x 2 generations) is one episode."""
    dataset = example.make_dataset(["hello-world"], ["true", "false"], repeat=1)
    trainer = example.train(terminal_server.url, str(tiny_model), dataset,
                            output_dir=str(tmp_path / "out"), max_steps=1, num_generations=2,
                            prompts_per_step=3, max_completion_length=32)
    summary = example.summary(trainer)

    assert summary["global_step"] == 1
    assert terminal_server.episodes() == 6
    assert rewards_by_task(trainer, {
        "hello-world": 'named hello.txt',          # the task folder's instruction
        "true": "\n- true\n",                       # the inline tasks' verify commands
        "false": "\n- false\n",
    }) == {"hello-world": [0.0, 0.0], "true": [1.0, 1.0], "false": [0.0, 0.0]}
    assert summary["server_rewards"] == [pytest.approx(1 / 3)]
    assert summary["rewards"] == [pytest.approx(1 / 3)]


def test_grpo_step_with_a_tool_calling_model(terminal_server: TerminalServer, taught_model: Path,
                                             tmp_path: Path) -> None:
    """The taught model calls `terminal(TAUGHT_COMMAND)`: TRL runs it in each rollout's own
    sandbox, and the verifier rewards the task it satisfies (answer 42), not the other (43)."""
    dataset = example.make_dataset([], ['test "$(cat answer.txt)" = 42',
                                        'test "$(cat answer.txt)" = 43'], repeat=1)
    trainer = example.train(terminal_server.url, str(taught_model), dataset,
                            output_dir=str(tmp_path / "out"), max_steps=1, num_generations=2,
                            prompts_per_step=2, max_completion_length=48, temperature=0.3)
    summary = example.summary(trainer)

    assert summary["global_step"] == 1
    assert terminal_server.episodes() == 4
    assert summary["tool_call_frequency"] == [1.0]  # one call per rollout
    for completion in trainer._logs["completion"]:
        assert completion[0]["tool_calls"] == [{"type": "function", "function": {
            "name": "terminal", "arguments": {"command": TAUGHT_COMMAND}}}]
        assert completion[1] == {"role": "tool", "name": "terminal", "content": "(no output)"}
    assert rewards_by_task(trainer, {"42": "= 42\n", "43": "= 43\n"}) == {
        "42": [1.0, 1.0], "43": [0.0, 0.0]}
    assert summary["rewards"] == [pytest.approx(0.5)]
