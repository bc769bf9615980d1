"""Raw `/ws` frames, byte for byte, with the `websockets` library the official clients use.

The clients hide bytes (they `json.loads` every reply), so these tests replay the client frames of
the official captures and compare each server frame with the captured one, byte for byte; only
uuid4 episode/session ids (random per run) are masked or substituted. The echo env here also
serves one MCP tool (DESIGN.md), where the captured plain echo env served none, so the `mcp`
`tools/list` reply of `oe010_generic` ws#5 is checked against the spec instead.
"""

from __future__ import annotations

import ast
import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from _support import (
    capture_exchanges,
    capture_http,
    compact,
    eventually,
    is_uuid4,
    mask_uuid_episode_ids,
    read_capture,
    run,
)

GENERIC = "oe010_generic.frames.txt"
MCP = "oe010_mcp.frames.txt"
ATTACH = "oe010_attach.frames.txt"
REPLY_TIMEOUT_S = 5.0


async def recv_text(ws) -> str:
    frame = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S)
    assert isinstance(frame, str), f"expected a text frame, got binary {frame!r}"
    return frame


async def expect_server_close(ws, code: int = 1000, reason: str = "") -> None:
    """The server closes the connection (no further data frame) with `code` and `reason`."""
    with pytest.raises(ConnectionClosed):
        extra = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S)
        raise AssertionError(f"expected the server to close, got another frame {extra!r}")
    await asyncio.wait_for(ws.wait_closed(), REPLY_TIMEOUT_S)
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None, "the connection ended without a close frame from the server"
    assert ws.protocol.close_rcvd_then_sent, "expected the server to start the closing handshake"
    assert (rcvd.code, rcvd.reason) == (code, reason)


def assert_frame(sent: str, got: str, expected: str) -> None:
    masked_got, masked_exp = mask_uuid_episode_ids(got), mask_uuid_episode_ids(expected)
    assert masked_got == masked_exp, (
        f"reply to {sent!r}\n  expected {masked_exp}\n  actual   {masked_got}"
    )


async def replay(ws, exchanges: list[tuple[str, str]]) -> None:
    """Send each captured C->S frame, compare each captured S->C frame (in order)."""
    sent = "(nothing yet)"
    for direction, text in exchanges:
        if direction == "C->S":
            await ws.send(text)
            sent = text
        else:
            assert_frame(sent, await recv_text(ws), text)


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-compression"])
def test_capture_generic_ws1_episode(server, compression) -> None:
    """oe010_generic ws#1: reset with kwargs, three steps, state, close (no reply) -> close 1000."""
    exchanges = capture_exchanges(GENERIC, 1)
    assert exchanges[-1] == ("C->S", '{"type": "close"}')

    async def body():
        async with connect(server.ws_url, compression=compression) as ws:
            await replay(ws, exchanges)
            await expect_server_close(ws, 1000, "")

    run(body)


def test_capture_generic_ws4_validation_error(server) -> None:
    """oe010_generic ws#4: a wrong action field -> VALIDATION_ERROR with pydantic items; open."""

    async def body():
        async with connect(server.ws_url) as ws:
            await replay(ws, capture_exchanges(GENERIC, 4)[:-1])
            await ws.send('{"type": "close"}')
            await expect_server_close(ws)

    run(body)


def test_capture_generic_ws5_error_frames(server) -> None:
    """oe010_generic ws#5: INVALID_JSON, UNKNOWN_TYPE, VALIDATION_ERROR items, kwargs pass-through,
    `state` with data, step before reset, `mcp` frames, then `[1, 2]` -> SESSION_ERROR + close 1000."""
    exchanges = capture_exchanges(GENERIC, 5)
    mcp_list = '{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}'
    mcp_invalid = '{"type": "mcp", "data": {"method": "tools/list"}}'
    non_object = "[1, 2]"
    sent_order = [t for d, t in exchanges if d == "C->S"]
    assert sent_order[-4:] == [mcp_list, mcp_invalid, non_object, '{"type": "close"}']
    plain = exchanges[: [t for _, t in exchanges].index(mcp_list)]

    async def body():
        async with connect(server.ws_url) as ws:
            await replay(ws, plain)

            # The captured env had no MCP ("Environment does not support MCP"); ours has one tool.
            await ws.send(mcp_list)
            reply = json.loads(await recv_text(ws))
            assert list(reply) == ["type", "data"] and reply["type"] == "mcp"
            assert list(reply["data"]) == ["jsonrpc", "id", "result"]
            assert reply["data"]["jsonrpc"] == "2.0" and reply["data"]["id"] == 1
            assert_jsonrpc_echo_tool_list(reply["data"]["result"])

            # Invalid JSON-RPC body: a `type:"mcp"` reply with id null and -32600 (§6.3); it does
            # not depend on the env, so it is the captured frame (pydantic's text included).
            await ws.send(mcp_invalid)
            captured = exchanges[[t for _, t in exchanges].index(mcp_invalid) + 1]
            assert captured[0] == "S->C"
            assert_frame(mcp_invalid, await recv_text(ws), captured[1])

            # JSON that is not an object: SESSION_ERROR, then the server closes 1000.
            await ws.send(non_object)
            captured = exchanges[[t for _, t in exchanges].index(non_object) + 1]
            assert captured[0] == "S->C"
            assert_frame(non_object, await recv_text(ws), captured[1])
            await expect_server_close(ws, 1000, "")

    run(body)


def test_capture_generic_ws6_binary_frame(server) -> None:
    """oe010_generic ws#6: a binary frame -> SESSION_ERROR "'text'", then close 1000."""
    (captured,) = capture_exchanges(GENERIC, 6)

    async def body():
        async with connect(server.ws_url) as ws:
            await ws.send(b"\x01\x02")
            assert_frame("<binary 2 bytes>", await recv_text(ws), captured[1])
            await expect_server_close(ws, 1000, "")

    run(body)


def test_dropped_sockets_do_not_affect_other_sessions(server) -> None:
    """Dropping a socket mid-episode leaves other sessions intact (DESIGN.md invariant 5)."""

    async def body():
        async with connect(server.ws_url) as keeper:
            await keeper.send('{"type": "reset", "data": {"episode_id": "keeper"}}')
            await recv_text(keeper)
            for _ in range(3):
                ws = await connect(server.ws_url)
                await ws.send('{"type": "step", "data": {"message": "x"}}')
                await recv_text(ws)
                ws.transport.abort()  # no close frame, no {"type":"close"}
            await keeper.send('{"type": "state"}')
            assert await recv_text(keeper) == (
                '{"type":"state","data":{"episode_id":"keeper","step_count":0,"last_message":""}}'
            )

    run(body)


# --- step-path MCP and `mcp` frames (oe010_mcp ws#2, adapted to the one tool) ---------------


def _captured_reply(name: str, ws_no: int, request: str) -> str:
    exchanges = capture_exchanges(name, ws_no)
    texts = [t for _, t in exchanges]
    direction, reply = exchanges[texts.index(request) + 1]
    assert direction == "S->C"
    return reply


def _only_echo_message(frame: str) -> str:
    """A captured reply listing two tools, re-serialised with `echo_message` only."""
    obj = json.loads(frame)
    holder = obj["data"]["observation"] if obj["type"] == "observation" else obj["data"]["result"]
    holder["tools"] = [t for t in holder["tools"] if t["name"] == "echo_message"]
    return compact(obj)


TOOL_KEYS_010 = [
    "name", "title", "description", "inputSchema", "outputSchema", "icons", "annotations", "meta", "execution",
]


def assert_jsonrpc_echo_tool_list(result) -> None:
    """JSON-RPC `tools/list` result: MUST name/description/inputSchema, MAY other 0.10 keys (§6.4)."""
    assert list(result) == ["tools"]
    (tool,) = result["tools"]
    assert tool["name"] == "echo_message"
    assert tool["description"] == "Echo back the provided message."
    assert tool["inputSchema"] == {
        "additionalProperties": False,
        "properties": {"message": {"type": "string", "description": "The message to echo back"}},
        "required": ["message"],
        "type": "object",
    }
    keys = list(tool)
    assert set(keys) <= set(TOOL_KEYS_010), f"keys beyond the 0.10 tool dump: {keys}"
    assert keys == [k for k in TOOL_KEYS_010 if k in keys], f"tool keys out of 0.10 order: {keys}"


def test_step_path_mcp_frames(server) -> None:
    call = '{"type": "step", "data": {"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "raw step"}}}'
    listing = '{"type": "step", "data": {"type": "list_tools"}}'
    nope = '{"type": "step", "data": {"type": "call_tool", "tool_name": "nope", "arguments": {}}}'
    untyped = '{"type": "step", "data": {"tool_name": "echo_message", "arguments": {"message": "no type"}}}'

    async def body():
        async with connect(server.ws_url) as ws:
            for request, expected in (
                (call, _captured_reply(MCP, 2, call)),
                (listing, _only_echo_message(_captured_reply(MCP, 2, listing))),
                (nope, _captured_reply(MCP, 2, nope)),
                (untyped, _captured_reply(MCP, 2, untyped)),
            ):
                await ws.send(request)
                assert_frame(request, await recv_text(ws), expected)
            # Step-path MCP actions are steps (PROTOCOL.md §6.1).
            await ws.send('{"type": "state"}')
            state = json.loads(await recv_text(ws))
            assert state["type"] == "state" and state["data"]["step_count"] == 4, state

    run(body)


def test_mcp_frames_on_ws(server) -> None:
    listing = '{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}'
    call = '{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo_message", "arguments": {"message": "abc"}}, "id": 2}}'
    nope = '{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "nope", "arguments": {}}, "id": 3}}'
    call_reply = (
        '{"type":"mcp","data":{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"abc",'
        '"annotations":null,"meta":null}],"structured_content":{"result":"abc"},'
        '"meta":{"fastmcp":{"wrap_result":true}},"data":"abc","is_error":false}}}'
    )

    async def body():
        async with connect(server.ws_url) as ws:
            await ws.send(listing)
            reply = json.loads(await recv_text(ws))
            assert reply["type"] == "mcp" and reply["data"]["id"] == 1
            assert_jsonrpc_echo_tool_list(reply["data"]["result"])
            await ws.send(call)
            assert_frame(call, await recv_text(ws), call_reply)
            await ws.send(nope)
            assert_frame(nope, await recv_text(ws), _captured_reply(MCP, 2, nope))
            # JSON-RPC tool calls bypass env.step: no step counted.
            await ws.send('{"type": "state"}')
            state = json.loads(await recv_text(ws))
            assert state["data"]["step_count"] == 0, state

    run(body)


def test_mcp_websocket_endpoint(server) -> None:
    """oe010_mcp ws#3: bare JSON-RPC on the `/mcp` WebSocket, `json.dumps` spacing (§6.3)."""
    exchanges = capture_exchanges(MCP, 3)
    first_request = exchanges[0][1]
    assert first_request.startswith('{"jsonrpc": "2.0", "method": "tools/list"')

    async def body():
        async with connect(f"ws://{server.host_port}/mcp") as ws:
            await ws.send(first_request)
            reply = json.loads(await recv_text(ws))
            assert list(reply) == ["jsonrpc", "id", "result"] and reply["id"] == 1
            assert_jsonrpc_echo_tool_list(reply["result"])
            await replay(ws, exchanges[2:])  # tools/call "hi" id "x", garbage, resources/list

    run(body)


# --- connect-time refusals ---------------------------------------------------------------


def _mcp_post(server, method: str, params: dict, req_id) -> httpx.Response:
    return httpx.post(
        f"{server.url}/mcp",
        json={"jsonrpc": "2.0", "method": method, "params": params, "id": req_id},
        timeout=5,
    )


def test_capture_attach(server) -> None:
    """oe010_attach: POST /mcp session -> /ws?session_id= attach, a second attach refused,
    close while attached -> closing:true, detach destroys it; unknown id refused."""
    exchanges = capture_exchanges(ATTACH, 1)
    http = capture_http(ATTACH)
    created = json.loads(http[1][4])
    captured_sid = created["result"]["session_id"]

    reply = _mcp_post(server, "openenv/session/create", {}, 1)
    assert reply.status_code == 200
    body_json = reply.json()
    sid = body_json["result"]["session_id"]
    assert is_uuid4(sid), body_json
    assert reply.text == http[1][4].replace(captured_sid, sid)

    def ours(text: str) -> str:
        return text.replace(captured_sid, sid)

    async def body():
        async with connect(f"{server.ws_url}?session_id={sid}") as ws1:
            await replay(ws1, exchanges[:4])  # reset {"episode_id": "attached"}, one step

            async with connect(f"{server.ws_url}?session_id={sid}") as ws2:
                (refusal,) = capture_exchanges(ATTACH, 2)
                assert_frame("(attach while attached)", await recv_text(ws2), ours(refusal[1]))
                await expect_server_close(ws2, 1000, "")

            closing = await asyncio.to_thread(_mcp_post, server, "openenv/session/close", {"session_id": sid}, 2)
            assert (closing.status_code, closing.text) == (200, ours(http[2][4]))

            await replay(ws1, exchanges[4:6])  # state: episode "attached", step_count 1
            await ws1.send('{"type": "close"}')
            await expect_server_close(ws1, 1000, "")

        # The pending close completes when the socket detaches.
        gone = ours(http[3][4])
        eventually(
            lambda: _mcp_post(server, "openenv/session/close", {"session_id": sid}, 3).text == gone,
            5.0,
            f"session/close -> {gone}",
        )

        async with connect(f"{server.ws_url}?session_id=nope") as ws3:
            (refusal,) = capture_exchanges(ATTACH, 3)
            assert_frame("(attach to nope)", await recv_text(ws3), refusal[1])
            await expect_server_close(ws3, 1000, "")

    run(body)


def test_attach_then_detach_keeps_http_session(server) -> None:
    """Without a pending close, detaching leaves the HTTP-owned session alive (§3.7)."""
    sid = _mcp_post(server, "openenv/session/create", {}, 1).json()["result"]["session_id"]

    async def body():
        async with connect(f"{server.ws_url}?session_id={sid}") as ws:
            await ws.send('{"type": "reset", "data": {"episode_id": "kept"}}')
            await recv_text(ws)
            await ws.send('{"type": "step", "data": {"message": "one"}}')
            await recv_text(ws)
            await ws.send('{"type": "close"}')
            await expect_server_close(ws)
        # Re-attach: same env, same episode (detaching did not destroy it).
        async with connect(f"{server.ws_url}?session_id={sid}") as ws:
            await ws.send('{"type": "state"}')
            assert await recv_text(ws) == (
                '{"type":"state","data":{"episode_id":"kept","step_count":1,"last_message":"one"}}'
            )

    run(body)
    closed = _mcp_post(server, "openenv/session/close", {"session_id": sid}, 5)
    assert closed.text == f'{{"jsonrpc":"2.0","id":5,"result":{{"session_id":"{sid}","closed":true}}}}'


def test_capacity_refusal_frame_and_http(server_factory) -> None:
    """oe010_limits: at capacity a /ws connection gets 101, one CAPACITY_REACHED frame, close
    1000; HTTP-MCP session/create gets -32000; the stateless POST /step still works."""
    server = server_factory("--max-sessions", "1")
    limits = {}
    for line in read_capture("oe010_limits.txt").splitlines():
        if line.startswith("[") and "] " in line:
            key, _, value = line[1:].partition("] ")
            limits[key] = value
    # Values are Python reprs in this capture.
    refusal_frame = ast.literal_eval(limits["raw refused: first frame (sent without any request)"])
    assert ast.literal_eval(limits["raw refused: close"]) == (1000, "")
    session_create = ast.literal_eval(limits["HTTP session/create at capacity"])
    step_while_full = ast.literal_eval(limits["HTTP /step at capacity (stateless path)"])

    async def body():
        async with connect(server.ws_url) as holder:
            await holder.send('{"type": "reset", "data": {}}')
            await recv_text(holder)  # the slot is certainly taken now

            async with connect(server.ws_url) as refused:  # the handshake succeeds (101)
                assert_frame("(nothing: connect-time error)", await recv_text(refused), refusal_frame)
                await expect_server_close(refused, 1000, "")

            reply = await asyncio.to_thread(_mcp_post, server, "openenv/session/create", {}, 1)
            assert (reply.status_code, reply.text) == session_create

            reply = await asyncio.to_thread(
                lambda: httpx.post(f"{server.url}/step", json={"action": {"message": "http-while-full"}}, timeout=5)
            )
            assert (reply.status_code, reply.text) == step_while_full

            await holder.send('{"type": "step", "data": {"message": "still-mine"}}')
            assert json.loads(await recv_text(holder))["data"]["reward"] == 1.0

    run(body)
