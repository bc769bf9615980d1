"""Small fake peers for the wheel's tests: scripted WebSocket servers (the `websockets`
library, on an asyncio loop in a background thread) and a raw TCP server that completes the
WebSocket handshake and then breaks the framing.

Every server binds 127.0.0.1 on port 0 and is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
from typing import Any, Awaitable, Callable, Dict, Optional

from websockets.asyncio.server import ServerConnection, serve

Handler = Callable[[ServerConnection], Awaitable[None]]


class WsServer:
    """A `websockets` server running `handler` per connection, in its own thread."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Future[None]] = None
        self.port = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="fake-ws-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake WebSocket server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = self._loop.create_future()

        async def handle(connection: ServerConnection) -> None:
            self.connections += 1
            try:
                await self._handler(connection)
            except Exception:  # noqa: BLE001 - a fake peer: the client side asserts
                pass

        async with serve(handle, "127.0.0.1", 0, compression=None, close_timeout=1) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(timeout=10)


async def silent(connection: ServerConnection) -> None:
    """Reads frames and never answers (the request-timeout peer)."""
    async for _ in connection:
        pass


def observation(obs: Dict[str, Any], reward: Any = None, done: bool = False) -> str:
    meta = obs.get("metadata") or {}
    data: Dict[str, Any] = {"observation": obs, "reward": reward, "done": done}
    if meta:
        data["metadata"] = meta
    return json.dumps({"type": "observation", "data": data})


def error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "data": {"message": message, "code": code}})


async def no_verify(connection: ServerConnection) -> None:
    """An official-style server without the `verify` extension; `bogus` actions get a
    reply of an unknown frame type (a protocol breach)."""
    async for raw in connection:
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "reset":
            await connection.send(observation({"metadata": {}, "echoed_message": "ready"}))
        elif kind == "step" and frame.get("data", {}).get("bogus"):
            await connection.send(json.dumps({"type": "surprise", "data": {}}))
        elif kind == "step":
            await connection.send(observation({"metadata": {}, "echoed_message": "x"}, 0.1))
        elif kind == "close":
            await connection.close()
            return
        else:
            await connection.send(error("UNKNOWN_TYPE", f"Unknown message type: {kind}"))


def _tool_result(text: str) -> Dict[str, Any]:
    return {
        "content": [{"type": "text", "text": text, "annotations": None, "meta": None}],
        "structured_content": {"result": text},
        "meta": {"fastmcp": {"wrap_result": True}},
        "data": text,
        "is_error": False,
    }


def _py_float(value: float) -> str:
    return repr(float(value))


class FakeTerminal:
    """A stand-in for `env-server --env terminal` at the wire (`TERMINAL_ENV.md` §2–§4):
    reset metadata, the `terminal` tool (`touch <file>` creates a file, `cat <file>` reads it,
    anything else echoes), verify (reward = passed/total over `test -f <file>` commands) and
    `EPISODE_DONE` after the episode ends. State is per connection."""

    def __init__(self) -> None:
        self.resets: list = []

    async def __call__(self, connection: ServerConnection) -> None:
        files: Dict[str, str] = {}
        verify: list = []
        done = False
        reward: Optional[float] = None
        steps = 0
        async for raw in connection:
            frame = json.loads(raw)
            kind = frame.get("type")
            data = frame.get("data") or {}
            if kind == "reset":
                self.resets.append(data)
                files, done, reward, steps = {}, False, None, 0
                verify = list(data.get("verify") or [])
                setup = list(data.get("setup") or [])
                message = "Terminus environment ready. Use terminal(command=...) to work."
                if setup:
                    message += f" Setup commands run: {len(setup)}."
                if verify:
                    message += f" Verify commands registered: {len(verify)}."
                meta = {
                    "status": "ready",
                    "sandbox_id": "fake-sandbox",
                    "message": message,
                    "setup_results": [],
                    "verify_commands": verify,
                    "instruction": data.get("instruction") or "",
                }
                await connection.send(observation({"metadata": meta}))
            elif kind == "step":
                name = data.get("tool_name")
                args = data.get("arguments") or {}
                obs: Dict[str, Any] = {"metadata": {}, "tool_name": name}
                if name != "terminal":
                    obs.update(result=None, error={"error_type": "tool_not_found",
                                                   "message": f"Unknown tool: '{name}'"})
                    await connection.send(observation(obs, 0.0))
                    continue
                if done:
                    text = "None" if reward is None else _py_float(reward)
                    obs["metadata"] = {"error_code": "EPISODE_DONE"}
                    obs.update(result=None, error={
                        "error_type": "execution_error",
                        "message": f"Episode is done (reward={text}). "
                        "Call reset() to start a new episode.",
                    })
                    await connection.send(observation(obs, reward, True))
                    continue
                command = str(args.get("command", ""))
                steps += 1
                if command.startswith("touch "):
                    files[command.split(" ", 1)[1]] = ""
                    text = "(no output)"
                elif command.startswith("cat "):
                    text = files.get(command.split(" ", 1)[1], "cat: no such file")
                else:
                    text = f"shell: {command}"
                obs.update(result=_tool_result(text), error=None)
                await connection.send(observation(obs, 0.0))
            elif kind == "state":
                await connection.send(json.dumps({"type": "state", "data": {
                    "episode_id": "fake", "step_count": steps, "done": done}}))
            elif kind == "verify":
                if not done:
                    passed = sum(1 for c in verify if c.startswith("test -f ")
                                 and c.split(" ", 2)[2] in files)
                    reward = passed / len(verify) if verify else 0.0
                    done = True
                await connection.send(json.dumps({"type": "verify", "data": {
                    "reward": reward, "done": True, "details": {"fake": True}}}))
            elif kind == "close":
                await connection.close()
                return
            else:
                await connection.send(error("UNKNOWN_TYPE", f"Unknown message type: {kind}"))


class BrokenFramingServer:
    """Completes the WebSocket handshake, then sends a frame with a reserved opcode (a
    transport-level protocol violation, not a close)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="broken-framing", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                key = b""
                for line in request.split(b"\r\n"):
                    if line.lower().startswith(b"sec-websocket-key:"):
                        key = line.split(b":", 1)[1].strip()
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                conn.settimeout(5)
                try:
                    conn.recv(4096)  # the client's first frame
                    conn.sendall(bytes([0x83, 0x00]))  # FIN + reserved opcode 0x3
                    conn.recv(4096)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()
        self._thread.join(timeout=5)
