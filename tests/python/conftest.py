"""Fixtures: the real `env-server` binary on 127.0.0.1, port 0, serving the echo env.

`ENV_SERVER_BIN` names the binary (default `<repo>/target/debug/env-server`). The server prints
exactly one line, `env-server listening on 127.0.0.1:<port>`, on stdout once it accepts
connections; the fixture reads it with a deadline and ends the process (by its PID, SIGTERM then
SIGKILL) at teardown. A server that died during a test fails that test's teardown.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from _support import CLIENT_DIST, CLIENT_VERSION, GEN, REPO

READY_RE = re.compile(r"^env-server listening on 127\.0\.0\.1:(\d+)$")
READY_TIMEOUT_S = float(os.environ.get("ENV_SERVER_READY_TIMEOUT_S", "15"))
# Variables the server reads as configuration (DESIGN.md): never inherited from the caller's shell.
_CONFIG_VARS = ("MAX_CONCURRENT_ENVS", "TERMINUS_SANDBOX_BACKEND")


def server_binary() -> Path:
    return Path(os.environ.get("ENV_SERVER_BIN", REPO / "target" / "debug" / "env-server"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"official client: {CLIENT_DIST} {CLIENT_VERSION} (protocol generation {GEN})",
        f"server binary: {server_binary()}",
    ]


class EnvServer:
    """One running `env-server serve --env echo` process started by this test session."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.port: int | None = None
        self.stdout_rest = bytearray()  # everything after the ready line
        self._log = open(log_path, "wb")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ENV_SERVER_") and k not in _CONFIG_VARS
        }
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self._drain: threading.Thread | None = None
        self._stopped = False
        self.killed = False  # SIGTERM was not enough within 5 s

    # -- start-up -----------------------------------------------------------------------
    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = bytearray()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start(f"no ready line within {timeout_s} s (stdout so far: {bytes(buf)!r})")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self._fail_start(
                    f"stdout closed before the ready line (exit code {self.proc.wait(5)}, "
                    f"stdout {bytes(buf)!r})"
                )
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        text = line.decode("utf-8", "replace")
        m = READY_RE.match(text)
        if m is None:
            self._fail_start(
                f"first stdout line is {text!r}, expected 'env-server listening on 127.0.0.1:<port>'"
            )
        self.port = int(m.group(1))
        self.stdout_rest += rest
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _drain_stdout(self) -> None:
        # Keep reading so the server never blocks on a full pipe; kept for the CLI test.
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.stdout_rest += chunk

    def _fail_start(self, why: str) -> None:
        self.stop()
        pytest.fail(f"env-server did not start: {why}\nargv: {self.argv}\n{self.stderr_tail()}")

    # -- addresses ----------------------------------------------------------------------
    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL as an official client is given it (`http://…`; the client appends `/ws`)."""
        return f"http://{self.host_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host_port}/ws"

    # -- teardown -----------------------------------------------------------------------
    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return f"server stderr ({self.log_path}), last {limit} chars:\n{text[-limit:]}"

    def stop(self) -> int | None:
        """End the process by PID. Returns its exit code if it had already exited by itself."""
        if self._stopped:
            return None
        self._stopped = True
        died_early = self.proc.poll()
        if died_early is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._drain is not None:
            self._drain.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return died_early


def _start(extra: tuple[str, ...], log_path: Path) -> EnvServer:
    binary = server_binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"server binary {binary} is missing: build it with `cargo build -p env-server` "
            "in the repository root, or point ENV_SERVER_BIN at one"
        )
    env = [] if "--env" in extra else ["--env", "echo"]
    argv = [str(binary), "serve", *env, "--host", "127.0.0.1", "--port", "0", *extra]
    server = EnvServer(argv, log_path)
    server.wait_ready()
    return server


@pytest.fixture
def server_factory(tmp_path: Path) -> Callable[..., EnvServer]:
    """Start a server with extra flags, e.g. `server_factory("--max-sessions", "1")`; the env
    is `echo` unless the flags name one (`"--env", "terminal"`)."""
    started: list[EnvServer] = []

    def start(*extra: str) -> EnvServer:
        server = _start(extra, tmp_path / f"env-server-{len(started)}.log")
        started.append(server)
        return server

    yield start

    crashed = []
    for server in started:
        code = server.stop()
        if code is not None:
            crashed.append(f"{server.argv} exited by itself with code {code}\n{server.stderr_tail()}")
    if crashed:
        pytest.fail("env-server died during the test:\n" + "\n".join(crashed))


@pytest.fixture
def server(server_factory: Callable[..., EnvServer]) -> EnvServer:
    """A fresh server with default flags (session cap 64)."""
    return server_factory()
