"""The state stores: cost per call in memory and on Redis (loopback), and the
accuracy of one rate limit shared by 4 processes.

    python benchmarks/store.py [--quick]

Starts its own ``redis-server`` (as the tests do: a free loopback port, no
persistence). Figures:

* round trips per healthy call through a rate limit, a budget and a breaker on
  one store (the server's count), and the cost per call against memory, with
  outcomes sent on their own (``flush_delay=0``: two round trips) and riding
  along with the next call's slot (the default: one);
* a call through ``Pipeline([RateLimiter])`` on ``httpx.MockTransport``, against
  the same pipeline without the layer: the layer's cost with each store;
* a healthy call through ``Retry`` with its budget in memory and on Redis (the
  calls reach Redis once per 50 ms slot), and through ``CircuitBreaker`` in
  memory and with ``store=`` (outcomes wait to ride along with another round
  trip: with nothing else to ride on, one goes per ``flush_delay``);
* one ``take_slot``, one ``update_budget`` (a retry taken: what each retry
  costs) and one ``breaker_record`` (a success: it waits to ride along),
  awaited one after the other: the store's own cost (on Redis: one round trip,
  one Lua script, for the first two);
* 4 processes taking slots of one 500/s limit for 2 s: slots given against
  ``rate * window + burst``;
* a call through ``AuthRefresh`` with its token cached, with and without a store
  (the store is asked only when the token is due);
* 8 processes sharing one token (``AuthRefresh(store=RedisStore(...))``) against
  a loopback token endpoint, for 4.5 s, a token of 2 s refreshed at 1 s: token
  requests made, against the 5 times a token is due (8 each time without a store).
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

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    MemoryStore,
    OAuth2ClientCredentials,
    Pipeline,
    RateLimiter,
    RedisStore,
    ResilientTransport,
    Retry,
    RetryBudget,
)

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


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/token":
        return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
    return httpx.Response(200)


def client(layers: list[Any]) -> httpx.AsyncClient:
    pipeline = Pipeline(layers, telemetry=False)
    inner = httpx.MockTransport(_answer)
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
            await store.update_budget("bench", 0.0, calls=1, take=True, ratio=0.2, floor=1e9)
        budgets.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(slots), statistics.median(budgets)


async def round_trips(server: Any, n: int) -> None:
    """Round trips per healthy call through RateLimiter + Retry(budget) +
    CircuitBreaker, all on one RedisStore (as ``standard_pipeline(vendor,
    store=...)`` builds them), counted by the server (INFO commandstats), and the
    cost per call against the same pipeline in memory. ``flush_delay=0`` sends
    every breaker outcome and budget count on its own, as before they rode along
    with the next call's slot; the runs are interleaved, best of 3 each."""
    limiter = {"rate": 1e9, "burst": 1_000_000}

    def layers(shared: Any) -> list[Any]:
        return [
            RateLimiter(**limiter, store=shared),
            Retry(max_attempts=3, budget=RetryBudget(store=shared)),
            CircuitBreaker(store=shared),
        ]

    stores = {
        "each outcome on its own (flush_delay=0)": RedisStore(
            url=server.url, prefix="trips0", flush_delay=0.0
        ),
        "outcomes ride along (default)": RedisStore(url=server.url, prefix="trips"),
    }
    best: dict[str, float] = {}
    trips: dict[str, float] = {}
    async with client(layers(None)) as memory:
        clients = {name: client(layers(store)) for name, store in stores.items()}
        for shared in clients.values():
            await per_call(shared, 50)  # scripts loaded, connections made
        for _ in range(3):
            best["in memory"] = min(best.get("in memory", 1e9), await per_call(memory, n))
            for name, shared in clients.items():
                server.command(b"CONFIG", b"RESETSTAT")
                started = time.perf_counter()
                for _ in range(n):
                    await shared.get("https://api.test/x")
                micros = (time.perf_counter() - started) / n * 1e6
                best[name] = min(best.get(name, 1e9), micros)
                trips[name] = sum(server.commandstats().values()) / n
        for shared in clients.values():
            await shared.aclose()
    for store in stores.values():
        assert store.fallback_calls == 0
        await store.aclose()
    print("RateLimiter + Retry(budget) + CircuitBreaker, one store, healthy calls:")
    for name, micros in best.items():
        extra = f"{trips[name]:5.2f} round trips/call" if name in trips else ""
        print(f"  {name:42s} {micros:8.1f} µs/call {extra}")


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
    budget = {"max_attempts": 3, "budget": RetryBudget()}
    async with client([Retry(**budget)]) as retry:
        rows.append(("pipeline + Retry, budget in memory", await per_call(retry, n)))
    shared_budget = RetryBudget(store=redis_store)
    async with client([Retry(max_attempts=3, budget=shared_budget)]) as retry:
        rows.append(("pipeline + Retry, budget on Redis", await per_call(retry, n)))
    async with client([CircuitBreaker()]) as breaker:
        rows.append(("pipeline + CircuitBreaker (memory)", await per_call(breaker, n)))
    async with client([CircuitBreaker(store=redis_store)]) as breaker:
        rows.append(("pipeline + CircuitBreaker(store=Redis)", await per_call(breaker, n)))
    provider = OAuth2ClientCredentials("https://api.test/token", "id", "secret")
    async with client([AuthRefresh(provider)]) as auth:
        rows.append(("pipeline + AuthRefresh (cached token)", await per_call(auth, n)))
    async with client([AuthRefresh(provider, store=redis_store)]) as auth:
        rows.append(("pipeline + AuthRefresh(store=Redis), cached", await per_call(auth, n)))
    slot, budget = await store_ops(MemoryStore(), n)
    rows += [("MemoryStore.take_slot", slot), ("MemoryStore.update_budget", budget)]
    slot, budget = await store_ops(redis_store, n)
    rows += [("RedisStore.take_slot", slot), ("RedisStore.update_budget", budget)]
    started = time.perf_counter()
    for _ in range(n):
        await redis_store.breaker_record(
            "bench",
            failed=False,
            width=3.0,
            minimum_calls=20,
            failure_ratio=0.5,
            consecutive=0,
            break_for=30.0,
            ttl=400.0,
        )
    rows.append(("RedisStore.breaker_record", (time.perf_counter() - started) / n * 1e6))
    assert redis_store.fallback_calls == 0
    await redis_store.aclose()
    for name, micros in rows:
        print(f"{name:44s} {micros:8.1f} µs/call")


def token_fleet(url: str) -> None:
    """8 processes share one token for 4 s; print the token requests made."""
    import anyio

    from resilience.testing import serve

    # 4.5 s: the token is due at 0, 1, 2, 3 and 4 s, none at the very end.
    workers, seconds, life, skew = 8, 4.5, 2.0, 1.0
    app = helper.TokenApp(expires_in=life)

    async def run() -> list[tuple[int, int, int]]:
        async with serve(app) as base:
            return await anyio.to_thread.run_sync(
                lambda: helper.run_token_workers(url, "tokens", base, workers, seconds, skew=skew)
            )

    results = anyio.run(run)
    periods = int(seconds // (life - skew)) + 1
    calls = sum(ok + failed for ok, failed, _ in results)
    print(
        f"{workers} processes sharing one token for {seconds:g} s (life {life:g} s, refreshed "
        f"after {life - skew:g} s: due {periods} times): {app.issued} token requests "
        f"(per process {[fetched for _, _, fetched in results]}), {calls} API calls, "
        f"{sum(failed for _, failed, _ in results)} failed; "
        f"without a store each process fetches its own: {workers * periods}"
    )


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
        asyncio.run(round_trips(server, 500 if args.quick else 3000))
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
        token_fleet(server.url)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
