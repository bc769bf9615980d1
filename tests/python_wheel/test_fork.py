"""Use after `os.fork()` (trainers fork data-loader workers): in the child, clients and
pools made before the fork raise ForkError and new ones work; the parent is unaffected."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import traceback
from typing import Any, Callable, Dict

import pytest

from openenv_rs import AsyncEnvClient, EnvClient, ForkError, Pool

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(body: Callable[[], Dict[str, Any]], timeout_s: float = 60.0) -> Dict[str, Any]:
    """Runs `body` in a forked child and returns what it reported (as JSON, over a pipe).
    The child always leaves with os._exit, so no pytest machinery runs twice."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        code = 0
        try:
            report = body()
        except BaseException:  # noqa: BLE001 - reported to the parent
            report = {"crash": traceback.format_exc()}
            code = 1
        try:
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    import select

    deadline = timeout_s
    while True:
        readable, _, _ = select.select([read_end], [], [], deadline)
        if not readable:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {timeout_s} s (a hang?)")
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    assert "crash" not in report, report["crash"]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return report


def test_sync_client_after_fork(echo_server) -> None:
    parent = EnvClient(echo_server.url)
    parent.reset()
    parent.step({"message": "before fork"})
    # A second pre-fork client that the child drops: dropping must leak its connection (the
    # socket and its epoll registration are shared with the parent), not close it.
    dropped_in_child = [EnvClient(echo_server.url, request_timeout=10.0)]
    dropped_in_child[0].reset()

    def child() -> Dict[str, Any]:
        dropped_in_child.clear()
        gc.collect()
        report: Dict[str, Any] = {}
        try:
            parent.step({"message": "from the child"})
            report["old"] = "no error"
        except ForkError as err:
            report["old"] = str(err)
        with EnvClient(echo_server.url) as fresh:
            fresh.reset()
            report["new"] = fresh.step({"message": "child"}).observation["echoed_message"]
        return report  # the old client is dropped at exit: it must leak, not close, here

    report = in_child(child)
    assert "created in process" in report["old"] and "fork()" in report["old"], report
    assert report["new"] == "child"
    # The parent's session still works, in the same episode.
    assert parent.step({"message": "after fork"}).observation["echoed_message"] == "after fork"
    assert parent.state()["step_count"] == 2
    parent.close()
    (survivor,) = dropped_in_child
    assert survivor.step({"message": "still mine"}).observation["echoed_message"] == "still mine"
    survivor.close()


def test_async_client_and_pool_after_fork(echo_server) -> None:
    old_async = AsyncEnvClient(echo_server.url)
    pool = Pool(echo_server.url, 4)

    async def warm() -> None:
        await old_async.reset()
        async with pool.session() as env:
            await env.reset()

    asyncio.run(warm())

    def child() -> Dict[str, Any]:
        report: Dict[str, Any] = {}

        async def main() -> None:
            try:
                await old_async.step({"message": "x"})
                report["old_async"] = "no error"
            except ForkError as err:
                report["old_async"] = type(err).__name__
            try:
                await pool.acquire()
                report["old_pool"] = "no error"
            except ForkError as err:
                report["old_pool"] = type(err).__name__
            async with AsyncEnvClient(echo_server.url) as env:
                await env.reset()
                report["new_async"] = (await env.step({"message": "ok"})).reward
            fresh_pool = Pool(echo_server.url, 4)

            async def one(env: AsyncEnvClient, i: int) -> int:
                await env.reset()
                return i

            report["new_pool"] = await fresh_pool.run(8, one)

        asyncio.run(main())
        return report

    report = in_child(child)
    assert report == {
        "old_async": "ForkError",
        "old_pool": "ForkError",
        "new_async": pytest.approx(0.2),
        "new_pool": list(range(8)),
    }

    async def after() -> None:
        assert (await old_async.step({"message": "parent"})).observation["echoed_message"] == "parent"
        await old_async.close()
        async with pool.session() as env:
            await env.reset()

    asyncio.run(after())

