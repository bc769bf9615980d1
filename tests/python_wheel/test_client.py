"""Sync and async episodes against the real server, context managers, lazy connect, the
GIL released during I/O, and the Python ↔ JSON conversion."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Dict

import pytest

import openenv_rs
from openenv_rs import AsyncEnvClient, EnvClient, StepResult, Tool, ToolCallResult, VerifyResult


def test_sync_episode(env_kind, kind_server) -> None:
    with EnvClient(kind_server.url) as env:
        assert env.url == f"ws://127.0.0.1:{kind_server.port}/ws"
        first = env.reset(**env_kind.reset_kwargs())
        assert isinstance(first, StepResult)
        assert first.done is False
        assert isinstance(first.observation, dict)
        assert first.observation["metadata"] == first.metadata
        step = env.step(env_kind.action())
        env_kind.check_step(step)
        state = env.state()
        assert list(state)[:2] == ["episode_id", "step_count"]
        assert state["step_count"] == 1
        verified = env.verify()
        assert isinstance(verified, VerifyResult)
        assert verified.reward == pytest.approx(env_kind.verified_reward)
        assert verified.done is env_kind.verify_ends_episode
        assert isinstance(verified.details, dict)
    assert env.closed


def test_async_episode(env_kind, kind_server) -> None:
    async def main() -> None:
        async with AsyncEnvClient(kind_server.url) as env:
            first = await env.reset(**env_kind.reset_kwargs())
            assert first.done is False
            env_kind.check_step(await env.step(env_kind.action()))
            assert (await env.state())["step_count"] == 1
            verified = await env.verify()
            assert verified.reward == pytest.approx(env_kind.verified_reward)
        assert env.closed

    asyncio.run(main())


def test_echo_reset_metadata_and_reward_types(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        first = env.reset(seed=42, episode_id="ep-1", difficulty="easy")
        assert first.observation == {
            "metadata": {"seed": 42, "reset_kwargs": {"difficulty": "easy"}},
            "echoed_message": "ready",
            "message_length": 0,
        }
        assert first.reward is None
        assert first.metadata == {"seed": 42, "reset_kwargs": {"difficulty": "easy"}}
        bye = env.step({"message": "bye"})
        assert bye.done is True and isinstance(bye.reward, float)
        assert env.state() == {"episode_id": "ep-1", "step_count": 1, "last_message": "bye"}
        assert "StepResult(" in repr(bye)


def test_mcp_tools(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        tools = env.list_tools()
        assert [t.name for t in tools] == ["echo_message"]
        assert isinstance(tools[0], Tool)
        assert tools[0].input_schema["properties"]["message"]["type"] == "string"
        assert env.call_tool("echo_message", message="hi") == "hi"
        full = env.call_tool_result("echo_message", message="via step")
        assert isinstance(full, ToolCallResult)
        assert full.value == "via step"
        assert full.observation["tool_name"] == "echo_message"
        assert full.done is False


def test_async_mcp_tools(echo_server) -> None:
    async def main() -> None:
        async with AsyncEnvClient(echo_server.url) as env:
            assert [t.name for t in await env.list_tools()] == ["echo_message"]
            assert await env.call_tool("echo_message", message="x") == "x"
            assert (await env.call_tool_result("echo_message", message="y")).value == "y"

    asyncio.run(main())


def test_lazy_connect_and_explicit_connect(echo_server) -> None:
    env = EnvClient(echo_server.url)  # no connection yet
    assert env.connect() is env
    assert env.reset().observation["echoed_message"] == "ready"
    env.close()
    env.close()  # a second close does nothing
    lazy = EnvClient(echo_server.url)
    assert lazy.step({"message": "first call connects"}).reward == pytest.approx(1.9)
    lazy.close()

    async def main() -> None:
        env = AsyncEnvClient(echo_server.url)
        assert await env.connect() is env
        await env.reset()
        await env.close()
        await env.close()

    asyncio.run(main())


def test_url_normalisation(echo_server) -> None:
    port = echo_server.port
    for given in (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}/", f"ws://127.0.0.1:{port}"):
        assert EnvClient(given).url == f"ws://127.0.0.1:{port}/ws"
    assert AsyncEnvClient(f"http://127.0.0.1:{port}/p").url == f"ws://127.0.0.1:{port}/p/ws"


def test_concurrent_first_calls_share_one_connection(echo_server) -> None:
    async def main() -> None:
        env = AsyncEnvClient(echo_server.url)
        results = await asyncio.gather(*(env.step({"message": "m"}) for _ in range(20)))
        assert all(r.observation["echoed_message"] == "m" for r in results)
        # One session: the server counted all 20 steps in it.
        assert (await env.state())["step_count"] == 20
        await env.close()

    asyncio.run(main())


def test_gil_is_released_while_waiting(silent_server) -> None:
    """A sync call blocked on the server leaves other Python threads running."""
    env = EnvClient(silent_server.url, request_timeout=1.0)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        start = time.monotonic()
        with pytest.raises(openenv_rs.RequestTimeoutError):
            env.step({"message": "never answered"})
        waited = time.monotonic() - start
    finally:
        stop.set()
        counter.join()
    assert waited >= 0.9
    # With the GIL held for the whole second the counter could not have run at all.
    assert ticks > 100, ticks


def test_cancelled_await_abandons_the_request(silent_server, echo_server) -> None:
    async def main() -> None:
        env = AsyncEnvClient(silent_server.url, request_timeout=30.0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(env.step({"message": "never answered"}), 0.2)
        # The request was cancelled mid-flight: its connection cannot pair replies any more.
        with pytest.raises(openenv_rs.ConnectionClosedError, match="cancelled"):
            await asyncio.wait_for(env.state(), 5)
        await env.close()
        # Cancelling right away (before any reply) works too, and touches no other client.
        stuck = AsyncEnvClient(silent_server.url)
        await stuck.connect()
        pending = stuck.step({"message": "a"})
        assert pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await stuck.close()
        async with AsyncEnvClient(echo_server.url) as other:
            assert (await other.step({"message": "b"})).observation["echoed_message"] == "b"

    asyncio.run(main())


def test_awaitable_needs_a_running_loop(echo_server) -> None:
    env = AsyncEnvClient(echo_server.url)
    with pytest.raises(RuntimeError, match="no running event loop"):
        env.reset()


# -- Python ↔ JSON -------------------------------------------------------------------------


class Model:
    """Quacks like a pydantic model (OpenEnv actions are)."""

    def model_dump(self) -> Dict[str, Any]:
        return {"message": "from model_dump", "metadata": {}}


def test_action_conversion(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        env.reset()
        step = env.step(Model())
        assert step.observation["echoed_message"] == "from model_dump"
        step = env.step({"message": "héllo ✓ 😀", "metadata": {"n": [1, 2.5, True, None, (1, 2)]}})
        assert step.observation["echoed_message"] == "héllo ✓ 😀"
        with pytest.raises(TypeError, match="must be a dict"):
            env.step(["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not JSON serializable"):
            env.step({"message": object()})
        with pytest.raises(ValueError, match="not JSON compliant"):
            env.step({"message": "x", "metadata": {"bad": math.nan}})
        with pytest.raises(OverflowError):
            env.step({"message": "x", "metadata": {"big": 2**70}})
        # The session is unaffected by refused conversions.
        assert env.step({"message": "ok"}).observation["echoed_message"] == "ok"


def test_reset_kwargs_round_trip(echo_server) -> None:
    """Values survive the round trip with their Python types (the echo env sends the
    reset kwargs back in its metadata)."""
    kwargs = {
        "i": 1,
        "f": 1.0,
        "neg": -3,
        "big": 2**63 - 1,
        "unsigned": 2**64 - 1,
        "b": False,
        "none": None,
        "nested": {"list": [1, "two", {"three": 3.5}], "empty": {}},
        "tuple": (1, 2),
    }
    with EnvClient(echo_server.url) as env:
        echoed = env.reset(**kwargs).metadata["reset_kwargs"]
    expected = dict(kwargs, tuple=[1, 2])
    assert echoed == expected
    assert type(echoed["f"]) is float and type(echoed["i"]) is int
    assert list(echoed) == list(expected)


def test_non_string_keys_follow_json_dumps(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        meta = env.reset(keys={1: "a", 2.5: "b", False: "c", None: "d"}).metadata
    assert meta["reset_kwargs"]["keys"] == {"1": "a", "2.5": "b", "false": "c", "null": "d"}
