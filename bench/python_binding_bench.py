"""Per-step overhead of the `openenv-rs` Python binding, in one run, on the echo env:

- the Rust client (`env_client::EnvClient`, python/examples/rust_step_bench.rs);
- the binding: sync `openenv_rs.EnvClient` and asyncio `openenv_rs.AsyncEnvClient`;
- the asyncio floor: asyncio streams on a raw socket writing one pre-built frame per step and
  reading the reply's bytes, no parsing — what any asyncio-native client pays at least;
- the official Python client (`openenv` 0.10.0 `GenericEnvClient`, sync and async), when it
  is installed in the interpreter running this script.

All of them step the same `env-server --env echo` process, one session at a time, in ROUNDS
rounds that alternate between the clients (so that the machine's noise falls on all of them
alike): each round connects, `reset()`s, runs WARMUP/ROUNDS (at least 50) untimed steps and
STEPS/ROUNDS timed `step({"message": "hi"})`, each timed on its own. Prints p50/p90/p99 (nearest rank) and steps/s per client, and each one's
p50 and p99 as a ratio to the Rust client's (target for the binding: ≤ 1.5×, `DESIGN.md`).

By default the server is pinned to CPU 0 and the clients to CPU 1 (as in `PROTOCOL.md` §10);
`--no-pin` turns that off.

Run from the repository root, with the wheel installed in release mode:

    scripts/python-wheel.sh                      # builds and installs the wheel (--release)
    cargo build --release -p env-server          # the server under test
    .venv/bin/python bench/python_binding_bench.py [--steps 5000] [--warmup 500]

The Rust side is built on first use with
`cargo build --release -p openenv-rs-python --example rust_step_bench --target-dir
target/bench-rust` (its own target dir, so it never invalidates the wheel's build).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
READY_RE = re.compile(r"^env-server listening on 127\.0\.0\.1:(\d+)$")
RUST_TARGET_DIR = REPO / "target" / "bench-rust"
ACTION = {"message": "hi"}
RUST_BUILT: List[bool] = []  # the Rust side is built once per run


# -- the server ----------------------------------------------------------------------------


class Server:
    def __init__(self, binary: Path, cpu: Optional[int]) -> None:
        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen(
            [str(binary), "serve", "--env", "echo", "--host", "127.0.0.1", "--port", "0",
             "--max-sessions", "64"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=pin, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("ENV_SERVER_")},
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + 20
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop()
                sys.exit("env-server did not print its ready line within 20 s")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.stop()
                sys.exit("env-server exited at start")
            buf += chunk
        match = READY_RE.match(buf.split(b"\n", 1)[0].decode())
        if match is None:
            self.stop()
            sys.exit(f"unexpected ready line {buf!r}")
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the clients ---------------------------------------------------------------------------


def rust_client(url: str, steps: int, warmup: int) -> List[float]:
    binary = RUST_TARGET_DIR / "release" / "examples" / "rust_step_bench"
    build = [
        "cargo", "build", "--release", "--quiet", "-p", "openenv-rs-python",
        "--example", "rust_step_bench", "--target-dir", str(RUST_TARGET_DIR),
    ]
    if not RUST_BUILT:
        print("  building the Rust side (cargo, release; first run takes a few minutes)",
              file=sys.stderr, flush=True)
        subprocess.run(build, cwd=REPO, check=True)
        RUST_BUILT.append(True)
    out = subprocess.run(
        [str(binary), url, str(steps), str(warmup)], capture_output=True, text=True, check=True
    ).stdout
    return [float(x) for x in json.loads(out)["samples_us"]]


def timed_sync(step: Callable[[], object], steps: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        step()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(steps):
        t0 = clock()
        step()
        samples.append((clock() - t0) / 1e3)
    return samples


async def timed_async(env: object, steps: int, warmup: int) -> List[float]:
    """Resets `env`, runs `warmup` untimed steps, then times `steps` steps one by one."""
    await env.reset()  # type: ignore[attr-defined]
    for _ in range(warmup):
        await env.step(ACTION)  # type: ignore[attr-defined]
    clock = time.perf_counter_ns
    samples = []
    for _ in range(steps):
        t0 = clock()
        await env.step(ACTION)  # type: ignore[attr-defined]
        samples.append((clock() - t0) / 1e3)
    return samples


def binding_sync(url: str, steps: int, warmup: int) -> List[float]:
    from openenv_rs import EnvClient

    with EnvClient(url) as env:
        env.reset()
        return timed_sync(lambda: env.step(ACTION), steps, warmup)


def binding_async(url: str, steps: int, warmup: int) -> List[float]:
    from openenv_rs import AsyncEnvClient

    async def run() -> List[float]:
        async with AsyncEnvClient(url) as env:
            return await timed_async(env, steps, warmup)

    return asyncio.run(run())


def official_async(url: str, steps: int, warmup: int) -> List[float]:
    from openenv.core import GenericEnvClient

    async def run() -> List[float]:
        async with GenericEnvClient(base_url=url) as env:
            return await timed_async(env, steps, warmup)

    return asyncio.run(run())


def asyncio_floor(url: str, steps: int, warmup: int) -> List[float]:
    """The floor of any asyncio-native client on this machine: asyncio streams on a raw
    socket, the WebSocket handshake by hand, then each step writes one pre-built masked frame
    and reads the reply's bytes (no JSON, no frame object): one event-loop wake-up per reply
    and nothing else."""
    import base64
    import struct

    host, port = url.split("//", 1)[1].split(":")

    def frame(text: str) -> bytes:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        return bytes([0x81, 0x80 | len(payload)]) + mask + masked

    async def read_frame(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
        return await reader.readexactly(size)

    async def run() -> List[float]:
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        writer.write(frame(json.dumps({"type": "reset", "data": {}})))
        await read_frame(reader)
        step = frame(json.dumps({"type": "step", "data": ACTION}))
        for _ in range(warmup):
            writer.write(step)
            await read_frame(reader)
        clock = time.perf_counter_ns
        samples = []
        for _ in range(steps):
            t0 = clock()
            writer.write(step)
            reply = await read_frame(reader)
            samples.append((clock() - t0) / 1e3)
        assert b'"observation"' in reply, reply
        writer.close()
        return samples

    return asyncio.run(run())


def official_sync(url: str, steps: int, warmup: int) -> List[float]:
    from openenv.core import GenericEnvClient

    with GenericEnvClient(base_url=url).sync() as env:
        env.reset()
        return timed_sync(lambda: env.step(ACTION), steps, warmup)


def throughput(client: str, url: str, sessions: int, steps: int) -> float:
    """Steps/s of `sessions` concurrent sessions stepping in a closed loop in one event loop."""

    async def one(env: object) -> None:
        await env.reset()  # type: ignore[attr-defined]
        for _ in range(steps):
            await env.step(ACTION)  # type: ignore[attr-defined]

    async def run() -> float:
        if client == "binding":
            from openenv_rs import AsyncEnvClient

            envs = [AsyncEnvClient(url) for _ in range(sessions)]
            await asyncio.gather(*(env.connect() for env in envs))
        else:
            from openenv.core import GenericEnvClient

            envs = [GenericEnvClient(base_url=url) for _ in range(sessions)]
            await asyncio.gather(*(env.connect() for env in envs))
        start = time.perf_counter()
        await asyncio.gather(*(one(env) for env in envs))
        elapsed = time.perf_counter() - start
        await asyncio.gather(*(env.close() for env in envs))
        return sessions * (steps + 1) / elapsed

    return asyncio.run(run())


# -- the report ----------------------------------------------------------------------------


def percentile(sorted_samples: List[float], q: float) -> float:
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return sorted_samples[rank - 1]


def summary(samples: List[float]) -> Dict[str, float]:
    s = sorted(samples)
    return {
        "p50": percentile(s, 0.50),
        "p90": percentile(s, 0.90),
        "p99": percentile(s, 0.99),
        "steps_per_s": len(s) / (sum(s) / 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per client")
    parser.add_argument("--warmup", type=int, default=500, help="untimed steps first")
    parser.add_argument("--official-steps", type=int, default=2000,
                        help="timed steps of the (slower) official client")
    parser.add_argument("--server-bin", type=Path, default=None,
                        help="env-server binary (default: target/release, else target/debug)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--sessions", type=int, default=64,
                        help="concurrent sessions of the async throughput run (0 = skip it)")
    parser.add_argument("--session-steps", type=int, default=200,
                        help="steps per session in the throughput run")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds the timed steps are split into, alternating between the "
                             "clients so that machine noise falls on all of them alike")
    parser.add_argument("--clients",
                        default="rust,sync,async,asyncio-floor,official-sync,official-async",
                        help="which clients to run (comma-separated; rust is always run)")
    args = parser.parse_args()

    binary = args.server_bin or next(
        (p for p in (REPO / "target" / "release" / "env-server",
                     REPO / "target" / "debug" / "env-server") if p.is_file()), None)
    if binary is None:
        sys.exit("no env-server binary: run `cargo build --release -p env-server`")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server = Server(binary, 0 if pin else None)
    if pin:
        os.sched_setaffinity(0, {1})

    import openenv_rs

    if openenv_rs._native.__build__ != "release":
        server.stop()
        sys.exit("the installed openenv_rs is a debug build: run `scripts/python-wheel.sh` "
                 "(release) first")
    wanted = set(args.clients.split(",")) | {"rust"}
    runs: List[tuple] = [("rust EnvClient (env-client)", rust_client, args.steps)]
    if "sync" in wanted:
        runs.append(("openenv_rs.EnvClient (sync)", binding_sync, args.steps))
    if "async" in wanted:
        runs.append(("openenv_rs.AsyncEnvClient", binding_async, args.steps))
    if "asyncio-floor" in wanted:
        runs.append(("asyncio floor (raw socket, no parsing)", asyncio_floor, args.steps))
    official: Optional[str] = None
    try:
        import openenv  # noqa: F401

        from importlib.metadata import version

        official = version("openenv")
    except ImportError:
        print("  (official `openenv` client not installed: skipped)", file=sys.stderr)
    if official and "official-sync" in wanted:
        runs.append((f"openenv {official} GenericEnvClient (sync)", official_sync,
                     args.official_steps))
    if official and "official-async" in wanted:
        runs.append((f"openenv {official} GenericEnvClient (async)", official_async,
                     args.official_steps))

    results: Dict[str, Dict[str, float]] = {}
    rates: Dict[str, float] = {}
    try:
        rounds = max(1, args.rounds)
        warmup = max(50, args.warmup // rounds)
        samples: Dict[str, List[float]] = {name: [] for name, _, _ in runs}
        for r in range(rounds):
            print(f"  round {r + 1}/{rounds}: " + ", ".join(name for name, _, _ in runs),
                  file=sys.stderr, flush=True)
            for name, run, steps in runs:
                samples[name] += run(server.url, max(1, steps // rounds), warmup)
        results = {name: summary(samples[name]) for name, _, _ in runs}
        if args.sessions > 0:
            contenders = [("openenv_rs.AsyncEnvClient", "binding")]
            if official:
                contenders.append((f"openenv {official} GenericEnvClient (async)", "official"))
            for name, kind in contenders:
                print(f"  throughput: {name}, {args.sessions} sessions …", file=sys.stderr,
                      flush=True)
                rates[name] = throughput(kind, server.url, args.sessions, args.session_steps)
    finally:
        server.stop()

    rust = results[runs[0][0]]
    print(f"\nStep round trip, echo env, one session ({rounds} rounds alternating between the "
          f"clients, {warmup} untimed steps each); server {binary.relative_to(REPO)}"
          f"{' pinned to CPU 0, clients to CPU 1' if pin else ' (unpinned)'}; "
          f"openenv_rs {openenv_rs.__version__}, Python {sys.version.split()[0]}\n")
    header = f"{'client':<42} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'steps/s':>9} " \
             f"{'p50 ×rust':>10} {'p99 ×rust':>10}"
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        print(f"{name:<42} {row['p50']:>8.1f} {row['p90']:>8.1f} {row['p99']:>8.1f} "
              f"{row['steps_per_s']:>9.0f} {row['p50'] / rust['p50']:>9.2f}× "
              f"{row['p99'] / rust['p99']:>9.2f}×")
    by_kind = {name.split(" ")[0] + (" async" if "async" in name.lower() else " sync"): row
               for name, row in results.items()}
    for kind in ("openenv_rs.EnvClient sync", "openenv_rs.AsyncEnvClient async"):
        if kind in by_kind:
            ratio = by_kind[kind]["p50"] / rust["p50"]
            verdict = "meets" if ratio <= 1.5 else "misses"
            print(f"\n{kind.split()[0]}: p50 / Rust client p50 = {ratio:.2f}× — {verdict} the "
                  "≤ 1.5× target", end="")
    print()
    for mode in ("sync", "async"):
        ours = by_kind.get(f"openenv_rs.{'EnvClient' if mode == 'sync' else 'AsyncEnvClient'} {mode}")
        theirs = by_kind.get(f"openenv {mode}")
        if ours and theirs:
            print(f"official {mode} client p50 / binding {mode} p50 = "
                  f"{theirs['p50'] / ours['p50']:.2f}×")
    if rates:
        print(f"\nThroughput, {args.sessions} concurrent sessions in one event loop "
              f"({args.session_steps} steps each):")
        for name, rate in rates.items():
            print(f"  {name:<42} {rate:>9.0f} steps/s")
    if args.json:
        print(json.dumps({"latency": results, "throughput": rates}, indent=2))


if __name__ == "__main__":
    main()
