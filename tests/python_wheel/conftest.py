"""Fixtures of the `openenv-rs` wheel's tests: the real `env-server` binary on 127.0.0.1,
port 0 (`ENV_SERVER_BIN`, default `<repo>/target/debug/env-server`), and fake peers.

The wheel must be installed in the interpreter running pytest (`scripts/python-wheel.sh`
installs it into `.venv`). Episode tests are parametrized over the environments the binary
serves: `echo` always, `terminal` once `env-server serve --help` lists it among the `--env`
values (skipped with the reason until then).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fakes import BrokenFramingServer, FakeTerminal, WsServer, no_verify, silent  # noqa: E402

from _server import Server, require_binary, server_binary  # noqa: E402


def served_envs() -> List[str]:
    """The `--env` values the binary accepts (from `serve --help`)."""
    binary = server_binary()
    if not binary.is_file():
        return []
    out = subprocess.run(
        [str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    section = out.split("--env", 1)[1] if "--env" in out else ""
    match = re.search(r"\[possible values: ([^\]]+)\]", section)
    return [v.strip() for v in match.group(1).split(",")] if match else []


SERVED = served_envs()


def pytest_report_header(config: pytest.Config) -> List[str]:
    import openenv_rs

    return [
        f"openenv_rs {openenv_rs.__version__} from {Path(openenv_rs.__file__).parent}",
        f"server binary: {server_binary()} (envs: {', '.join(SERVED) or 'none'})",
    ]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts `env-server serve --env <env> [flags…]`; every server is stopped at teardown."""
    started: List[Server] = []
    binary = require_binary()

    def start(*flags: str, env: str = "echo") -> Server:
        argv = [str(binary), "serve", "--env", env, "--host", "127.0.0.1", "--port", "0", *flags]
        server = Server(argv, tmp_path / f"env-server-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def echo_server(start_server: Callable[..., Server]) -> Server:
    return start_server()


class EnvKind:
    """How to drive one episode of an environment: reset kwargs, one action that earns a
    known reward, and what verify then returns."""

    def __init__(self, name: str) -> None:
        self.name = name

    def flags(self) -> List[str]:
        return []

    def reset_kwargs(self) -> Dict[str, Any]:
        if self.name == "terminal":
            return {"verify": ["test -f done.txt"]}
        return {"seed": 7, "difficulty": "easy"}

    def action(self) -> Dict[str, Any]:
        if self.name == "terminal":
            return {"type": "call_tool", "tool_name": "terminal",
                    "arguments": {"command": "touch done.txt && echo made"}}
        return {"message": "hello"}

    def check_step(self, result: Any) -> None:
        if self.name == "terminal":
            assert result.observation["error"] is None, result.observation
            assert result.observation["result"]["data"] == "made"
            assert result.done is False
        else:
            assert result.observation["echoed_message"] == "hello"
            assert result.reward == pytest.approx(0.5)

    @property
    def verified_reward(self) -> float:
        return 1.0 if self.name == "terminal" else 0.5

    @property
    def verify_ends_episode(self) -> bool:
        return self.name == "terminal"


@pytest.fixture(params=[
    "echo",
    pytest.param("terminal", marks=pytest.mark.skipif(
        "terminal" not in SERVED,
        reason="env-server does not serve `terminal` yet (`serve --help` lists --env values: "
        + (", ".join(SERVED) or "none") + ")",
    )),
])
def env_kind(request: pytest.FixtureRequest) -> EnvKind:
    return EnvKind(request.param)


@pytest.fixture
def kind_server(env_kind: EnvKind, start_server: Callable[..., Server]) -> Server:
    return start_server(*env_kind.flags(), env=env_kind.name)


@pytest.fixture
def terminal_server(start_server: Callable[..., Server]) -> Server:
    """`env-server --env terminal` (local bubblewrap sandbox), skipped until it is served."""
    if "terminal" not in SERVED:
        pytest.skip("env-server does not serve `terminal` yet (`serve --help` lists --env values: "
                    + (", ".join(SERVED) or "none") + ")")
    return start_server(env="terminal")


@pytest.fixture
def silent_server() -> Iterator[WsServer]:
    server = WsServer(silent)
    yield server
    server.stop()


@pytest.fixture
def no_verify_server() -> Iterator[WsServer]:
    server = WsServer(no_verify)
    yield server
    server.stop()


@pytest.fixture
def fake_terminal() -> Iterator[WsServer]:
    handler = FakeTerminal()
    server = WsServer(handler)
    server.handler = handler  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def broken_framing() -> Iterator[BrokenFramingServer]:
    server = BrokenFramingServer()
    yield server
    server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_url() -> str:
    """A URL with nothing listening."""
    return f"http://127.0.0.1:{free_port()}"
