"""Helpers shared by the end-to-end tests against the official OpenEnv Python clients.

The same test files run in two virtual environments (`scripts/python-venvs.sh`): `.venv` with
`openenv` 0.10.0 and `.venv-core030` with `openenv-core` 0.3.0. Both install the module
`openenv`; which distribution provides it decides the client generation, and the tests branch on
it where the two generations legitimately differ (PROTOCOL.md §8).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
# shared/ sits beside the project root (shared/README.md); OPENENV_RS_SHARED overrides it.
SHARED = Path(os.environ.get("OPENENV_RS_SHARED", REPO.parent / "shared"))
CAPTURES = SHARED / "spec" / "captures"


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _client_generation() -> tuple[str, str, str]:
    """(distribution, version, generation) of the installed official client."""
    found = [(d, v) for d in ("openenv", "openenv-core") if (v := _installed(d)) is not None]
    if len(found) != 1:
        raise RuntimeError(
            "exactly one of the distributions 'openenv' and 'openenv-core' must be installed; "
            f"found {found or 'neither'} (run scripts/python-venvs.sh and use .venv or .venv-core030)"
        )
    dist, version = found[0]
    if dist == "openenv" and version == "0.10.0":
        return dist, version, "0.10"
    if dist == "openenv-core" and version == "0.3.0":
        return dist, version, "0.3"
    raise RuntimeError(
        f"{dist} {version} is installed; these tests are written for openenv 0.10.0 and "
        "openenv-core 0.3.0 (tests/python/requirements-*.txt)"
    )


CLIENT_DIST, CLIENT_VERSION, GEN = _client_generation()
IS_010 = GEN == "0.10"
IS_030 = GEN == "0.3"


def run(coro_factory: Callable[[], Awaitable[T]], timeout_s: float = 20.0) -> T:
    """Run one async test body on a fresh event loop, with a deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro_factory(), timeout_s)

    return asyncio.run(bounded())


def eventually(ready: Callable[[], T], within_s: float = 5.0, what: str = "condition") -> T:
    """Poll `ready()` until it returns a truthy value or the deadline passes (no bare sleeps)."""
    deadline = time.monotonic() + within_s
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within_s} s (last value {value!r})")
        time.sleep(0.01)


async def eventually_async(
    ready: Callable[[], Awaitable[T]], within_s: float = 5.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + within_s
    while True:
        value = await ready()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within_s} s (last value {value!r})")
        await asyncio.sleep(0.01)


def server_error(message: str, code: str) -> str:
    """The text of the RuntimeError every official client raises for an `error` frame."""
    return f"Server error: {message} (code: {code})"


UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_EPISODE_UUID = re.compile(r'"episode_id":"' + UUID_RE + '"')


def mask_uuid_episode_ids(frame: str) -> str:
    """Replace uuid4 episode ids (random per session) so frames compare byte for byte."""
    return _EPISODE_UUID.sub('"episode_id":"<uuid4>"', frame)


def is_uuid4(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(UUID_RE, value) is not None


def read_capture(name: str) -> str:
    path = CAPTURES / name
    if not path.is_file():
        raise FileNotFoundError(
            f"golden capture {path} is missing: shared/ must sit beside the repository "
            "(or set OPENENV_RS_SHARED to its path)"
        )
    return path.read_text(encoding="utf-8")


def capture_exchanges(name: str, ws_no: int) -> list[tuple[str, str]]:
    """The C->S / S->C text frames of connection `ws#<n>` in a `*.frames.txt` capture, in order.

    Each item is (direction, text), direction "C->S" or "S->C"; binary frames and open/close
    lines are left out (tests state those explicitly).
    """
    prefix = f"ws#{ws_no} "
    out: list[tuple[str, str]] = []
    for line in read_capture(name).splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):]
        for direction in ("C->S ", "S->C "):
            if rest.startswith(direction):
                text = rest[len(direction):]
                if not text.startswith("<binary"):
                    out.append((direction.strip(), text))
    return out


def capture_http(name: str) -> list[tuple[str, str, str, int, str]]:
    """The `HTTP <method> <path> body=<req> -> <status> <resp>` lines of a capture."""
    out = []
    pat = re.compile(r"^HTTP (\S+) (\S+) body=(.*?) -> (\d{3}) (.*)$")
    for line in read_capture(name).splitlines():
        m = pat.match(line)
        if m:
            out.append((m[1], m[2], m[3], int(m[4]), m[5]))
    return out


def compact(obj: Any) -> str:
    """JSON the way the official server writes it (pydantic `model_dump_json`)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


CAPACITY_MESSAGE = "Server at capacity: 1/1 sessions active. Cannot accept new connections."
CAPACITY_FRAME = (
    '{"type":"error","data":{"message":"' + CAPACITY_MESSAGE + '","code":"CAPACITY_REACHED",'
    '"active_sessions":1,"max_sessions":1}}'
)


async def refused_first_call(client) -> None:
    """A client's first call on a server at capacity (`--max-sessions 1`, slot taken).

    0.10 clients read the queued CAPACITY_REACHED frame even when the server's close races their
    send and raise it as RuntimeError. 0.3 clients may instead see the close on their first send
    (PROTOCOL.md §3.5: "older ones may just see a closed socket"); then the refusal frame must
    still be queued on the socket, followed by close 1000.
    """
    from websockets.exceptions import ConnectionClosed

    try:
        await client.reset()
    except RuntimeError as err:
        assert str(err) == server_error(CAPACITY_MESSAGE, "CAPACITY_REACHED")
        return
    except ConnectionClosed as err:
        if IS_010:
            raise AssertionError(
                "the 0.10 client saw the close without the queued CAPACITY_REACHED frame: "
                f"{err!r}"
            ) from err
        assert err.rcvd is not None and err.rcvd.code == 1000, err
        assert await client._ws.recv() == CAPACITY_FRAME
        return
    raise AssertionError("a client got a session past --max-sessions 1")
