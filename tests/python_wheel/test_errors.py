"""Every failure kind reaches Python as its own exception class, with its context as
attributes (`ClientError` variants and wire codes, `PROTOCOL.md` §3.4)."""

from __future__ import annotations

import asyncio

import pytest

import openenv_rs
from openenv_rs import (
    AsyncEnvClient,
    CapacityReachedError,
    ConnectError,
    ConnectionClosedError,
    EnvClient,
    EpisodeDoneError,
    ExecutionError,
    InvalidConfigError,
    InvalidUrlError,
    OpenEnvError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
    SessionError,
    ToolError,
    TransportError,
    UnsupportedError,
    ValidationError,
)

CLASSES = [
    ("ServerError", OpenEnvError),
    ("InvalidJsonError", ServerError),
    ("UnknownTypeError", ServerError),
    ("ValidationError", ServerError),
    ("ExecutionError", ServerError),
    ("CapacityReachedError", ServerError),
    ("FactoryError", ServerError),
    ("SessionError", ServerError),
    ("InvalidUrlError", ValueError),
    ("InvalidConfigError", ValueError),
    ("ConnectError", ConnectionError),
    ("ConnectionClosedError", ConnectionError),
    ("RequestTimeoutError", TimeoutError),
    ("ToolError", OpenEnvError),
    ("EpisodeDoneError", ToolError),
    ("RpcError", OpenEnvError),
    ("UnsupportedError", OpenEnvError),
    ("ProtocolError", OpenEnvError),
    ("TransportError", ConnectionError),
    ("ForkError", OpenEnvError),
]


@pytest.mark.parametrize("name,base", CLASSES)
def test_hierarchy(name: str, base: type) -> None:
    cls = getattr(openenv_rs, name)
    assert issubclass(cls, OpenEnvError) and issubclass(cls, base)
    assert issubclass(OpenEnvError, Exception)
    assert cls.__module__ == "openenv_rs" and cls.__doc__
    assert getattr(openenv_rs._native, name) is cls


def test_capacity_reached(start_server) -> None:
    server = start_server("--max-sessions", "1")
    with EnvClient(server.url) as first:
        first.reset()
        second = EnvClient(server.url)
        with pytest.raises(CapacityReachedError) as caught:
            second.reset()
        err = caught.value
        assert isinstance(err, ServerError)
        assert err.code == "CAPACITY_REACHED"
        assert err.message == (
            "Server at capacity: 1/1 sessions active. Cannot accept new connections."
        )
        assert err.data["active_sessions"] == 1 and err.data["max_sessions"] == 1
        assert str(err) == f"Server error: {err.message} (code: CAPACITY_REACHED)"
        # The refusal ends that session: later calls report the closed connection.
        with pytest.raises((CapacityReachedError, ConnectionClosedError)):
            second.step({"message": "again"})
        second.close()
        # The first session is unaffected.
        assert first.step({"message": "still here"}).done is False


def test_validation_error_keeps_the_session(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        env.reset()
        with pytest.raises(ValidationError) as caught:
            env.step({"message": "x", "unknown_field": 1})
        err = caught.value
        assert err.code == "VALIDATION_ERROR" and err.message == "Invalid message"
        assert err.errors and err.errors[0]["type"] == "extra_forbidden"
        assert err.errors[0]["loc"] == ["unknown_field"]
        assert err.data["errors"] == err.errors
        assert env.step({"message": "ok"}).observation["echoed_message"] == "ok"


def test_execution_error_keeps_the_session(echo_server) -> None:
    async def main() -> None:
        async with AsyncEnvClient(echo_server.url) as env:
            await env.reset()
            with pytest.raises(ExecutionError) as caught:
                await env.step({"message": "raise"})
            assert caught.value.code == "EXECUTION_ERROR"
            assert caught.value.message == "boom from env.step"
            assert (await env.step({"message": "after"})).observation["echoed_message"] == "after"

    asyncio.run(main())


def test_server_closes_the_connection(start_server) -> None:
    server = start_server()
    env = EnvClient(server.url)
    env.reset()
    server.stop()  # SIGTERM: the server closes every session (1001) and exits
    with pytest.raises(ConnectionClosedError) as caught:
        env.step({"message": "anyone there?"})
    assert isinstance(caught.value, ConnectionError)
    assert caught.value.close_code in (1001, None)
    assert caught.value.reason
    env.close()  # closing a closed connection is not an error


def test_idle_timeout_session_error(start_server) -> None:
    server = start_server("--idle-timeout-s", "1")
    env = EnvClient(server.url)
    env.reset()
    import time

    time.sleep(2.0)  # the server ends the idle session with SESSION_ERROR + close 1000
    with pytest.raises((SessionError, ConnectionClosedError)) as first:
        env.step({"message": "late"})
    if isinstance(first.value, SessionError):
        assert first.value.code == "SESSION_ERROR"
        with pytest.raises((SessionError, ConnectionClosedError)):
            env.step({"message": "later"})
    env.close()


def test_use_after_close(echo_server) -> None:
    env = EnvClient(echo_server.url)
    env.reset()
    env.close()
    with pytest.raises(ConnectionClosedError) as caught:
        env.state()
    assert caught.value.close_code is None
    assert caught.value.reason == "the client was closed"


def test_request_timeout(silent_server) -> None:
    env = EnvClient(silent_server.url, request_timeout=0.2)
    with pytest.raises(RequestTimeoutError) as caught:
        env.step({"message": "never answered"})
    err = caught.value
    assert isinstance(err, TimeoutError)
    assert err.op == "step" and err.after == pytest.approx(0.2)
    # The connection is abandoned after a timeout: later calls fail at once.
    with pytest.raises(ConnectionClosedError, match="timed out"):
        env.step({"message": "again"})
    env.close()


def test_async_request_timeout(silent_server) -> None:
    async def main() -> None:
        env = AsyncEnvClient(silent_server.url, request_timeout=0.2)
        with pytest.raises(TimeoutError):  # the builtin catches it too
            await env.reset()
        await env.close()

    asyncio.run(main())


def test_connect_error(dead_url: str) -> None:
    env = EnvClient(dead_url, connect_timeout=2.0)
    with pytest.raises(ConnectError) as caught:
        env.reset()
    assert isinstance(caught.value, ConnectionError)
    assert caught.value.url.endswith("/ws")
    assert "failed to connect" in str(caught.value)


def test_invalid_url_and_config() -> None:
    with pytest.raises(InvalidUrlError) as caught:
        EnvClient("ftp://example.org")
    assert isinstance(caught.value, ValueError)
    assert caught.value.url == "ftp://example.org" and "scheme" in caught.value.reason
    with pytest.raises(InvalidConfigError, match="request_timeout"):
        EnvClient("http://127.0.0.1:1", request_timeout=-1.0)
    with pytest.raises(InvalidConfigError, match="keepalive_interval"):
        AsyncEnvClient("http://127.0.0.1:1", keepalive_interval=0.0)
    with pytest.raises(InvalidConfigError, match="max_sessions_per_server"):
        openenv_rs.Pool("http://127.0.0.1:1", 0)


def test_unsupported_verify(no_verify_server) -> None:
    with EnvClient(no_verify_server.url) as env:
        env.reset()
        with pytest.raises(UnsupportedError) as caught:
            env.verify()
        assert caught.value.feature == "verify"
        # UNKNOWN_TYPE leaves the session intact.
        assert env.step({"message": "x"}).reward == pytest.approx(0.1)


def test_protocol_error(no_verify_server) -> None:
    with EnvClient(no_verify_server.url) as env:
        env.reset()
        with pytest.raises(ProtocolError) as caught:
            env.step({"bogus": True})
        assert "unparseable reply" in caught.value.message


def test_transport_error(broken_framing) -> None:
    env = EnvClient(broken_framing.url, request_timeout=5.0)
    with pytest.raises(TransportError) as caught:
        env.reset()
    assert isinstance(caught.value, ConnectionError)
    env.close()


def test_tool_error(echo_server) -> None:
    with EnvClient(echo_server.url) as env:
        with pytest.raises(ToolError) as caught:
            env.call_tool("nope")
        err = caught.value
        assert not isinstance(err, EpisodeDoneError)
        assert err.error_type == "tool_not_found"
        assert err.message == "Unknown tool: 'nope'"
        assert str(err) == "Tool failed: Unknown tool: 'nope' (type: tool_not_found)"


def test_episode_done_error(fake_terminal) -> None:
    with EnvClient(fake_terminal.url) as env:
        env.reset(verify=["test -f answer.txt"])
        env.call_tool("terminal", command="touch answer.txt")
        assert env.verify().reward == 1.0
        with pytest.raises(EpisodeDoneError) as caught:
            env.call_tool("terminal", command="true")
        err = caught.value
        assert isinstance(err, ToolError)
        assert err.error_type == "execution_error"
        assert err.reward == 1.0
        assert err.message == (
            "Episode is done (reward=1.0). Call reset() to start a new episode."
        )
        # The session is intact: a new episode starts.
        assert env.reset(verify=[]).done is False


def test_episode_done_on_the_terminal_env(terminal_server) -> None:
    with EnvClient(terminal_server.url, request_timeout=120.0) as env:
        env.reset(verify=["test -f answer.txt"])
        env.call_tool("terminal", command="echo 42 > answer.txt")
        answer = env.call_tool_result("terminal", final_answer="42")
        assert answer.done is True and answer.reward == 1.0
        with pytest.raises(EpisodeDoneError) as caught:
            env.call_tool("terminal", command="true")
        assert caught.value.reward == 1.0 and "Episode is done" in caught.value.message
