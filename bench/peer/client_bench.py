"""Step round trip of the official Python client (`openenv` 0.10.0, async `GenericEnvClient`).

The method of shared/spec/PROTOCOL.md §10: connect, `reset()`, WARMUP untimed steps, then STEPS
timed `step({"message": "hi"})`, each timed with `perf_counter_ns`. Prints one JSON object on
stdout: `{"client": …, "latencies_ns": [...], "wall_s": …}`; env-bench turns the latencies into
HdrHistogram percentiles, so both languages are summarised the same way.

Usage: python client_bench.py BASE_URL STEPS WARMUP
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from openenv.core import GenericEnvClient


async def run(base_url: str, steps: int, warmup: int) -> dict:
    action = {"message": "hi"}
    latencies: list[int] = []
    async with GenericEnvClient(base_url=base_url) as env:
        await env.reset()
        for _ in range(warmup):
            await env.step(action)
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(steps):
            t0 = clock()
            result = await env.step(action)
            latencies.append(clock() - t0)
            if result.observation.get("echoed_message") != "hi":
                raise RuntimeError(f"unexpected observation: {result.observation!r}")
        wall_s = (clock() - start) / 1e9
    return {
        "client": "openenv 0.10.0 async GenericEnvClient",
        "latencies_ns": latencies,
        "wall_s": wall_s,
    }


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: client_bench.py BASE_URL STEPS WARMUP")
    base_url, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(run(base_url, steps, warmup))), flush=True)


if __name__ == "__main__":
    main()
