"""Fixtures of the TRL training tests: the real `env-server` binary serving the terminal env
on 127.0.0.1, port 0 (`ENV_SERVER_BIN`, default `<repo>/target/debug/env-server`), with the
repository's `tasks/` folder and debug logs (each episode's sandbox is logged as `sandbox
ready`), and the tiny local model of python/examples/trl_grpo_terminal.py.

Run with the interpreter of `.venv-trl` (scripts/python-trl.sh makes it):
    scripts/python-trl.sh && .venv-trl/bin/python -m pytest tests/python_trl
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

# Nothing may try the Hub: the model and the tokenizer are built locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "examples"))
sys.path.insert(0, str(REPO / "tests" / "python_wheel"))

from _server import Server, require_binary, server_binary  # noqa: E402

#: The command the taught tiny model runs, and the inline tasks its rewards are checked on.
TAUGHT_COMMAND = "echo 42 > answer.txt"


def pytest_report_header(config: pytest.Config) -> List[str]:
    import openenv_rs
    import torch
    import transformers
    import trl

    return [
        f"openenv_rs {openenv_rs.__version__} from {Path(openenv_rs.__file__).parent}",
        f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        f"server binary: {server_binary()}",
    ]


class TerminalServer(Server):
    """`env-server serve --env terminal` with debug logs, which name each episode's sandbox."""

    def episodes(self) -> int:
        """Sandboxes created for episodes so far (one per reset; the server's start-up
        self-check, logged before `env-server listening`, is not counted)."""
        after_start = self.log().split("env-server listening", 1)[-1]
        return after_start.count("sandbox ready")


@pytest.fixture
def terminal_server(tmp_path: Path) -> Iterator[TerminalServer]:
    """`env-server serve --env terminal --tasks-dir <repo>/tasks` on a free loopback port."""
    argv = [str(require_binary()), "serve", "--env", "terminal", "--host", "127.0.0.1",
            "--port", "0", "--tasks-dir", str(REPO / "tasks")]
    server = TerminalServer(argv, tmp_path / "env-server.log", {"RUST_LOG": "debug"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's tiny randomly initialised Qwen3-style model and local tokenizer."""
    import trl_grpo_terminal as example

    return example.build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def taught_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model taught to answer with one `terminal(TAUGHT_COMMAND)` call, then "Done."."""
    import trl_grpo_terminal as example

    return example.teach_tool_call(tiny_model, TAUGHT_COMMAND, tmp_path_factory.mktemp("taught"))
