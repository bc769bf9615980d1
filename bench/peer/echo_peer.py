"""The benchmark peer: the official OpenEnv 0.10.0 server with a plain echo env under uvicorn.

The env is the plain echo env of shared/spec/PROTOCOL.md §10 (the peer baseline): action
`message: str`; observation `echoed_message`, `message_length`; reward `len(message) / 10`;
done on "bye"; metadata `{"step": n}`. Its reset answers `echoed_message` "ready", like
env-server's echo env, so both sides do the same work per frame.

One uvicorn process on 127.0.0.1, no access log. Once it accepts connections it prints
exactly one line on stdout, `echo-peer listening on 127.0.0.1:<port>`, as env-server does.

Usage: python echo_peer.py PORT MAX_CONCURRENT_ENVS     (PORT 0 = any free port)
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Optional

import uvicorn
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class EchoAction(Action):
    """The one action: a message to echo."""

    message: str


class EchoObservation(Observation):
    """The echoed message and its length (plus the base `done`, `reward`, `metadata`)."""

    echoed_message: str
    message_length: int


class EchoEnvironment(Environment):
    """Echoes each message; reward 0.1 per character; the episode ends on "bye"."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(episode_id=None, step_count=0)

    def reset(
        self,
        seed: Optional[int] = None,
        episode_id: Optional[str] = None,
        **kwargs: Any,
    ) -> EchoObservation:
        self._state = State(episode_id=episode_id, step_count=0)
        return EchoObservation(
            echoed_message="ready",
            message_length=0,
            metadata={"seed": seed, "reset_kwargs": kwargs},
        )

    def step(
        self,
        action: EchoAction,
        timeout_s: Optional[float] = None,
        **kwargs: Any,
    ) -> EchoObservation:
        self._state.step_count += 1
        message = action.message
        return EchoObservation(
            echoed_message=message,
            message_length=len(message),
            reward=len(message) / 10,
            done=message == "bye",
            metadata={"step": self._state.step_count},
        )

    @property
    def state(self) -> State:
        return self._state


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the ready line once it is listening."""

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"echo-peer listening on {host}:{port}", flush=True)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: echo_peer.py PORT MAX_CONCURRENT_ENVS")
    port, capacity = int(sys.argv[1]), int(sys.argv[2])
    app = create_app(
        EchoEnvironment,
        EchoAction,
        EchoObservation,
        env_name="echo",
        max_concurrent_envs=capacity,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    AnnouncingServer(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
