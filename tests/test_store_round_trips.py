"""One Redis round trip per call, and calls held while another process probes.

Against a real ``redis-server`` the tests start (asyncio only: redis-py's
asyncio client). Round trips are counted by the server (``INFO commandstats``:
the ``EVALSHA`` and other requests clients sent), never by the code under test.
Pipelines run on VirtualClocks; the fleet's break is ended by hand, as in
``test_store_breaker.py`` (the stored ``until`` set in the past).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from resilience import (
    CallHeld,
    CallReleased,
    CircuitBreaker,
    CircuitStateChanged,
    Hold,
    Pipeline,
    RateLimiter,
    RedisStore,
    ResilientTransport,
    Retry,
    RetryBudget,
)
from resilience.errors import CircuitOpenError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

URL = "https://vendor.test/v1/x"
HOST = "https://vendor.test:443"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client needs asyncio (trio's refusal is tested elsewhere)."""
    return "asyncio"


class Vendor:
    """Answers ``status``, counting requests; ``gate`` holds them."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.sent = 0
        self.gate: anyio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.gate is not None:
            await self.gate.wait()
        return httpx.Response(self.status)


def client(layers: list[Any], vendor: Vendor, clock: VirtualClock, events: list[Any]) -> Any:
    """A client over ``layers`` whose events land in ``events``."""
    pipeline = Pipeline(
        layers, clock=clock, telemetry=False, raise_on_failure=False, hooks=[events.append]
    )
    return httpx.AsyncClient(
        transport=ResilientTransport(pipeline, inner=httpx.MockTransport(vendor))
    )


def shared_layers(store: RedisStore) -> list[Any]:
    """What ``standard_pipeline(vendor, store=...)`` shares: a rate limit, the
    retry budget and the breaker, all on ``store``."""
    return [
        RateLimiter(rate=1000, burst=1000, store=store),
        Retry(max_attempts=3, budget=RetryBudget(store=store)),
        CircuitBreaker(store=store, consecutive_failures=3, minimum_calls=1000),
    ]


def requests(stats: dict[str, int]) -> int:
    """Round trips: every request a client sent."""
    return sum(stats.values())


async def until(condition: Any) -> None:
    """Let the event loop run (Redis answers included) until ``condition()``; no
    real sleep, and a bound so a broken test fails rather than hangs."""
    for _ in range(200_000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never held")


def changes(events: list[Any]) -> list[str]:
    """The circuit's state changes, in order."""
    return [f"{e.old}->{e.new}" for e in events if isinstance(e, CircuitStateChanged)]


async def test_a_healthy_call_costs_one_round_trip(redis_server: Any) -> None:
    """Through a rate limit, a retry budget and a breaker on one RedisStore, 40
    healthy calls make at most 40 round trips (the breaker's outcome and the
    budget's count ride along with the next call's slot); once flushed, Redis has
    counted every call in the breaker's window and the budget's."""
    store = RedisStore(url=redis_server.url, prefix="app")
    events: list[Any] = []
    try:
        async with client(shared_layers(store), Vendor(200), VirtualClock(), events) as c:
            for _ in range(5):  # the script loaded, the connection made
                await c.get(URL)
            redis_server.command(b"CONFIG", b"RESETSTAT")
            for _ in range(40):
                assert (await c.get(URL)).status_code == 200
            trips = requests(redis_server.commandstats())
            await store.flush()
    finally:
        await store.aclose()
    assert trips <= 40
    assert store.fallback_calls == 0


async def test_every_outcome_and_call_reaches_redis(redis_server: Any) -> None:
    """Outcomes and calls that waited for a round trip are not lost: after 30
    calls, one per budget slot of 50 ms, and a flush, the breaker's window in
    Redis counts 30 calls and the budget's window 30."""
    store = RedisStore(url=redis_server.url, prefix="app")
    clock = VirtualClock()
    try:
        async with client(shared_layers(store), Vendor(200), clock, []) as c:
            for _ in range(30):
                await c.get(URL)
                clock.advance(0.05)
            await store.flush()
        import redis.asyncio

        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            breaker = await raw.hgetall(f"app:cb:{HOST}")
            (budget_key,) = await raw.keys("app:rb:*")
            budget = await raw.hgetall(budget_key)
        finally:
            await raw.aclose()
    finally:
        await store.aclose()
    assert sum(int(v) for k, v in breaker.items() if k.startswith(b"n")) == 30
    assert sum(int(v) for k, v in budget.items() if k.startswith(b"c")) == 30


async def test_a_process_learns_the_fleet_opened_from_its_slot(redis_server: Any) -> None:
    """B calls through a rate limit and the shared breaker. After A opens the
    fleet's circuit, B's next call takes its slot, which carries B's last outcome
    to Redis and brings back "open": B fails fast without sending, in that one
    round trip (the slot's: the rate limit sits outside the breaker, so each
    later call still takes its slot, one round trip)."""
    a_store = RedisStore(url=redis_server.url, prefix="app")
    b_store = RedisStore(url=redis_server.url, prefix="app")
    a_vendor, b_vendor = Vendor(503), Vendor(200)
    a_events: list[Any] = []
    b_events: list[Any] = []
    breaker = {"consecutive_failures": 3, "minimum_calls": 1000, "break_duration": 30.0}
    try:
        async with (
            client(
                [CircuitBreaker(store=a_store, **breaker)], a_vendor, VirtualClock(), a_events
            ) as a,
            client(
                [
                    RateLimiter(rate=1000, burst=1000, store=b_store),
                    CircuitBreaker(store=b_store, **breaker),
                ],
                b_vendor,
                VirtualClock(),
                b_events,
            ) as b,
        ):
            for _ in range(3):
                await b.get(URL)
            for _ in range(3):
                await a.get(URL)
            assert changes(a_events) == ["closed->open"]
            redis_server.command(b"CONFIG", b"RESETSTAT")
            for _ in range(3):
                with pytest.raises(CircuitOpenError) as info:
                    await b.get(URL)
                assert 29.0 < info.value.retry_after <= 30.0
            assert b_vendor.sent == 3
            assert changes(b_events) == ["closed->open"]
            assert requests(redis_server.commandstats()) == 3
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_calls_meeting_a_fleet_probe_are_held_and_released(redis_server: Any) -> None:
    """While A probes the fleet's circuit, B's call (Retry with Hold) is held, not
    failed: B looks at the fleet every ``probe_poll`` seconds without spending an
    attempt, and when A's probe has closed the circuit, B's next look closes B's
    circuit and releases the call, which is then sent and succeeds."""
    a_store = RedisStore(url=redis_server.url, prefix="app")
    b_store = RedisStore(url=redis_server.url, prefix="app", probe_poll=0.25)
    a_vendor, b_vendor = Vendor(503), Vendor(200)
    a_clock, b_clock = VirtualClock(), VirtualClock()
    a_events: list[Any] = []
    b_events: list[Any] = []
    breaker = {"consecutive_failures": 3, "minimum_calls": 1000, "break_duration": 30.0}
    b_layers = [Retry(max_attempts=2, hold=Hold()), CircuitBreaker(store=b_store, **breaker)]
    answers: list[int] = []
    try:
        async with (
            client([CircuitBreaker(store=a_store, **breaker)], a_vendor, a_clock, a_events) as a,
            client(b_layers, b_vendor, b_clock, b_events) as b,
        ):
            for _ in range(3):
                await a.get(URL)
            await b.get(URL)  # sent; its answer says the fleet is open
            assert changes(b_events) == ["closed->open"]
            redis_server.command(b"HSET", b"app:cb:" + HOST.encode(), b"until", b"1")
            a_clock.advance(31.0)
            b_clock.advance(31.0)
            a_vendor.status, a_vendor.gate = 200, anyio.Event()

            async def b_call() -> None:
                answers.append((await b.get(URL)).status_code)

            async with anyio.create_task_group() as tg:
                tg.start_soon(a.get, URL)
                await until(lambda: a_vendor.sent == 4)  # A's probe is out
                tg.start_soon(b_call)
                await until(lambda: any(isinstance(e, CallHeld) for e in b_events))
                looks = b_store.redis_calls
                for _ in range(3):  # A still probes: B's looks find it busy
                    b_clock.advance(0.25)
                    await until(lambda seen=looks: b_store.redis_calls > seen)
                    looks = b_store.redis_calls
                assert not answers
                assert b_vendor.sent == 1
                a_vendor.gate.set()
                await until(lambda: changes(a_events)[-1:] == ["half_open->closed"])
                b_clock.advance(0.25)
                await until(lambda: bool(answers))
    finally:
        await a_store.aclose()
        await b_store.aclose()
    assert answers == [200]
    assert b_vendor.sent == 2
    assert changes(b_events) == ["closed->open", "open->closed"]
    (released,) = [e for e in b_events if isinstance(e, CallReleased)]
    assert released.outcome == "recovered"


async def test_without_hold_a_busy_probe_is_refused_locally_until_the_next_look(
    redis_server: Any,
) -> None:
    """While A probes, B's calls fail fast with ``retry_after`` = its next look
    (``probe_poll``, not 0), and only the first asks Redis: the others are refused
    by B's own circuit until then."""
    a_store = RedisStore(url=redis_server.url, prefix="app")
    b_store = RedisStore(url=redis_server.url, prefix="app", probe_poll=2.0)
    a_vendor, b_vendor = Vendor(503), Vendor(200)
    a_clock, b_clock = VirtualClock(), VirtualClock()
    breaker = {"consecutive_failures": 3, "minimum_calls": 1000, "break_duration": 30.0}
    try:
        async with (
            client([CircuitBreaker(store=a_store, **breaker)], a_vendor, a_clock, []) as a,
            client([CircuitBreaker(store=b_store, **breaker)], b_vendor, b_clock, []) as b,
        ):
            for _ in range(3):
                await a.get(URL)
            await b.get(URL)
            redis_server.command(b"HSET", b"app:cb:" + HOST.encode(), b"until", b"1")
            a_clock.advance(31.0)
            b_clock.advance(31.0)
            a_vendor.status, a_vendor.gate = 200, anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.get, URL)
                await until(lambda: a_vendor.sent == 4)
                asked = b_store.redis_calls
                waits = []
                for _ in range(3):
                    with pytest.raises(CircuitOpenError) as info:
                        await b.get(URL)
                    waits.append(info.value.retry_after)
                    b_clock.advance(0.5)
                assert waits == [2.0, 1.5, 1.0]
                assert b_store.redis_calls == asked + 1
                a_vendor.gate.set()
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_an_outcome_older_than_the_window_only_ends_the_run(redis_server: Any) -> None:
    """A success that waited (in a quiet process) longer than the breaker's window
    before its round trip is not counted in the window, which holds only the
    last ``window`` seconds, but it still ends the run of failures."""
    clock = VirtualClock()
    store = RedisStore(url=redis_server.url, prefix="app", clock=clock, flush_delay=60.0)
    options = {
        "width": 1.0,
        "minimum_calls": 100,
        "failure_ratio": 0.5,
        "consecutive": 5,
        "break_for": 30.0,
        "ttl": 60.0,
    }
    try:
        for _ in range(2):
            assert await store.breaker_record("k", failed=True, **options) == 0.0
        assert await store.breaker_record("k", failed=False, **options) == 0.0  # waits
        clock.advance(11.0)  # past the 10 buckets of 1 s
        await store.flush()
        import redis.asyncio

        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            stored = await raw.hgetall("app:cb:k")
        finally:
            await raw.aclose()
    finally:
        await store.aclose()
    assert stored[b"run"] == b"0"
    assert sum(int(v) for k, v in stored.items() if k.startswith(b"n")) == 2


class YieldingVendor(Vendor):
    """Answers 200 after one checkpoint, so that concurrent calls interleave."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await anyio.lowlevel.checkpoint()
        return await super().__call__(request)


async def test_outcomes_queued_during_a_round_trip_go_in_the_next(redis_server: Any) -> None:
    """Concurrent calls on one store: outcomes queued while another call's round
    trip is out are neither read as that batch's answers (a crash, or a fallback
    to local state) nor lost: every call succeeds, nothing falls back, and Redis
    counts every call in the breaker's window."""
    store = RedisStore(url=redis_server.url, prefix="app")
    clock = VirtualClock()
    vendor = YieldingVendor(200)
    statuses: list[int] = []
    try:
        async with client(shared_layers(store), vendor, clock, []) as c:

            async def one() -> None:
                statuses.append((await c.get(URL)).status_code)

            for _ in range(4):
                async with anyio.create_task_group() as group:
                    for _ in range(10):
                        group.start_soon(one)
                clock.advance(0.05)
            await store.flush()
        import redis.asyncio

        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            breaker = await raw.hgetall(f"app:cb:{HOST}")
        finally:
            await raw.aclose()
    finally:
        await store.aclose()
    assert statuses == [200] * 40
    assert store.fallback_calls == 0
    assert sum(int(v) for k, v in breaker.items() if k.startswith(b"n")) == 40
