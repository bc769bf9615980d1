"""Many concurrent episodes: 200 async clients in one event loop, and the Pool (slots,
session(), run())."""

from __future__ import annotations

import asyncio

import pytest

from openenv_rs import AsyncEnvClient, ConnectError, ExecutionError, Pool

EPISODES = 200


def test_200_concurrent_async_episodes(start_server) -> None:
    server = start_server("--max-sessions", str(EPISODES + 8))

    async def episode(i: int) -> float:
        async with AsyncEnvClient(server.url) as env:
            await env.reset(seed=i)
            total = 0.0
            for _ in range(5):
                step = await env.step({"message": "x" * (i % 10)})
                total += step.reward
            assert (await env.state())["step_count"] == 5
            return total

    async def main() -> None:
        rewards = await asyncio.gather(*(episode(i) for i in range(EPISODES)))
        assert rewards == pytest.approx([5 * 0.1 * (i % 10) for i in range(EPISODES)])

    asyncio.run(main())


def test_pool_run_200_episodes(start_server) -> None:
    server = start_server("--max-sessions", "64")
    pool = Pool(server.url, 32)
    assert pool.capacity == 32

    async def episode(env: AsyncEnvClient, i: int) -> int:
        await env.reset(seed=i)
        step = await env.step({"message": "y" * (i % 7)})
        return int(step.observation["message_length"])

    async def main() -> None:
        results = await pool.run(EPISODES, episode)
        assert results == [i % 7 for i in range(EPISODES)]

    asyncio.run(main())
    assert pool.stats() == [
        {"url": f"ws://127.0.0.1:{server.port}/ws", "in_use": 0, "capacity": 32}
    ]


def test_pool_session_holds_a_slot(echo_server) -> None:
    pool = Pool([echo_server.url], 2)

    async def main() -> None:
        async with pool.session() as env:
            assert pool.stats()[0]["in_use"] == 1
            await env.reset()
            assert (await env.step({"message": "hi"})).reward == pytest.approx(0.2)
        assert pool.stats()[0]["in_use"] == 0
        with pytest.raises(ExecutionError):
            async with pool.session() as env:
                await env.step({"message": "raise"})
        assert pool.stats()[0]["in_use"] == 0
        # acquire() waits while the pool is full.
        a = await pool.acquire()
        b = await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await a.close()
        c = await asyncio.wait_for(waiting, 5)
        await b.close()
        await c.close()
        assert pool.stats()[0]["in_use"] == 0

    asyncio.run(main())


def test_pool_over_two_servers(start_server) -> None:
    one, two = start_server(), start_server()
    pool = Pool((one.url, two.url), 4)
    assert pool.capacity == 8

    async def main() -> None:
        sessions = [await pool.acquire() for _ in range(6)]
        assert sorted(s["in_use"] for s in pool.stats()) == [3, 3]
        for session in sessions:
            await session.close()

    asyncio.run(main())


def test_pool_run_errors(echo_server, dead_url) -> None:
    pool = Pool(echo_server.url, 4)

    async def flaky(env: AsyncEnvClient, i: int) -> int:
        await env.step({"message": "raise" if i == 3 else "ok"})
        return i

    async def main() -> None:
        results = await pool.run(6, flaky, return_exceptions=True)
        assert [r for r in results if not isinstance(r, Exception)] == [0, 1, 2, 4, 5]
        assert isinstance(results[3], ExecutionError)
        with pytest.raises(ExecutionError):
            await pool.run(6, flaky)
        with pytest.raises(ConnectError):
            await Pool(dead_url, 1, connect_timeout=2.0).run(1, flaky)

    asyncio.run(main())
    assert pool.stats()[0]["in_use"] == 0
