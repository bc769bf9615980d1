"""`GenericEnvClient` (async and sync) of the official client against env-server's echo env.

Expected values are those of PROTOCOL.md §2–§3 and the captures `*_generic.frames.txt`; the
server emits the 0.10 envelope, which both client generations parse (§2.2).
"""

from __future__ import annotations

import pytest

import openenv
import openenv.core
from openenv.core import GenericEnvClient
from openenv.core.env_server.types import Action
from websockets.exceptions import ConnectionClosed

from _support import IS_010, eventually_async, is_uuid4, refused_first_call, run, server_error



class EchoAction(Action):
    """A typed action, as a typed client would send it (`model_dump()` adds `metadata`)."""

    message: str


def assert_reset(result, seed, reset_kwargs) -> None:
    meta = {"seed": seed, "reset_kwargs": reset_kwargs}
    assert result.observation == {"metadata": meta, "echoed_message": "ready", "message_length": 0}
    # §2.2: `metadata` is the first key of the observation.
    assert list(result.observation) == ["metadata", "echoed_message", "message_length"]
    assert result.reward is None
    assert result.done is False
    if IS_010:
        assert result.metadata == meta  # top-level envelope `metadata` (0.4+ StepResult field)
    else:
        assert not hasattr(result, "metadata")  # 0.3 StepResult has no metadata


def assert_step(result, message: str, step: int, reward: float, done: bool = False) -> None:
    meta = {"step": step}
    assert result.observation == {
        "metadata": meta,
        "echoed_message": message,
        "message_length": len(message),
    }
    assert list(result.observation) == ["metadata", "echoed_message", "message_length"]
    assert type(result.reward) is float and result.reward == reward
    assert result.done is done
    if IS_010:
        assert result.metadata == meta
    else:
        assert not hasattr(result, "metadata")


def test_import_paths_of_this_client_generation() -> None:
    # Both generations install the module `openenv` (0.10 also ships an `openenv_core` shim).
    from openenv.core.env_client import EnvClient
    from openenv.core.generic_client import GenericAction
    from openenv.core.generic_client import GenericEnvClient as Direct
    from openenv.core.mcp_client import MCPToolClient
    from openenv.core.sync_client import SyncEnvClient

    assert openenv.GenericEnvClient is Direct is GenericEnvClient
    assert openenv.core.MCPToolClient is MCPToolClient
    assert openenv.SyncEnvClient is SyncEnvClient
    assert issubclass(GenericEnvClient, EnvClient) and issubclass(MCPToolClient, EnvClient)
    assert GenericAction(message="x") == {"message": "x"}


def test_async_episode_reset_steps_state(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            r = await env.reset(seed=42, episode_id="ep-1", difficulty="easy")
            assert_reset(r, 42, {"difficulty": "easy"})
            assert_step(await env.step({"message": "hello"}), "hello", 1, 0.5)
            assert_step(await env.step({"message": "world"}), "world", 2, 0.5)
            assert_step(await env.step({"message": "bye"}), "bye", 3, 0.3, done=True)
            state = await env.state()
            assert state == {"episode_id": "ep-1", "step_count": 3, "last_message": "bye"}
            assert list(state) == ["episode_id", "step_count", "last_message"]

    run(body)


def test_sync_wrapper_episode(server) -> None:
    # `.sync()` exists in both generations (SyncEnvClient on a background event loop).
    with GenericEnvClient(base_url=server.url).sync() as env:
        assert_reset(env.reset(), None, {})
        assert_step(env.step({"message": "sync-hi"}), "sync-hi", 1, 0.7)
        state = env.state()
        assert is_uuid4(state["episode_id"]), state
        assert state == {"episode_id": state["episode_id"], "step_count": 1, "last_message": "sync-hi"}
        assert_reset(env.reset(seed=7), 7, {})
        assert env.state()["step_count"] == 0


def test_sync_use_without_wrapper(server) -> None:
    client = GenericEnvClient(base_url=server.url)
    if IS_010:
        # 0.10: the client itself resolves calls synchronously outside an event loop.
        with client as env:
            assert_reset(env.reset(seed=3, episode_id="direct"), 3, {})
            assert_step(env.step({"message": "x"}), "x", 1, 0.1)
            assert env.state() == {"episode_id": "direct", "step_count": 1, "last_message": "x"}
    else:
        # 0.3: async only; `with` is refused before any connection is made.
        with pytest.raises(TypeError, match="async by default"):
            with client:
                pass


def test_typed_and_generic_actions(server) -> None:
    from openenv.core.generic_client import GenericAction

    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            await env.reset()
            # A pydantic action is sent as model_dump(): {"metadata": {}, "message": "typed"}.
            assert_step(await env.step(EchoAction(message="typed")), "typed", 1, 0.5)
            assert_step(await env.step(GenericAction(message="gen")), "gen", 2, 0.3)
            meta_action = {"message": "m", "metadata": {"k": "v"}}
            assert_step(await env.step(meta_action), "m", 3, 0.1)

    run(body)


def test_reset_kwargs_pass_through_without_range_checks(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            r = await env.reset(seed=-1, unknown_kw=1, nested={"a": [1, 2]})
            assert_reset(r, -1, {"unknown_kw": 1, "nested": {"a": [1, 2]}})

    run(body)


def test_step_before_reset_is_answered(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            assert_step(await env.step({"message": "no-reset-needed"}), "no-reset-needed", 1, 1.5)
            state = await env.state()
            assert is_uuid4(state["episode_id"]), state
            assert state["step_count"] == 1 and state["last_message"] == "no-reset-needed"

    run(body)


def test_unicode_round_trip(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            await env.reset()
            message = "héllo ✓ 😀"  # 9 code points; the client sends \u escapes and a surrogate pair
            assert_step(await env.step({"message": message}), message, 1, 0.9)
            assert (await env.state())["last_message"] == message

    run(body)


def test_validation_error_keeps_session(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            await env.reset()
            expected = server_error("Invalid message", "VALIDATION_ERROR")
            for bad in ({"msg": "wrong field"}, {"message": 5}, {"message": "x", "extra": 1}, {}):
                with pytest.raises(RuntimeError) as info:
                    await env.step(bad)
                assert str(info.value) == expected, bad
            # The connection and the session survive: the next step is step 1.
            assert_step(await env.step({"message": "after-error"}), "after-error", 1, 1.1)
            assert (await env.state())["step_count"] == 1

    run(body)


def test_execution_error_keeps_session(server) -> None:
    async def body():
        async with GenericEnvClient(base_url=server.url) as env:
            await env.reset(episode_id="exec")
            with pytest.raises(RuntimeError) as info:
                await env.step({"message": "raise"})
            assert str(info.value) == server_error("boom from env.step", "EXECUTION_ERROR")
            assert_step(await env.step({"message": "still-alive"}), "still-alive", 1, 1.1)
            state = await env.state()
            assert state == {"episode_id": "exec", "step_count": 1, "last_message": "still-alive"}

    run(body)


def test_sync_wrapper_surfaces_errors(server) -> None:
    with GenericEnvClient(base_url=server.url).sync() as env:
        env.reset()
        with pytest.raises(RuntimeError) as info:
            env.step({"msg": "wrong field"})
        assert str(info.value) == server_error("Invalid message", "VALIDATION_ERROR")
        with pytest.raises(RuntimeError) as info:
            env.step({"message": "raise"})
        assert str(info.value) == server_error("boom from env.step", "EXECUTION_ERROR")
        assert_step(env.step({"message": "ok"}), "ok", 1, 0.2)


def test_capacity_reached_then_slot_freed(server_factory) -> None:
    server = server_factory("--max-sessions", "1")

    async def body():
        first = GenericEnvClient(base_url=server.url)
        await first.connect()
        assert_reset(await first.reset(), None, {})

        second = GenericEnvClient(base_url=server.url)
        try:
            await refused_first_call(second)
        finally:
            await second.close()

        # The refused client did not disturb the session that holds the slot.
        assert_step(await first.step({"message": "mine"}), "mine", 1, 0.4)
        await first.close()

        async def a_new_client_works():
            client = GenericEnvClient(base_url=server.url)
            try:
                return await client.reset(seed=1)
            except RuntimeError as err:
                if "(code: CAPACITY_REACHED)" in str(err):
                    return None
                raise
            except ConnectionClosed:
                return None  # 0.3: refusal racing the first send
            finally:
                await client.close()

        result = await eventually_async(a_new_client_works, 5.0, "a session after the first closed")
        assert_reset(result, 1, {})

    run(body)


def test_capacity_counts_sessions_not_connections_attempted(server_factory) -> None:
    # Repeated refusals must not leak slots: after several refused clients, closing the
    # holder still frees exactly the one slot.
    server = server_factory("--max-sessions", "1")

    async def body():
        holder = GenericEnvClient(base_url=server.url)
        await holder.connect()
        await holder.reset()
        for _ in range(3):
            refused = GenericEnvClient(base_url=server.url)
            try:
                await refused_first_call(refused)
            finally:
                await refused.close()
        await holder.close()

        async def reset_ok():
            client = GenericEnvClient(base_url=server.url)
            try:
                return await client.reset()
            except (RuntimeError, ConnectionClosed):
                return None
            finally:
                await client.close()

        assert_reset(await eventually_async(reset_ok, 5.0, "the freed slot"), None, {})

    run(body)
