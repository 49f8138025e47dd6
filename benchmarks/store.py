"""The state stores: cost per call in memory and on Redis (loopback), and the
accuracy of one rate limit shared by 4 processes.

    python benchmarks/store.py [--quick]

Starts its own ``redis-server`` (as the tests do: a free loopback port, no
persistence). Figures:

* a call through ``Pipeline([RateLimiter])`` on ``httpx.MockTransport``, against
  the same pipeline without the layer: the layer's cost with each store;
* one ``take_slot`` and one ``update_budget``, awaited one after the other: the
  store's own cost (on Redis: one round trip, one Lua script);
* 4 processes taking slots of one 500/s limit for 2 s: slots given against
  ``rate * window + burst``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from resilience import MemoryStore, Pipeline, RateLimiter, RedisStore, ResilientTransport

_path = Path(__file__).resolve().parents[1] / "tests" / "_redis.py"
_spec = importlib.util.spec_from_file_location("_redis_helper", _path)
assert _spec is not None
assert _spec.loader is not None
helper: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)


async def per_call(client: httpx.AsyncClient, n: int) -> float:
    """Microseconds per sequential GET, best of 3 runs."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            await client.get("https://api.test/x")
        runs.append((time.perf_counter() - started) / n * 1e6)
    return min(runs)


def client(layers: list[Any]) -> httpx.AsyncClient:
    pipeline = Pipeline(layers, telemetry=False)
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner))


async def store_ops(store: Any, n: int) -> tuple[float, float]:
    """Microseconds per take_slot and per update_budget (median of 5 runs)."""
    slots, budgets = [], []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            await store.take_slot("bench", 0.0, 1e-6, 1_000_000, 0.0)
        slots.append((time.perf_counter() - started) / n * 1e6)
        started = time.perf_counter()
        for _ in range(n):
            await store.update_budget(
                "bench", 0.0, deposit=0.2, withdraw=True, refill=1.0, capacity=10.0, initial=10.0
            )
        budgets.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(slots), statistics.median(budgets)


async def costs(url: str, n: int) -> None:
    redis_store = RedisStore(url=url, prefix="bench")
    limiter = {"rate": 1e9, "burst": 1_000_000}
    rows = []
    async with client([]) as bare:
        rows.append(("pipeline, no RateLimiter", await per_call(bare, n)))
    async with client([RateLimiter(**limiter)]) as memory:
        rows.append(("pipeline + RateLimiter (memory)", await per_call(memory, n)))
    async with client([RateLimiter(**limiter, store=redis_store)]) as shared:
        rows.append(("pipeline + RateLimiter (Redis)", await per_call(shared, n)))
    slot, budget = await store_ops(MemoryStore(), n)
    rows += [("MemoryStore.take_slot", slot), ("MemoryStore.update_budget", budget)]
    slot, budget = await store_ops(redis_store, n)
    rows += [("RedisStore.take_slot", slot), ("RedisStore.update_budget", budget)]
    assert redis_store.fallback_calls == 0
    await redis_store.aclose()
    for name, micros in rows:
        print(f"{name:36s} {micros:8.1f} µs/call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    args = parser.parse_args()
    binary = helper.find_server()
    if binary is None:
        raise SystemExit(helper.INSTALL_HINT)
    server = helper.RedisServer(binary)
    server.start()
    try:
        asyncio.run(costs(server.url, 500 if args.quick else 3000))
        rate, seconds = 500.0, 2.0
        counts, window = helper.run_workers(server.url, "fleet", 4, seconds, rate)
        expected = rate * window + helper.BURST
        total = sum(counts)
        print(
            f"4 processes, one limit of {rate:g}/s (burst {helper.BURST}) for {window:.2f} s: "
            f"{total} slots given (per process {counts}), limit {expected:.0f}, "
            f"{(total - expected) / expected:+.1%}"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
