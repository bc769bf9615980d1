"""`MCPToolClient` of the official client against env-server's echo env (one tool, `echo_message`).

The generations differ (PROTOCOL.md §6.5): the 0.3 client does everything on `/ws` through
step-path MCP actions; the 0.10 client creates an HTTP-MCP session (`POST /mcp`
`openenv/session/create`), attaches `/ws?session_id=<id>` for reset/step/state, and calls tools
with JSON-RPC on `POST /mcp` (which bypasses `env.step`: no step is counted).
"""

from __future__ import annotations

import httpx
import pytest

from openenv.core.env_server.mcp_types import (
    CallToolAction,
    CallToolObservation,
    ListToolsAction,
    ListToolsObservation,
)
from openenv.core.env_server.types import Action, State
from openenv.core.mcp_client import MCPToolClient

from _support import IS_010, eventually, is_uuid4, refused_first_call, run

ECHO_INPUT_SCHEMA = {
    "additionalProperties": False,
    "properties": {"message": {"type": "string", "description": "The message to echo back"}},
    "required": ["message"],
    "type": "object",
}


class EchoAction(Action):
    message: str


def unknown_tool_error() -> str:
    if IS_010:
        # JSON-RPC error -32603 "Unknown tool: 'nope'" on POST /mcp.
        return "Tool 'nope' failed: Unknown tool: 'nope'"
    # Step-path observation error {"error_type": "tool_not_found", "message": ...}.
    return "Tool 'nope' failed: Unknown tool: 'nope' (type: tool_not_found)"


def assert_echo_tool(tools) -> None:
    assert [t.name for t in tools] == ["echo_message"]
    assert tools[0].description == "Echo back the provided message."
    assert tools[0].input_schema == ECHO_INPUT_SCHEMA


def test_mcp_tool_client_async(server) -> None:
    async def body():
        async with MCPToolClient(base_url=server.url) as env:
            if IS_010:
                session_id = env._production_session_id
                assert is_uuid4(session_id), "0.10 MCPToolClient connects through an HTTP-MCP session"
            else:
                assert env.use_production_mode is False  # 0.3: /ws only
                session_id = None

            r = await env.reset(episode_id="mcp-ep", difficulty="hard")
            assert r.reward is None and r.done is False
            assert r.observation.metadata == {"seed": None, "reset_kwargs": {"difficulty": "hard"}}
            if IS_010:
                # GenericMCPObservation keeps env fields (extra="allow").
                assert r.observation.echoed_message == "ready"
                assert r.observation.message_length == 0

            tools = await env.list_tools()
            assert_echo_tool(tools)
            assert await env.has_tool("echo_message") and not await env.has_tool("nope")
            assert_echo_tool(await env.list_tools(use_cache=False))

            assert await env.call_tool("echo_message", message="Hello!") == "Hello!"
            assert await env.call_tool("echo_message", message="héllo ✓ 😀") == "héllo ✓ 😀"
            with pytest.raises(RuntimeError) as info:
                await env.call_tool("nope", x=1)
            assert str(info.value) == unknown_tool_error()

            # The step path, through the same client (reward null, done false, counted as steps).
            r = await env.step(CallToolAction(tool_name="echo_message", arguments={"message": "via step"}))
            assert isinstance(r.observation, CallToolObservation)
            assert r.observation.tool_name == "echo_message"
            assert r.observation.error is None
            assert r.observation.result["data"] == "via step"
            assert r.observation.result["content"][0]["text"] == "via step"
            assert r.reward is None and r.done is False

            r = await env.step(CallToolAction(tool_name="nope", arguments={}))
            assert isinstance(r.observation, CallToolObservation)
            assert r.observation.result is None
            assert r.observation.error.error_type.value == "tool_not_found"
            assert r.observation.error.message == "Unknown tool: 'nope'"

            r = await env.step(ListToolsAction())
            assert isinstance(r.observation, ListToolsObservation)
            assert_echo_tool(r.observation.tools)

            # A plain echo action through the MCP client.
            # Step-path MCP actions count as steps; JSON-RPC calls (0.10) do not. 0.3 also sent
            # 2 list_tools (the second uncached) and 3 call_tool through `step`.
            mcp_steps = 3 if IS_010 else 3 + 5
            r = await env.step(EchoAction(message="hi"))
            assert r.reward == 0.2 and r.done is False
            assert r.observation.metadata == {"step": mcp_steps + 1}
            if IS_010:
                assert r.observation.echoed_message == "hi"
                assert r.metadata == {"step": mcp_steps + 1}

            state = await env.state()
            assert isinstance(state, State)
            assert state.episode_id == "mcp-ep"
            assert state.step_count == mcp_steps + 1
        return session_id

    session_id = run(body)

    if IS_010:
        # close() detached the socket and closed the HTTP-MCP session: it is gone.
        def session_gone():
            reply = httpx.post(
                f"{server.url}/mcp",
                json={
                    "jsonrpc": "2.0",
                    "method": "openenv/session/close",
                    "params": {"session_id": session_id},
                    "id": 9,
                },
                timeout=5,
            ).json()
            return reply.get("error", {}).get("message") == f"Unknown session_id: {session_id}"

        eventually(session_gone, 5.0, "the client's HTTP-MCP session destroyed after close()")


def test_mcp_tool_client_sync(server) -> None:
    with MCPToolClient(base_url=server.url).sync() as env:
        r = env.reset(seed=5)
        assert r.observation.metadata == {"seed": 5, "reset_kwargs": {}}
        assert_echo_tool(env.list_tools())
        assert env.call_tool("echo_message", message="sync") == "sync"
        with pytest.raises(RuntimeError) as info:
            env.call_tool("nope")
        assert str(info.value) == unknown_tool_error()
        state = env.state()
        assert is_uuid4(state.episode_id)
        assert state.step_count == (0 if IS_010 else 3)


def test_mcp_tool_client_step_errors(server) -> None:
    # Error frames reach MCPToolClient callers exactly as GenericEnvClient ones.
    async def body():
        async with MCPToolClient(base_url=server.url) as env:
            await env.reset()
            with pytest.raises(RuntimeError) as info:
                await env.step(EchoAction(message="raise"))
            assert str(info.value) == "Server error: boom from env.step (code: EXECUTION_ERROR)"
            r = await env.step(EchoAction(message="ok"))
            assert r.reward == 0.2

    run(body)


def test_mcp_tool_client_capacity(server_factory) -> None:
    server = server_factory("--max-sessions", "1")

    async def body():
        async with MCPToolClient(base_url=server.url) as holder:
            await holder.reset()
            other = MCPToolClient(base_url=server.url)
            if IS_010:
                # The HTTP-MCP session/create is refused with -32000 (PROTOCOL.md §6.3).
                with pytest.raises(RuntimeError) as info:
                    await other.connect()
                assert str(info.value) == (
                    "Failed to create MCP session: Server at capacity: 1/1 sessions active. "
                    "Cannot accept new connections."
                )
            else:
                # 0.3: the refusal arrives on /ws, as for GenericEnvClient.
                try:
                    await refused_first_call(other)
                finally:
                    await other.close()
            assert await holder.call_tool("echo_message", message="still here") == "still here"

    run(body)
