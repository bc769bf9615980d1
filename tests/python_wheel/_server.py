"""The real `env-server` binary as a test fixture's process: started on 127.0.0.1, port 0,
ready once it prints its listening line, stopped by PID. Shared by the wheel's tests and the
TRL training tests (`tests/python_trl/conftest.py` imports it from here).

`ENV_SERVER_BIN` names the binary (default `<repo>/target/debug/env-server`). Variables the
server reads as configuration are never inherited from the caller's shell.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"^env-server listening on 127\.0\.0\.1:(\d+)$")
READY_TIMEOUT_S = 20.0
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def server_binary() -> Path:
    return Path(os.environ.get("ENV_SERVER_BIN", REPO / "target" / "debug" / "env-server"))


def require_binary() -> Path:
    """The server binary, or the test fails saying how to build it."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `cargo build -p env-server` (or set ENV_SERVER_BIN)")
    return binary


class Server:
    """One `env-server serve` process started by a test; stopped by PID at teardown."""

    def __init__(self, argv: List[str], log: Path, extra_env: Optional[Dict[str, str]] = None) -> None:
        self.argv = argv
        self.log_path = log
        self._log = open(log, "wb")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ENV_SERVER_") and k != "MAX_CONCURRENT_ENVS"}
        env.update(extra_env or {})
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
                pytest.fail(f"env-server did not start: {self.argv}\n{self.stderr()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.stop()
                pytest.fail(f"env-server exited at start: {self.argv}\n{self.stderr()}")
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
        """Everything the server logged so far (stderr), colour codes removed."""
        if not self._log.closed:
            self._log.flush()
        try:
            return ANSI_RE.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def stderr(self) -> str:
        """The end of the log, for failure messages."""
        return self.log()[-3000:]

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
