"""The `env-server serve` command line as the fixtures and launchers rely on it."""

from __future__ import annotations

import httpx

from openenv.core import GenericEnvClient


def test_ready_line_health_and_clean_stdout(server_factory) -> None:
    server = server_factory()  # the fixture already matched the one ready line
    assert 0 < server.port < 65536
    # §9 item 14: /health answers as soon as the listener is up (no warm-up).
    reply = httpx.get(f"{server.url}/health", timeout=5)
    assert (reply.status_code, reply.text) == (200, '{"status":"healthy"}')

    with GenericEnvClient(base_url=server.url).sync() as env:
        env.reset()
        env.step({"message": "x"})
        try:
            env.step({"msg": "bad"})
        except RuntimeError:
            pass

    assert server.stop() is None, "the server exited before it was asked to"
    assert not server.killed, "the server ignored SIGTERM for 5 s"
    assert bytes(server.stdout_rest) == b"", (
        "stdout must carry only the ready line (logs belong on stderr); "
        f"after it came {bytes(server.stdout_rest)[:500]!r}"
    )


def test_max_sessions_flag_is_applied(server_factory) -> None:
    # Two servers side by side, each on its own port 0 pick.
    one = server_factory("--max-sessions", "1")
    two = server_factory("--max-sessions", "2")
    assert one.port != two.port
    for server, cap in ((one, 1), (two, 2)):
        clients = [GenericEnvClient(base_url=server.url).sync() for _ in range(cap)]
        try:
            for client in clients:
                client.connect()
                client.reset()
            extra = GenericEnvClient(base_url=server.url).sync()
            try:
                try:
                    extra.reset()
                except RuntimeError as err:
                    assert f"Server at capacity: {cap}/{cap} sessions active." in str(err)
                except Exception as err:  # 0.3: a close racing the first send (PROTOCOL.md §3.5)
                    assert "1000" in str(err), repr(err)
                else:
                    raise AssertionError(f"session {cap + 1} accepted past --max-sessions {cap}")
            finally:
                extra.close()
        finally:
            for client in clients:
                client.close()
