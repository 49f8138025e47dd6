"""A retry budget shared through a state store: ``RetryBudget(store=...)``.

The rule is the in-memory budget's (retries in any second at most
``max(min_per_second, ratio * calls)``), counted over every pipeline that shares
the store's key. The first tests share a :class:`MemoryStore` between pipelines of
one process, on a VirtualClock, under asyncio and trio; the Redis tests run real
worker processes against a real ``redis-server`` (asyncio only: redis-py's
asyncio client) and time with the server's clock.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from resilience import (
    ExponentialBackoff,
    MemoryStore,
    Pipeline,
    RedisStore,
    ResilientTransport,
    Retry,
    RetryBudget,
    report_of,
)
from resilience.errors import ConfigurationError
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://vendor.test/v1/x"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


class CountingStore(MemoryStore):
    """A MemoryStore that counts the budget updates it is asked for."""

    updates: int = 0

    async def update_budget(
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        self.updates += 1
        return await super().update_budget(
            key, now, calls=calls, take=take, ratio=ratio, floor=floor
        )


def client_for(
    budget: RetryBudget, inner: httpx.AsyncBaseTransport, clock: VirtualClock
) -> httpx.AsyncClient:
    """A client whose pipeline retries (up to 4 attempts, no wait) on ``budget``."""
    pipeline = Pipeline(
        [Retry(max_attempts=4, backoff=ZERO, budget=budget)],
        clock=clock,
        telemetry=False,
        raise_on_failure=False,
    )
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner))


async def test_two_pipelines_spend_one_floor_between_them() -> None:
    """Two pipelines on one store with floor 3: three retries in the second between
    them (each alone would get three); the budget's refusal is ``gave_up="budget"``."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=3, store=MemoryStore())
    one, two = ScriptedTransport.of(reply(503)), ScriptedTransport.of(reply(503))
    async with client_for(budget, one, clock) as a, client_for(budget, two, clock) as b:
        first = await a.get(URL)
        second = await b.get(URL)
    retries = len(one.requests) - 1 + len(two.requests) - 1
    assert retries == 3
    assert report_of(first).gave_up == "max_attempts"
    assert report_of(second).gave_up == "budget"


async def test_a_healthy_pipelines_calls_raise_the_fleets_allowance() -> None:
    """Ratio 0.5, no floor: a failing pipeline alone gets no retry; once another
    pipeline's healthy calls reach the store (within a 50 ms slot), its retries
    follow the fleet's calls: 15 in the second (a's 11, b's 4) allow 7."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.5, min_per_second=0, store=MemoryStore())
    healthy = ScriptedTransport.of(reply(200))
    failing = ScriptedTransport.of(reply(503))
    async with client_for(budget, healthy, clock) as a, client_for(budget, failing, clock) as b:
        await b.get(URL)
        assert len(failing.requests) == 1
        for _ in range(10):
            await a.get(URL)
        clock.advance(0.05)
        await a.get(URL)  # the first call of a slot carries the slot before
        for _ in range(3):
            await b.get(URL)
    assert len(failing.requests) - 4 == 7


async def test_healthy_calls_reach_the_store_once_a_slot() -> None:
    """100 healthy calls within one 50 ms slot cost one store update, not 100."""
    clock = VirtualClock()
    store = CountingStore()
    budget = RetryBudget(store=store)
    async with client_for(budget, ScriptedTransport.of(reply(200)), clock) as client:
        for _ in range(100):
            await client.get(URL)
        assert store.updates == 1
        clock.advance(0.05)
        await client.get(URL)
    assert store.updates == 2


async def test_the_reserve_is_spent_after_the_shared_allowance() -> None:
    """``initial=2`` with no allowance: two retries from this pipeline's reserve, once."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0, initial=2, store=MemoryStore())
    inner = ScriptedTransport.of(reply(503))
    async with client_for(budget, inner, clock) as client:
        response = await client.get(URL)
        assert len(inner.requests) == 3
        assert report_of(response).gave_up == "budget"
        await client.get(URL)
    assert len(inner.requests) == 4


def test_the_store_must_be_a_state_store() -> None:
    """A store without ``update_budget`` fails at construction, naming ``store``."""
    with pytest.raises(ConfigurationError, match="RetryBudget: store must be a StateStore"):
        RetryBudget(store=object())


# -- a real Redis ----------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_budget_is_one_window_for_two_stores(redis_server: Any) -> None:
    """Two RedisStores (two processes' worth) on one key spend one floor of 2; a
    different prefix has its own."""
    budget = {"ratio": 0.0, "floor": 2.0}
    a = RedisStore(url=redis_server.url, prefix="app")
    b = RedisStore(url=redis_server.url, prefix="app")
    other = RedisStore(url=redis_server.url, prefix="other")
    try:
        taken = [
            await store.update_budget("k", 0.0, calls=1, take=True, **budget)
            for store in (a, b, a, b)
        ]
        assert taken == [True, True, False, False]
        assert await other.update_budget("k", 0.0, calls=0, take=True, **budget)
        ttl = int(redis_server.command(b"PTTL", b"app:rb:k")[1:])
        assert 1000 < ttl <= 2000
    finally:
        for store in (a, b, other):
            await store.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_killed_the_budget_keeps_serving_on_local_state(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed mid-run: calls go on, retried on this process's own window (the
    same floor), logged once; back, the budget is shared again."""
    clock = VirtualClock()
    store = RedisStore(
        url=redis_server.url, prefix="app", timeout=0.2, retry_interval=5.0, clock=clock
    )
    caplog.set_level(logging.WARNING, logger="resilience")
    budget = RetryBudget(ratio=0.0, min_per_second=2, store=store)
    inner = ScriptedTransport.of(reply(503))
    try:
        async with client_for(budget, inner, clock) as client:
            await client.get(URL)
            assert len(inner.requests) == 3  # the floor of 2, from Redis
            redis_server.kill()
            clock.advance(2.0)
            response = await client.get(URL)
            assert len(inner.requests) == 6  # the floor of 2 again, locally
            assert report_of(response).gave_up == "budget"
            assert store.fallback_calls > 0
            assert not store.available
            redis_server.start()
            clock.advance(5.0)
            await client.get(URL)
            assert store.available
    finally:
        await store.aclose()
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_four_processes_share_one_budget(redis_helper: Any, redis_server: Any) -> None:
    """4 worker processes, each making 30 failing calls with 3 retries each allowed,
    share a floor of 5 retries a second: their retries together stay within the
    floor for every second they ran (each alone would have had the floor)."""
    results = redis_helper.run_budget_workers(redis_server.url, "fleet", 4, 30)
    total = sum(retries for retries, _ in results)
    seconds = max(span for _, span in results)
    # Any span of S seconds lies within floor(S) + 2 windows of a second.
    allowance = redis_helper.BUDGET_FLOOR * (int(seconds) + 2)
    assert redis_helper.BUDGET_FLOOR <= total <= allowance, (results, allowance)
    if seconds < 1.0:
        # Unshared, 4 processes would have sent 4 floors in that second.
        assert total < 4 * redis_helper.BUDGET_FLOOR
