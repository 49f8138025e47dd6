"""Hedging against a long-tail server, over real HTTP on loopback.

Run it with ``python benchmarks/hedge.py`` (``--calls`` to change the sample). A
uvicorn server answers ``/tail`` in about ``median`` seconds, except a ``tail``
share of answers that take ten times as long, and ``/uniform`` always in about
``median`` seconds (both with ±25% jitter, from a seeded generator). The same
calls run, ``concurrency`` at a time, with and without
``Hedge(percentile=90.0, min_delay=3 * median)``; the script prints p50, p99 and
the requests the server saw per call. The percentile must sit below the tail (a
p95 of a server whose slowest 5% take ten times as long lands in the tail itself,
and hedging then starts too late to help).

The issue's targets: on the long tail, p99 cut by at least half for at most 10%
more requests; on the uniform server, no extra request at all. The floor is what
gives the second: a percentile alone hedges the slowest (100 - p)% of calls of any
server, however uniform.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import Hedge, Pipeline, ResilientTransport
from resilience.testing import serve


class Server:
    """The ASGI app: a latency per request, and a count of requests per path."""

    def __init__(self, median: float, tail: float, seed: int) -> None:
        self.median = median
        self.tail = tail
        self.rng = random.Random(seed)
        self.seen: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.seen[path] = self.seen.get(path, 0) + 1
        latency = self.median * self.rng.uniform(0.75, 1.25)
        if path == "/tail" and self.rng.random() < self.tail:
            latency *= 10
        await asyncio.sleep(latency)  # the server runs its own asyncio loop
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


async def run(base: str, path: str, hedge: Hedge | None, calls: int, workers: int) -> list[float]:
    """Latencies of ``calls`` GETs of ``path``, ``workers`` at a time."""
    layers = [hedge] if hedge is not None else []
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=workers * 4))
    transport = ResilientTransport(Pipeline(layers, telemetry=False), inner=inner)
    latencies: list[float] = []
    remaining = calls
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def main(calls: int, workers: int, median: float, tail: float) -> None:
    server = Server(median, tail, seed=7)
    print(
        f"loopback uvicorn; {calls} calls per run, {workers} at a time; answers take "
        f"{median * 1000:.0f} ms ±25%, {tail:.0%} of /tail answers ten times that"
    )
    print(f"{'server':<9} {'variant':<38} {'p50 ms':>7} {'p99 ms':>7} {'requests/call':>14}")
    print("-" * 79)
    async with serve(server) as base:
        for path in ("/tail", "/uniform"):
            results = {}
            for name, hedge in (
                ("no hedging", None),
                (
                    f"Hedge(percentile=90, min_delay={3 * median * 1000:.0f}ms)",
                    Hedge(percentile=90.0, min_delay=3 * median, delay=3 * median),
                ),
            ):
                before = server.seen.get(path, 0)
                latencies = await run(base, path, hedge, calls, workers)
                sent = server.seen.get(path, 0) - before
                p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
                results[name] = (p99, sent / calls)
                print(
                    f"{path.strip('/'):<9} {name:<38} {p50 * 1000:7.1f} {p99 * 1000:7.1f} "
                    f"{sent / calls:14.3f}"
                )
            (base_p99, _), (hedged_p99, extra) = results.values()
            if path == "/tail":
                verdict = "met" if hedged_p99 <= base_p99 / 2 and extra <= 1.10 else "MISSED"
                print(
                    f"{'':<9} target p99 <= {base_p99 / 2 * 1000:.1f} ms for <= 1.10 "
                    f"requests/call: {verdict}"
                )
            else:
                verdict = "met" if extra == 1.0 else "MISSED"
                print(f"{'':<9} target: 1.000 requests/call: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per run")
    parser.add_argument("--workers", type=int, default=8, help="calls in flight")
    parser.add_argument("--median", type=float, default=0.05, help="seconds per answer")
    parser.add_argument("--tail", type=float, default=0.05, help="share of slow answers")
    args = parser.parse_args()
    anyio.run(main, args.calls, args.workers, args.median, args.tail)
