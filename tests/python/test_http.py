"""HTTP routes (PROTOCOL.md §1, §5, §6.3) with `httpx` (a dependency of both client generations).

Requests are the ones of the official captures; replies are compared byte for byte with the
captured ones, except uuid4 ids and where the echo env here differs from the captured plain echo
env (it serves one MCP tool, and its state model declares `last_message`).
"""

from __future__ import annotations

import json

import httpx
import pytest

from _support import capture_http, is_uuid4, mask_uuid_episode_ids, read_capture

GENERIC = "oe010_generic.frames.txt"
MCP = "oe010_mcp.frames.txt"


def captured(name: str, method: str, path: str, body: str) -> tuple[int, str]:
    for m, p, b, status, reply in capture_http(name):
        if (m, p, b) == (method, path, body):
            return status, reply
    raise KeyError(f"{method} {path} body={body} is not in {name}")


def send(server, method: str, path: str, body: str = "") -> httpx.Response:
    headers = {"content-type": "application/json"} if body else {}
    return httpx.request(
        method, f"{server.url}{path}", content=body.encode() if body else None, headers=headers, timeout=5
    )


def assert_captured(server, name: str, method: str, path: str, body: str = "") -> httpx.Response:
    status, expected = captured(name, method, path, body)
    reply = send(server, method, path, body)
    assert (reply.status_code, reply.text) == (status, expected), f"{method} {path} body={body!r}"
    if expected.startswith("{"):
        assert reply.headers["content-type"] == "application/json", reply.headers
    return reply


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", ""),
        ("GET", "/metadata", ""),
        ("POST", "/reset", ""),
        ("POST", "/reset", '{"seed":1,"episode_id":"http-ep"}'),
        ("POST", "/reset", '{"seed":-5}'),
        ("POST", "/step", '{"action":{"message":"http"}}'),
        ("POST", "/step", '{"action":{"message":"http"},"timeout_s":5,"request_id":"r1"}'),
        ("POST", "/step", '{"action":{"msg":"bad"}}'),
        ("POST", "/step", "{}"),
        ("POST", "/mcp", "{oops"),
        ("POST", "/mcp", '{"jsonrpc":"2.0","method":"nope","id":"a"}'),
        ("GET", "/", ""),
        ("GET", "/web", ""),
    ],
)
def test_captured_http_exchange(server, method, path, body) -> None:
    assert_captured(server, GENERIC, method, path, body)


def test_http_routes_are_stateless(server) -> None:
    # Each POST /step runs on a fresh env: always step 1 (PROTOCOL.md §5).
    for _ in range(2):
        assert_captured(server, GENERIC, "POST", "/step", '{"action":{"message":"http"}}')


def test_http_step_env_error_is_500(server) -> None:
    # core030_exec: POST /step whose env raised -> 500 text/plain "Internal Server Error".
    status, text = captured("core030_exec.frames.txt", "POST", "/step", '{"action":{"message":"raise"}}')
    reply = send(server, "POST", "/step", '{"action":{"message":"raise"}}')
    assert (reply.status_code, reply.text) == (status, text) == (500, "Internal Server Error")
    assert reply.headers["content-type"].startswith("text/plain")


def test_plain_get_ws_is_404(server) -> None:
    # core030_limits: GET /ws without Upgrade -> 404 {"detail":"Not Found"}.
    assert "[plain GET /ws] (404, '{\"detail\":\"Not Found\"}')" in read_capture("core030_limits.txt")
    reply = send(server, "GET", "/ws")
    assert (reply.status_code, reply.text) == (404, '{"detail":"Not Found"}')


def test_schema(server) -> None:
    _, captured_text = captured(GENERIC, "GET", "/schema", "")
    want = json.loads(captured_text)
    reply = send(server, "GET", "/schema")
    assert reply.status_code == 200
    assert "content-encoding" not in reply.headers  # `openenv validate` wants it uncompressed
    assert len(reply.content) <= 1 << 20
    got = reply.json()
    assert list(got) == ["action", "observation", "state", "reset_observation"]
    # The echo action/observation models are the captured ones.
    assert got["action"] == want["action"]
    assert got["observation"] == want["observation"]
    assert got["reset_observation"] == want["reset_observation"]
    # State: the base State fields, extras allowed (this env also declares last_message).
    state = got["state"]
    assert state["type"] == "object" and state["additionalProperties"] is True
    assert list(state["properties"])[:2] == ["episode_id", "step_count"]
    for field in ("episode_id", "step_count"):
        assert state["properties"][field] == want["state"]["properties"][field]


def test_http_state_is_a_fresh_env_through_the_declared_model(server) -> None:
    declared = list(send(server, "GET", "/schema").json()["state"]["properties"])
    reply = send(server, "GET", "/state")
    assert reply.status_code == 200
    state = reply.json()
    assert list(state) == declared, "GET /state must show exactly the declared state model"
    assert is_uuid4(state["episode_id"]) and state["step_count"] == 0
    # With the captured plain State model this is the captured reply.
    if declared == ["episode_id", "step_count"]:
        _, expected = captured(GENERIC, "GET", "/state", "")
        assert mask_uuid_episode_ids(reply.text) == mask_uuid_episode_ids(expected)


def test_openapi(server) -> None:
    reply = send(server, "GET", "/openapi.json")
    assert reply.status_code == 200
    doc = reply.json()
    assert doc["info"]["version"].startswith("1."), doc["info"]
    for path in ("/reset", "/step", "/state", "/health", "/schema", "/metadata", "/mcp"):
        assert path in doc["paths"], path


# --- POST /mcp -------------------------------------------------------------------------


def mcp(server, method: str, params: dict | None = None, req_id=1) -> httpx.Response:
    body = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        body["params"] = params
    return httpx.post(f"{server.url}/mcp", content=json.dumps(body, separators=(",", ":")), timeout=5)


def test_mcp_empty_body_is_invalid_request(server) -> None:
    # `openenv validate` posts {} and wants HTTP 200 with "jsonrpc":"2.0".
    reply = send(server, "POST", "/mcp", "{}")
    assert reply.status_code == 200
    data = reply.json()
    assert list(data) == ["jsonrpc", "id", "error"] and data["id"] is None
    assert data["error"]["code"] == -32600
    assert data["error"]["message"].startswith("Invalid request: ")
    assert data["error"]["data"] is None


def test_mcp_sessionless_tools(server) -> None:
    reply = mcp(server, "tools/list", {}, 1)
    assert reply.status_code == 200
    data = reply.json()
    assert list(data) == ["jsonrpc", "id", "result"] and data["id"] == 1
    (tool,) = data["result"]["tools"]
    assert (tool["name"], tool["description"]) == ("echo_message", "Echo back the provided message.")
    assert tool["inputSchema"]["required"] == ["message"]

    reply = mcp(server, "tools/call", {"name": "echo_message", "arguments": {"message": "http"}}, 2)
    assert reply.text == (
        '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"http","annotations":null,'
        '"meta":null}],"structured_content":{"result":"http"},"meta":{"fastmcp":{"wrap_result":true}},'
        '"data":"http","is_error":false}}'
    )
    reply = mcp(server, "tools/call", {"name": "nope", "arguments": {"x": 1}}, 5)
    assert reply.text == '{"jsonrpc":"2.0","id":5,"error":{"code":-32603,"message":"Unknown tool: \'nope\'","data":null}}'
    reply = mcp(server, "tools/call", {"arguments": {}}, 6)
    assert reply.text == '{"jsonrpc":"2.0","id":6,"error":{"code":-32602,"message":"Missing \'name\' in params","data":null}}'


def test_mcp_session_lifecycle(server) -> None:
    """Session create / call / close / close again, as in oe010_generic and oe010_mcp."""
    http = capture_http(MCP)
    create = next(r for r in http if '"openenv/session/create"' in r[2] and '"id":3' in r[2])
    captured_sid = json.loads(create[4])["result"]["session_id"]

    reply = mcp(server, "openenv/session/create", {}, 3)
    sid = reply.json()["result"]["session_id"]
    assert is_uuid4(sid)
    assert (reply.status_code, reply.text) == (200, create[4].replace(captured_sid, sid))

    # The captured requests of that session: call "in-session", call with an unknown session,
    # close, close again (-32602).
    later = http[http.index(create) + 1 :]
    assert len(later) == 4, later
    for request in later:
        body = request[2].replace(captured_sid, sid)
        reply = send(server, "POST", "/mcp", body)
        assert (reply.status_code, reply.text) == (request[3], request[4].replace(captured_sid, sid)), body


def test_mcp_session_close_errors(server) -> None:
    reply = mcp(server, "openenv/session/close", {}, 1)
    assert reply.text == (
        '{"jsonrpc":"2.0","id":1,"error":{"code":-32602,'
        '"message":"Invalid params - \'session_id\' is required","data":null}}'
    )
    reply = mcp(server, "tools/list", {"session_id": "nope"}, 2)
    assert reply.text == '{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Unknown session_id: nope","data":null}}'
