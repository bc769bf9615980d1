"""openenv_rs: a fast OpenEnv client, written in Rust.

- :class:`EnvClient` (blocking; releases the GIL while it waits) and :class:`AsyncEnvClient`
  (asyncio) — one WebSocket session each, with OpenEnv's method names: ``reset(**kwargs)``,
  ``step(action)``, ``state()``, ``verify()``, ``list_tools()``, ``call_tool(name, **args)``,
  ``close()``.
- :class:`Pool` — many concurrent episodes over one or more servers, never over a per-server
  session cap: ``async with pool.session() as env: ...`` or ``await pool.run(n, fn)``.
- Typed exceptions under :class:`OpenEnvError`, one per failure kind and wire code.
- :mod:`openenv_rs.trl` — a ``GRPOTrainer(environment_factory=...)`` adapter for terminal
  tasks; :mod:`openenv_rs.terminus` — the Terminus harness helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, List, TypeVar

from . import _native
from ._native import (
    AsyncEnvClient,
    CapacityReachedError,
    ConnectError,
    ConnectionClosedError,
    EnvClient,
    EpisodeDoneError,
    ExecutionError,
    FactoryError,
    ForkError,
    InvalidConfigError,
    InvalidJsonError,
    InvalidUrlError,
    OpenEnvError,
    ProtocolError,
    RequestTimeoutError,
    RpcError,
    ServerError,
    SessionError,
    StepResult,
    Tool,
    ToolCallResult,
    ToolError,
    TransportError,
    UnknownTypeError,
    UnsupportedError,
    ValidationError,
    VerifyResult,
)

__version__: str = _native.__version__

T = TypeVar("T")


class Pool(_native.Pool):
    """Runs episodes across one or more servers with a per-server session cap.

    ``Pool(urls, max_sessions_per_server=64, *, connect_timeout=10.0, request_timeout=60.0,
    keepalive_interval=5.0, max_message_bytes=100 MiB)``. Each session is its own WebSocket
    connection (an OpenEnv session is one connection); a new session goes to the server with
    the most free slots and waits while every server is full.

    >>> pool = Pool(["http://10.0.0.1:8000", "http://10.0.0.2:8000"], 32)
    >>> async with pool.session() as env:            # doctest: +SKIP
    ...     await env.reset()
    >>> rewards = await pool.run(256, episode)       # doctest: +SKIP
    """

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncEnvClient]:
        """An :class:`AsyncEnvClient` holding one slot, closed (slot freed) on exit."""
        env = await self.acquire()
        try:
            yield env
        finally:
            await env.close()

    async def run(
        self,
        episodes: int,
        fn: Callable[[AsyncEnvClient, int], Awaitable[T]],
        *,
        return_exceptions: bool = False,
    ) -> List[Any]:
        """Runs ``await fn(env, i)`` for ``i in range(episodes)``, each on a fresh session,
        as many at once as the pool has slots; returns the results in index order.

        With ``return_exceptions=True`` a failed episode's exception takes its place in the
        list; otherwise the first failure is raised once every episode has ended (the others
        are not cancelled).
        """
        if episodes < 0:
            raise ValueError("episodes must be >= 0")
        gate = asyncio.Semaphore(max(1, self.capacity))

        async def one(index: int) -> T:
            async with gate:
                async with self.session() as env:
                    return await fn(env, index)

        results = await asyncio.gather(
            *(one(i) for i in range(episodes)), return_exceptions=True
        )
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return list(results)


__all__ = [
    "AsyncEnvClient",
    "CapacityReachedError",
    "ConnectError",
    "ConnectionClosedError",
    "EnvClient",
    "EpisodeDoneError",
    "ExecutionError",
    "FactoryError",
    "ForkError",
    "InvalidConfigError",
    "InvalidJsonError",
    "InvalidUrlError",
    "OpenEnvError",
    "Pool",
    "ProtocolError",
    "RequestTimeoutError",
    "RpcError",
    "ServerError",
    "SessionError",
    "StepResult",
    "Tool",
    "ToolCallResult",
    "ToolError",
    "TransportError",
    "UnknownTypeError",
    "UnsupportedError",
    "ValidationError",
    "VerifyResult",
    "__version__",
]
