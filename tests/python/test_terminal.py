"""The official clients against env-server's terminal env on the local bubblewrap sandbox.

`MCPToolClient` runs a whole episode with the `terminal` tool (0.10: JSON-RPC on `POST /mcp`
with an HTTP-MCP session; 0.3: step-path MCP on `/ws`). The JSON-RPC results carry the
episode's `done` and reward in `result.meta.openenv` (TERMINAL_ENV.md §4.1), which the official
client ignores. The stateless HTTP routes create no sandbox and refuse (§7).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from openenv.core.mcp_client import MCPToolClient

from _support import IS_010, run

SESSION_REQUIRED = "terminal env requires a session (WebSocket /ws or an attached MCP session)"


@pytest.fixture
def sandbox_root():
    """A sandbox root the sandboxes' own uids can traverse (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="openenv-pytest-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def terminal_server(server_factory, root: Path):
    return server_factory("--env", "terminal", "--sandbox-root", str(root))


def test_mcp_tool_client_runs_a_terminal_episode(server_factory, sandbox_root) -> None:
    server = terminal_server(server_factory, sandbox_root)

    async def body():
        async with MCPToolClient(base_url=server.url) as env:
            r = await env.reset(verify=["test \"$(cat hello.txt)\" = hi"])
            assert r.done is False
            if IS_010:
                assert r.metadata["status"] == "ready"
            assert [t.name for t in await env.list_tools()] == ["terminal"]
            out = await env.call_tool("terminal", command="echo hi > hello.txt; cat hello.txt")
            assert out == "hi"
            if IS_010:
                # The same call as raw JSON-RPC on the client's session: meta.openenv is there,
                # beside fastmcp's key.
                reply = httpx.post(
                    f"{server.url}/mcp",
                    json={
                        "jsonrpc": "2.0",
                        "id": 99,
                        "method": "tools/call",
                        "params": {
                            "name": "terminal",
                            "arguments": {"command": "pwd"},
                            "session_id": env._production_session_id,
                        },
                    },
                    timeout=30,
                ).json()
                assert reply["result"]["data"] == "/home/user"
                assert reply["result"]["meta"] == {
                    "fastmcp": {"wrap_result": True},
                    "openenv": {"done": False, "reward": 0.0},
                }
            final = await env.call_tool("terminal", final_answer="done")
            assert final == "Answer submitted: done\nVerification: 1/1 passed; reward=1.0"

    run(body, timeout_s=60.0)


def test_stateless_http_creates_no_sandbox(server_factory, sandbox_root) -> None:
    server = terminal_server(server_factory, sandbox_root)
    reply = httpx.post(f"{server.url}/reset", json={}, timeout=10).json()
    assert reply["done"] is True
    assert reply["metadata"] == {"status": "error", "error": SESSION_REQUIRED}
    step = {"action": {"type": "call_tool", "tool_name": "terminal", "arguments": {"command": "ls"}}}
    reply = httpx.post(f"{server.url}/step", json=step, timeout=10).json()
    assert reply["observation"]["result"]["data"] == "Error: environment not reset. Call reset() first."
    # Episodes are the `openenv-rs-*` directories under the root.
    episodes = [p for p in sandbox_root.iterdir() if p.name.startswith("openenv-rs-")]
    assert episodes == [], "a sandbox directory was created"
