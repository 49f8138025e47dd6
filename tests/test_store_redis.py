"""RedisStore against a real ``redis-server`` the tests start, kill and pause.

Each test gets its own server on a free loopback port, with no persistence.
redis-py's asyncio client runs only under asyncio, so these tests run on asyncio
alone (``test_ratelimit.py`` checks that the store refuses trio, clearly). The
slots use the Redis server's clock, so what is timed here is real time: the fleet
test runs 4 processes for 2 seconds, and the outage tests use a VirtualClock only
for the store's ``retry_interval``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from resilience import Pipeline, RateLimiter, RedisStore, ResilientTransport
from resilience.errors import RateLimitExceeded
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client needs asyncio (trio's refusal is tested elsewhere)."""
    return "asyncio"


@pytest.fixture
async def store(redis_server: Any) -> AsyncIterator[RedisStore]:
    """A store on the test's server, closed afterwards."""
    store = RedisStore(url=redis_server.url, prefix="app", timeout=0.2)
    yield store
    await store.aclose()


async def test_slots_are_shared_between_stores(redis_server: Any) -> None:
    """Two stores (two processes, as far as Redis knows) spend one limit."""
    a = RedisStore(url=redis_server.url, prefix="app")
    b = RedisStore(url=redis_server.url, prefix="app")
    try:
        assert await a.take_slot("k", 0.0, 10.0, 2, 0.0) == (True, 0.0)
        assert await b.take_slot("k", 0.0, 10.0, 2, 0.0) == (True, 0.0)
        admitted, retry_after = await a.take_slot("k", 0.0, 10.0, 2, 0.0)
        assert not admitted
        assert 9.0 < retry_after <= 10.0
        # A wait within max_wait is a reservation: admitted, to be slept off.
        admitted, wait = await b.take_slot("k", 0.0, 10.0, 2, 60.0)
        assert admitted
        assert 9.0 < wait <= 10.0
    finally:
        await a.aclose()
        await b.aclose()
    assert a.redis_calls == 2
    assert a.fallback_calls == 0


async def test_the_layer_uses_the_shared_store(redis_server: Any) -> None:
    """Two pipelines on one RedisStore share their RateLimiter's slots."""
    store = RedisStore(url=redis_server.url, prefix="app")
    limiter = RateLimiter(rate=1, per=60.0, max_wait=0, client_id="cid", store=store)
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        return httpx.Response(200)

    clients = [
        httpx.AsyncClient(
            transport=ResilientTransport(
                Pipeline([limiter], telemetry=False), inner=httpx.MockTransport(handler)
            )
        )
        for _ in range(2)
    ]
    try:
        await clients[0].get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as caught:
            await clients[1].get("https://b.test/x")
        assert 59.0 < caught.value.retry_after <= 60.0
        assert caught.value.key == "http:cid"
    finally:
        for client in clients:
            await client.aclose()
        await store.aclose()
    assert sent == ["a.test"]


async def test_budgets_are_shared_and_atomic(redis_server: Any) -> None:
    """A budget window's retries are taken once, whichever store takes them."""
    a = RedisStore(url=redis_server.url, prefix="app")
    b = RedisStore(url=redis_server.url, prefix="app")
    args: dict[str, Any] = {"ratio": 0.5, "floor": 1.0}
    try:
        assert await a.update_budget("b", 0.0, calls=0, take=True, **args)
        assert not await b.update_budget("b", 0.0, calls=0, take=True, **args)
        # Six calls counted by one store earn the other three retries in all.
        assert not await b.update_budget("b", 0.0, calls=6, take=False, **args)
        assert [await a.update_budget("b", 0.0, calls=0, take=True, **args) for _ in range(3)] == [
            True,
            True,
            False,
        ]
    finally:
        await a.aclose()
        await b.aclose()


async def test_keys_carry_a_ttl_and_the_prefix(store: RedisStore, redis_server: Any) -> None:
    """A slot's key lives until its limit is whole again, plus a second; a budget
    window's for 2 s (its state is one second deep)."""
    await store.take_slot("k", 0.0, 0.5, 1, 0.0)
    await store.update_budget("b", 0.0, calls=1, take=False, ratio=0.2, floor=1.0)
    slot_ttl = int(redis_server.command(b"PTTL", b"app:rl:k")[1:])
    budget_ttl = int(redis_server.command(b"PTTL", b"app:rb:b")[1:])
    assert 1000 < slot_ttl <= 1500
    assert 1000 < budget_ttl <= 2000
    assert redis_server.command(b"DBSIZE") == b":2"


async def test_two_prefixes_do_not_see_each_other(redis_server: Any) -> None:
    """Two applications on one server, with different prefixes, have separate limits."""
    one = RedisStore(url=redis_server.url, prefix="billing")
    two = RedisStore(url=redis_server.url, prefix="search")
    try:
        assert (await one.take_slot("k", 0.0, 60.0, 1, 0.0))[0]
        assert not (await one.take_slot("k", 0.0, 60.0, 1, 0.0))[0]
        assert (await two.take_slot("k", 0.0, 60.0, 1, 0.0))[0]
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_killed_mid_run_keeps_serving_then_resynchronises(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed, Redis is replaced by local state (logged once); back, it gets the local spend."""
    clock = VirtualClock()
    store = RedisStore(
        url=redis_server.url, prefix="app", timeout=0.2, retry_interval=5.0, clock=clock
    )
    caplog.set_level(logging.WARNING, logger="resilience")
    try:
        assert (await store.take_slot("warm", 0.0, 1.0, 1, 0.0))[0]
        redis_server.kill()
        # Every call is answered, from local state, by the one process's own limit.
        assert await store.take_slot("k", 100.0, 60.0, 1, 0.0) == (True, 0.0)
        assert await store.take_slot("k", 100.0, 60.0, 1, 0.0) == (False, 60.0)
        assert await store.update_budget("b", 100.0, calls=1, take=True, ratio=0.0, floor=1.0)
        assert not store.available
        assert store.outages == 1
        assert store.fallback_calls == 3
        redis_server.start()
        clock.advance(5.0)
        # Back: the reservation made locally is carried into Redis, so the fresh
        # server does not hand the spent slot out again.
        admitted, retry_after = await store.take_slot("k", 105.0, 60.0, 1, 0.0)
        assert not admitted
        assert 50.0 < retry_after <= 55.0
        assert store.available
        assert int(redis_server.command(b"PTTL", b"app:rl:k")[1:]) > 50_000
    finally:
        await store.aclose()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "ConnectionError" in failures[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_redis_paused_times_out_instead_of_hanging(redis_server: Any) -> None:
    """A stopped server (SIGSTOP) costs one timeout, then local answers at once."""
    clock = VirtualClock()
    store = RedisStore(
        url=redis_server.url, prefix="app", timeout=0.1, retry_interval=1.0, clock=clock
    )
    try:
        assert (await store.take_slot("k", 0.0, 0.001, 100, 0.0))[0]
        redis_server.pause()
        started = time.monotonic()
        assert (await store.take_slot("k", 0.0, 0.001, 100, 0.0))[0]
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(50):
            await store.take_slot("k", 0.0, 0.001, 100, 0.0)
        rest = time.monotonic() - started
        assert first < 0.5
        assert rest < 0.1
        assert store.outages == 1
        redis_server.resume()
        clock.advance(1.0)
        assert (await store.take_slot("k", 0.0, 0.001, 100, 0.0))[0]
        assert store.available
    finally:
        redis_server.resume()
        await store.aclose()


def test_four_processes_share_one_rate_within_five_percent(
    redis_helper: Any, redis_server: Any
) -> None:
    """4 worker processes sharing one limit of 500/s send 500/s between them (±5%).

    The window is measured, first slot given to last, over all four: a worker
    whose interpreter started late widens it rather than skewing the rate.
    """
    rate, seconds = 500.0, 2.0
    counts, window = redis_helper.run_workers(redis_server.url, "fleet", 4, seconds, rate)
    assert window > seconds * 0.9
    total = sum(counts)
    expected = rate * window + redis_helper.BURST
    assert abs(total - expected) <= 0.05 * expected, (counts, total, expected)
    assert all(count > 0 for count in counts), counts
