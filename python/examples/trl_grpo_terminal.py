"""GRPO training with TRL on terminal tasks served by ``env-server --env terminal``.

The README's "Training with TRL on terminal tasks" example, runnable. Serve the tasks first:

    env-server serve --env terminal --tasks-dir tasks --port 8000

then, with a real model (downloaded from the Hub by transformers):

    python python/examples/trl_grpo_terminal.py --server http://127.0.0.1:8000 \\
        --model Qwen/Qwen3-0.6B --task hello-world --max-steps 10

or, with no Hub access (CPU, seconds per step), a tiny randomly initialised Qwen3-style model
and a byte-level BPE tokenizer built locally into DIR (kept and reused on later runs):

    python python/examples/trl_grpo_terminal.py --server http://127.0.0.1:8000 --tiny /tmp/tiny-qwen3

A random model does not solve tasks: its reward is whatever the server's verifier says about an
untouched sandbox (0.0 for ``hello-world``). ``--teach-command CMD`` first teaches the tiny model
(a few hundred supervised steps, ~10 s) to answer every task with one ``terminal`` call running
CMD and then a short reply, so the tool path (TRL parses the call, ``TerminalEnv.terminal`` runs
it in the sandbox, the server verifies) is exercised end to end, e.g. ``--teach-command 'echo
42 > answer.txt' --verify 'test "$(cat answer.txt)" = 42'`` earns a reward of 1.0.

Each row of the dataset is one episode: ``--task NAME`` adds a task folder of the server's
``--tasks-dir``; ``--verify CMD`` (repeatable: one inline task per command) adds an inline
task whose verifier is CMD. Every row carries every column: ``Dataset.from_list`` takes its
columns from the first row and silently drops keys the first row lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# Nothing here may reach the Hub unless a real model name is given.
for _var in ("HF_HUB_DISABLE_TELEMETRY", "TRL_EXPERIMENTAL_SILENCE"):
    os.environ.setdefault(_var, "1")

#: Added tokens of the Qwen3 vocabulary that its chat template and TRL's Qwen3 response
#: parser rely on (special ones are skipped when decoding; the others are plain text markers).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                 "<think>", "</think>"]

#: What the tiny model is taught to answer after the tool's output (``--teach-command``).
TAUGHT_REPLY = "Done."

#: The repository root (the tokenizer's training text comes from its docs and tasks).
REPO = Path(__file__).resolve().parents[2]


# -- the tiny local model ----------------------------------------------------------------


def _corpus(repo: Path) -> List[str]:
    """Local text to train the tokenizer on: the repo's docs and tasks, plus chat-formatted
    tool calls so JSON, shell commands and the template's markers get merges."""
    texts: List[str] = []
    for pattern in ("*.md", "python/**/*.md", "python/openenv_rs/**/*.py", "tasks/**/*.yaml",
                    "tasks/**/*.sh"):
        for path in sorted(repo.glob(pattern)):
            try:
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
    for command in ("ls -la", "cat hello.txt", "echo 42 > answer.txt", "python3 main.py",
                    "printf 'Hello, world!\\n' > hello.txt", "pwd", "grep -c ERROR app.log"):
        call = json.dumps({"name": "terminal", "arguments": {"command": command}})
        texts.append(f"<|im_start|>assistant\n<tool_call>\n{call}\n</tool_call><|im_end|>\n")
    return texts


def build_tiny_model(out_dir: Path, *, seed: int = 0, vocab_size: int = 2048) -> Path:
    """A randomly initialised Qwen3-style causal LM (2 layers, hidden size 64) and a byte-level
    BPE tokenizer trained on local text, with TRL's copy of the Qwen3 chat template (so TRL
    recognises it: tool rendering, the Qwen3 tool-call parser, its training template).
    Written to ``out_dir`` with ``save_pretrained``; an existing one is reused."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    from trl.chat_template_utils import qwen3_chat_template

    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _corpus(REPO),
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                            show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=8192, clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    tokenizer.chat_template = qwen3_chat_template
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


def teach_tool_call(model_dir: Path, command: str, out_dir: Path, *, steps: int = 300,
                    seed: int = 0) -> Path:
    """Supervised steps that make the tiny model answer any task with one ``terminal`` call
    running ``command``, and answer the tool's output with ``TAUGHT_REPLY``. The sequences
    are built the way TRL builds them (the prompt rendered with the tool schema and the
    generation prompt; the tool message's tokens cut as TRL's ``_get_tool_suffix_ids`` cuts
    them), loss on the model's tokens only. The taught model and its tokenizer are saved to
    ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving

    from openenv_rs.trl import TRL_USAGE, TerminalEnv

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    template = None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)
    tools = [TerminalEnv("http://unused").terminal]
    call = {"type": "function", "function": {"name": "terminal", "arguments": {"command": command}}}
    eos = tokenizer.eos_token_id

    def last_eos(ids: List[int]) -> int:
        return max(k for k, tok in enumerate(ids) if tok == eos)

    def render(messages: List[Dict[str, Any]], gen: bool) -> List[int]:
        return list(tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=template, add_generation_prompt=gen,
            tokenize=True, return_dict=True)["input_ids"])

    # Prompts of many lengths and contents, so the model keys on the assistant header rather
    # than on positions: the row's prompt + the text reset() returns, as TRL sends them.
    rng = random.Random(seed)
    filler = " ".join(_corpus(REPO)).split()
    outputs = ["(no output)", "42", "ERROR: exit code 1", "hello.txt\nlogs"]
    reply = tokenizer(TAUGHT_REPLY + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    examples = []
    for i in range(24):
        start = rng.randrange(len(filler))
        words = filler[start:start + rng.choice([0, 10, 40, 120, 250])]
        text = ("Solve the task in the sandbox.\n\nTask:\n" + " ".join(words) +
                "\n\nEnvironment:\nTerminus environment ready.\n\n" + TRL_USAGE)
        first = [{"role": "user", "content": text}]
        prompt = render(first, True)
        with_call = first + [{"role": "assistant", "content": "", "tool_calls": [call]}]
        turn1 = render(with_call, False)
        # The model's first turn: the call up to and including its end-of-turn token (TRL stops
        # generating there; the newline the template puts after it belongs to the next message).
        cut = last_eos(turn1) + 1
        call_ids = turn1[len(prompt):cut]
        for out in outputs[i % 2::2]:
            with_tool = with_call + [{"role": "tool", "name": "terminal", "content": out}]
            turn2 = render(with_tool, True)
            assert turn2[:cut] == turn1[:cut], "template not prefix-preserving"
            suffix = turn2[cut:]
            ids = prompt + call_ids + suffix + reply
            labels = [-100] * len(prompt) + call_ids + [-100] * len(suffix) + reply
            examples.append((ids, labels))

    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        optim.step()
        optim.zero_grad()
    print(f"taught the tiny model `terminal({command!r})` in {steps} steps "
          f"(last loss {out.loss.item():.4f})", flush=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# -- training ----------------------------------------------------------------------------


def make_dataset(tasks: List[str], verifies: List[str], repeat: int):
    """One row per episode, every row with every column (see the module docstring)."""
    from datasets import Dataset

    rows: List[Dict[str, Any]] = []
    for name in tasks:
        rows.append({"prompt": [{"role": "user", "content": "Solve the task in the sandbox."}],
                     "task_path": name, "verify": None})
    for command in verifies:
        rows.append({"prompt": [{"role": "user", "content": "Solve the task in the sandbox."}],
                     "task_path": None, "verify": [command]})
    if not rows:
        raise SystemExit("no task: pass --task NAME and/or --verify CMD")
    return Dataset.from_list(rows * repeat)


def train(
    server: str,
    model: str,
    dataset,
    *,
    output_dir: str,
    max_steps: int = 1,
    num_generations: int = 2,
    prompts_per_step: int = 1,
    max_completion_length: int = 48,
    max_tool_calling_iterations: Optional[int] = 2,
    temperature: float = 1.0,
    seed: int = 0,
):
    """Runs ``GRPOTrainer(environment_factory=terminal_env_factory(server))`` (on the GPU if
    there is one, else on CPU); returns the trainer (``trainer.state.log_history`` has the
    per-step rewards)."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from openenv_rs.trl import terminal_env_factory

    args = GRPOConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=num_generations * prompts_per_step,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        max_tool_calling_iterations=max_tool_calling_iterations,
        temperature=temperature,
        learning_rate=1e-4,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        train_dataset=dataset,
        environment_factory=terminal_env_factory(server),
        args=args,
    )
    trainer.train()
    return trainer


def summary(trainer) -> Dict[str, Any]:
    """Steps done and the rewards TRL logged (the ``TerminalEnv`` column is ``get_reward()``,
    i.e. the server's verify)."""
    steps = [e for e in trainer.state.log_history if "reward" in e]
    return {
        "global_step": trainer.state.global_step,
        "rewards": [e["reward"] for e in steps],
        "server_rewards": [e.get("rewards/TerminalEnv/mean") for e in steps],
        "tool_call_frequency": [e.get("tools/call_frequency") for e in steps],
        "losses": [e.get("loss") for e in steps],
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="env-server base URL")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="model name or path for transformers (e.g. Qwen/Qwen3-0.6B)")
    which.add_argument("--tiny", metavar="DIR", help="build (or reuse) the tiny local model in DIR")
    parser.add_argument("--teach-command", metavar="CMD",
                        help="with --tiny: first teach the model to call terminal(CMD)")
    parser.add_argument("--task", action="append", default=[], help="task folder (repeatable)")
    parser.add_argument("--verify", action="append", default=[],
                        help="inline task with this verify command (repeatable)")
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--num-generations", type=int, default=2)
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--output-dir", default="/tmp/trl-grpo-terminal")
    args = parser.parse_args(argv)

    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        tiny = Path(args.tiny or "/tmp/openenv-rs-tiny-qwen3")
        build_tiny_model(tiny)
        if args.teach_command:
            tiny = teach_tool_call(tiny, args.teach_command, tiny / "taught")
        model = str(tiny)
    else:
        if args.teach_command:
            parser.error("--teach-command only applies to the tiny model")
        model = args.model
    if not args.task and not args.verify:
        args.task = ["hello-world"]

    dataset = make_dataset(args.task, args.verify, repeat=max(1, args.max_steps * args.prompts_per_step))
    start = time.monotonic()
    trainer = train(
        args.server, model, dataset, output_dir=args.output_dir, max_steps=args.max_steps,
        num_generations=args.num_generations, prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion_length, temperature=args.temperature,
    )
    result = summary(trainer)
    result["train_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(result))
    return 0 if result["global_step"] == args.max_steps else 1


if __name__ == "__main__":
    sys.exit(main())
