"""The asyncio client is driven on its event loop's thread (python/src/bridge.rs): one driver
per thread, shared by successive loops; connections bound to their thread; timers, pings and
cross-thread wake-ups served while the loop runs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List

import pytest

import openenv_rs
from openenv_rs import AsyncEnvClient, Pool, RequestTimeoutError


def run_in_thread(fn: Any) -> Any:
    """Runs `fn()` on a new thread and returns its result (or raises its exception)."""
    out: Dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            out["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


def arun(make: Callable[[], Awaitable[Any]]) -> Any:
    """`asyncio.run` of one call (the client's methods need a running loop when called)."""

    async def main() -> Any:
        return await make()

    return asyncio.run(main())


def test_a_client_serves_successive_loops_on_its_thread(echo_server) -> None:
    env = AsyncEnvClient(echo_server.url)
    arun(env.reset)
    for message in ("one", "two", "three"):
        step = arun(lambda: env.step({"message": message}))
        assert step.observation["echoed_message"] == message
    assert arun(env.state)["step_count"] == 3
    arun(env.close)


def test_a_client_used_from_another_thread_raises_and_keeps_working_at_home(echo_server) -> None:
    env = AsyncEnvClient(echo_server.url)
    arun(env.reset)

    with pytest.raises(openenv_rs.OpenEnvError, match="another thread") as caught:
        run_in_thread(lambda: arun(lambda: env.step({"message": "elsewhere"})))
    assert type(caught.value) is openenv_rs.OpenEnvError
    with pytest.raises(openenv_rs.OpenEnvError, match="another thread"):
        run_in_thread(lambda: arun(env.close))

    # Nothing was sent from the other thread: the session is intact at home.
    step = arun(lambda: env.step({"message": "home"}))
    assert step.observation["echoed_message"] == "home"
    assert arun(env.state)["step_count"] == 1
    arun(env.close)


def test_loops_on_several_threads_at_once(echo_server) -> None:
    def thread_main(t: int) -> List[str]:
        async def episode(i: int) -> str:
            async with AsyncEnvClient(echo_server.url) as env:
                await env.reset()
                for _ in range(20):
                    step = await env.step({"message": f"{t}-{i}"})
                return str(step.observation["echoed_message"])

        async def main() -> List[str]:
            return list(await asyncio.gather(*(episode(i) for i in range(10))))

        return asyncio.run(main())

    results: Dict[int, List[str]] = {}
    errors: List[BaseException] = []

    def worker(t: int) -> None:
        try:
            results[t] = thread_main(t)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert results == {t: [f"{t}-{i}" for i in range(10)] for t in range(4)}


def test_a_timeout_fires_while_the_loop_waits_on_nothing_else(silent_server) -> None:
    async def main() -> float:
        env = AsyncEnvClient(silent_server.url, request_timeout=0.3)
        await env.connect()
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            await env.step({"message": "never answered"})
        return time.monotonic() - start

    waited = asyncio.run(main())
    # Timers fire on the loop's timer ticks: on time, give or take a tick and the machine.
    assert 0.3 <= waited < 3.0, waited


def test_an_idle_connection_answers_the_servers_pings(start_server) -> None:
    # The server pings every second and closes (1011) a peer silent for a second after that.
    server = start_server("--keepalive-interval-s", "1", "--keepalive-timeout-s", "1")

    async def main() -> str:
        async with AsyncEnvClient(server.url, keepalive_interval=0.2) as env:
            await env.reset()
            await asyncio.sleep(3.5)  # idle in a running loop, past three ping deadlines
            step = await env.step({"message": "still here"})
            return str(step.observation["echoed_message"])

    assert asyncio.run(main()) == "still here"


def test_a_pool_slot_freed_on_another_thread_wakes_the_waiter(echo_server) -> None:
    pool = Pool(echo_server.url, 1)
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        async def main() -> None:
            env = await pool.acquire()
            await env.reset()
            holding.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
            await env.close()

        asyncio.run(main())

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(10)

        async def waiter() -> str:
            pending = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.2)
            assert not pending.done(), "the only slot is held by the other thread"
            release.set()
            env = await asyncio.wait_for(pending, 5)
            async with env:
                await env.reset()
                step = await env.step({"message": "after"})
            return str(step.observation["echoed_message"])

        assert asyncio.run(waiter()) == "after"
    finally:
        release.set()
        thread.join(10)
    assert pool.stats()[0]["in_use"] == 0
