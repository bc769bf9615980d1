"""Fixtures of the TRL training tests: the real `env-server` binary serving the terminal env
on 127.0.0.1, port 0 (`ENV_SERVER_BIN`, default `<repo>/target/debug/env-server`), with the
repository's `tasks/` folder and debug logs (each episode's sandbox is logged as `sandbox
ready`), and the tiny local model of python/examples/trl_grpo_terminal.py.

Run with the interpreter of `.venv-trl` (scripts/python-trl.sh makes it):
    scripts/python-trl.sh && .venv-trl/bin/python -m pytest tests/python_trl
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
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

READY_RE = re.compile(r"^env-server listening on 127\.0\.0\.1:(\d+)$")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
READY_TIMEOUT_S = 20.0
#: The command the taught tiny model runs, and the inline tasks its rewards are checked on.
TAUGHT_COMMAND = "echo 42 > answer.txt"


def server_binary() -> Path:
    return Path(os.environ.get("ENV_SERVER_BIN", REPO / "target" / "debug" / "env-server"))


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


class Server:
    """One `env-server serve --env terminal` process; stopped by PID at teardown."""

    def __init__(self, argv: List[str], log: Path) -> None:
        self.argv = argv
        self.log_path = log
        self._log = open(log, "wb")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ENV_SERVER_") and k != "MAX_CONCURRENT_ENVS"}
        env["RUST_LOG"] = "debug"
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            env=env, start_new_session=True,
        )
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            readable, _, _ = select.select([fd], [], [], READY_TIMEOUT_S)
            if not readable:
                self.stop()
                pytest.fail(f"env-server did not start: {self.argv}\n{self.log()[-3000:]}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.stop()
                pytest.fail(f"env-server exited at start: {self.argv}\n{self.log()[-3000:]}")
            buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        match = READY_RE.match(line)
        if match is None:
            self.stop()
            pytest.fail(f"unexpected first line {line!r} from {self.argv}")
        return int(match.group(1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        try:
            return ANSI_RE.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def episodes(self) -> int:
        """Sandboxes created for episodes so far (one per reset; the server's start-up
        self-check, logged before `env-server listening`, is not counted)."""
        after_start = self.log().split("env-server listening", 1)[-1]
        return after_start.count("sandbox ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def terminal_server(tmp_path: Path) -> Iterator[Server]:
    """`env-server serve --env terminal --tasks-dir <repo>/tasks` on a free loopback port."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `cargo build -p env-server` (or set ENV_SERVER_BIN)")
    argv = [str(binary), "serve", "--env", "terminal", "--host", "127.0.0.1", "--port", "0",
            "--tasks-dir", str(REPO / "tasks")]
    server = Server(argv, tmp_path / "env-server.log")
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
