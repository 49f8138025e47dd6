"""The RateLimiter layer and the in-memory state store.

Time is a VirtualClock: a call that waits for its slot sleeps on it, so the test
reads the waits from ``clock.sleeps`` and nothing sleeps for real. The GCRA bound
(over any window of ``T`` seconds at most ``burst + rate * T`` calls get through)
is checked with hypothesis on the decision function and through the layer.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    CircuitBreaker,
    MemoryStore,
    Pipeline,
    RateLimited,
    RateLimiter,
    RedisStore,
    ResilientTransport,
    Retry,
    Timeout,
)
from resilience._store import gcra
from resilience.errors import ConfigurationError, RateLimitExceeded
from resilience.testing import VirtualClock


class Counting:
    """A transport that answers 200 and records what was sent, and when."""

    def __init__(self, clock: VirtualClock, status: int = 200) -> None:
        self.clock = clock
        self.status = status
        self.sent: list[tuple[str, str, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.host, self.clock.now()))
        return httpx.Response(self.status)


def client_for(
    *layers: Any, clock: VirtualClock, events: list[Any] | None = None, status: int = 200
) -> tuple[httpx.AsyncClient, Counting]:
    server = Counting(clock, status)
    hooks = [events.append] if events is not None else []
    pipeline = Pipeline(list(layers), clock=clock, hooks=hooks, telemetry=False)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(server))
    return httpx.AsyncClient(transport=transport), server


@pytest.mark.anyio
async def test_a_burst_goes_at_once_then_calls_are_paced() -> None:
    """Three calls go at once (burst 3), the next ones wait a second each."""
    clock = VirtualClock()
    async with client_for(RateLimiter(rate=1, burst=3), clock=clock)[0] as client:
        for _ in range(5):
            (await client.get("https://a.test/x")).raise_for_status()
    assert clock.sleeps == [1.0, 1.0]
    assert clock.now() == 2.0


@pytest.mark.anyio
async def test_no_wait_allowed_fails_fast_with_retry_after() -> None:
    """With max_wait=0 the second call fails at once: nothing sent, retry_after = 1/rate."""
    clock = VirtualClock()
    events: list[Any] = []
    client, server = client_for(
        RateLimiter(rate=2, per=1.0, max_wait=0), clock=clock, events=events
    )
    async with client:
        await client.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as caught:
            await client.get("https://a.test/x")
    error = caught.value
    assert error.retry_after == pytest.approx(0.5)
    assert error.reason == "max_wait"
    assert error.key == "https://a.test:443"
    assert error.limiter == "all"
    assert error.problem is not None
    assert error.problem.code == "rate_limit"
    assert "next slot in 0.5s" in str(error)
    assert len(server.sent) == 1
    assert clock.sleeps == []
    assert events == [
        RateLimited(
            limiter="all", key="https://a.test:443", outcome="rejected", wait=0.5, reason="max_wait"
        )
    ]


@pytest.mark.anyio
async def test_a_refusal_is_not_retried_nor_a_breaker_failure() -> None:
    """Below Retry and above a breaker, a refusal is FAIL: one try, breaker untouched."""
    clock = VirtualClock()
    breaker = CircuitBreaker(consecutive_failures=1, minimum_calls=1, failure_ratio=0.5)
    client, server = client_for(
        Retry(max_attempts=5), RateLimiter(rate=1, max_wait=0), breaker, clock=clock
    )
    async with client:
        await client.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as caught:
            await client.get("https://a.test/x")
        assert caught.value.report.attempts == 0
        clock.advance(1.0)
        assert (await client.get("https://a.test/x")).status_code == 200
    assert len(server.sent) == 2


@pytest.mark.anyio
async def test_the_wait_never_passes_the_deadline() -> None:
    """A slot due after the call's deadline is refused at once, reason "deadline"."""
    clock = VirtualClock()
    client, _server = client_for(
        Timeout(total=0.5), RateLimiter(rate=1, max_wait=None), clock=clock
    )
    async with client:
        await client.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as caught:
            await client.get("https://a.test/x")
    assert caught.value.reason == "deadline"
    assert caught.value.retry_after == pytest.approx(1.0)
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_a_delayed_call_emits_its_wait() -> None:
    """A call that waits says so in a RateLimited event, then goes."""
    clock = VirtualClock()
    events: list[Any] = []
    client, server = client_for(RateLimiter(rate=4, name="q"), clock=clock, events=events)
    async with client:
        await client.get("https://a.test/x")
        await client.get("https://a.test/x")
    assert events == [
        RateLimited(limiter="q", key="https://a.test:443", outcome="delayed", wait=0.25)
    ]
    assert [t for _, _, t in server.sent] == [0.0, 0.25]


@pytest.mark.anyio
async def test_methods_keep_query_and_write_limits_apart() -> None:
    """A GET limiter and a write limiter count their own calls only."""
    clock = VirtualClock()
    queries = RateLimiter(rate=60, per=60.0, methods={"get"}, max_wait=0)
    writes = RateLimiter(rate=30, per=60.0, methods={"POST", "PUT"}, max_wait=0)
    client, server = client_for(queries, writes, clock=clock)
    async with client:
        await client.get("https://a.test/x")
        await client.post("https://a.test/x")
        await client.delete("https://a.test/x")  # neither limiter counts DELETE
        await client.delete("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as get_refused:
            await client.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as post_refused:
            await client.post("https://a.test/x")
    assert get_refused.value.limiter == "GET"
    assert get_refused.value.retry_after == pytest.approx(1.0)
    assert post_refused.value.limiter == "POST,PUT"
    assert post_refused.value.retry_after == pytest.approx(2.0)
    assert [m for m, _, _ in server.sent] == ["GET", "POST", "DELETE", "DELETE"]


@pytest.mark.anyio
async def test_match_limits_only_the_routes_it_accepts() -> None:
    """``match=`` picks routes: /control is limited, /sites is not."""
    clock = VirtualClock()
    limiter = RateLimiter(
        rate=1, max_wait=0, match=lambda r: r.url.path.startswith("/control"), name="control"
    )
    client, server = client_for(limiter, clock=clock)
    async with client:
        for _ in range(3):
            await client.get("https://a.test/sites")
        await client.get("https://a.test/control/x")
        with pytest.raises(RateLimitExceeded):
            await client.get("https://a.test/control/y")
    assert len(server.sent) == 4


@pytest.mark.anyio
async def test_keys_by_host_by_default_and_by_client_id_when_given() -> None:
    """By default each host has its own limit; with client_id, every host shares one."""
    clock = VirtualClock()
    client, server = client_for(RateLimiter(rate=1, max_wait=0), clock=clock)
    async with client:
        await client.get("https://a.test/x")
        await client.get("https://b.test/x")
    assert len(server.sent) == 2

    client, server = client_for(RateLimiter(rate=1, max_wait=0, client_id="cid-1"), clock=clock)
    async with client:
        await client.get("https://a.test/x")
        with pytest.raises(RateLimitExceeded) as caught:
            await client.get("https://b.test/x")
    assert caught.value.key == "http:cid-1"


@pytest.mark.anyio
async def test_a_key_function_returning_none_bypasses_and_one_raising_fails() -> None:
    """``key`` returning None lets the call through unlimited; raising is a ConfigurationError."""
    clock = VirtualClock()

    def key(request: httpx.Request) -> str | None:
        if request.url.path == "/boom":
            raise KeyError("secret-header-value")
        return None if request.url.path == "/free" else "k"

    client, server = client_for(RateLimiter(rate=1, max_wait=0, key=key), clock=clock)
    async with client:
        for _ in range(3):
            await client.get("https://a.test/free")
        with pytest.raises(ConfigurationError) as caught:
            await client.get("https://a.test/boom")
    assert "KeyError" in str(caught.value)
    assert "secret-header-value" not in str(caught.value)
    assert len(server.sent) == 3


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 1, "per": -1.0}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": 1.5}, "burst"),
        ({"rate": 1, "max_wait": -1}, "max_wait"),
        ({"rate": 1, "methods": "GET"}, "methods"),
        ({"rate": 1, "methods": []}, "methods"),
        ({"rate": 1, "name": ""}, "name"),
        ({"rate": 1, "key": "host"}, "key"),
        ({"rate": 1, "store": object()}, "store"),
        ({"rate": 1, "client_id": 42}, "client_id"),
    ],
)
def test_bad_configuration_names_the_argument(options: dict[str, Any], name: str) -> None:
    """Every bad argument fails at construction, naming itself."""
    with pytest.raises(ConfigurationError, match=name):
        RateLimiter(**options)


@given(
    interval=st.floats(min_value=0.01, max_value=10.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=120),
    max_wait=st.sampled_from([0.0, 0.5, 3.0, math.inf]),
    window=st.floats(min_value=0.0, max_value=60.0),
)
def test_gcra_never_admits_more_than_burst_plus_rate_over_any_window(
    interval: float, burst: int, gaps: list[float], max_wait: float, window: float
) -> None:
    """Over any window of length T, at most burst + T/interval calls are sent."""
    tat, now, sent = 0.0, 0.0, []
    for gap in gaps:
        now += gap
        admitted, wait, tat = gcra(tat, now, interval, burst, max_wait)
        if admitted:
            assert wait <= max_wait
            sent.append(now + wait)
        else:
            assert wait > max_wait
    sent.sort()
    bound = burst + window / interval + 1e-6
    j = 0
    for i, start in enumerate(sent):
        while j < len(sent) and sent[j] <= start + window + 1e-9:
            j += 1
        assert j - i <= bound


@given(
    rate=st.integers(min_value=1, max_value=50),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=60),
)
def test_a_refused_call_is_admitted_after_its_retry_after(
    rate: int, burst: int, gaps: list[float]
) -> None:
    """Whoever is refused is admitted at once after waiting its retry_after."""
    store = MemoryStore()
    now = 0.0
    for gap in gaps:
        now += gap
        admitted, wait = store.take_slot_now("k", now, 1.0 / rate, burst, 0.0)
        if not admitted:
            assert wait > 0
            assert store.take_slot_now("k", now + wait + 1e-9, 1.0 / rate, burst, 0.0) == (
                True,
                0.0,
            )


def test_idle_keys_are_dropped() -> None:
    """Many keys that went quiet do not stay: the store's size stays bounded."""
    store = MemoryStore()
    for n in range(10_000):
        store.take_slot_now(f"k{n}", float(n), 0.5, 1, 0.0)
    assert len(store) <= 2048
    assert store.take_slot_now("k9999", 9999.0, 0.5, 1, 0.0)[0] is False


def test_memory_budget_keeps_the_per_second_rule() -> None:
    """A budget window allows ``max(floor, ratio * calls)`` retries in any second."""
    store = MemoryStore(idle_after=100.0)
    args: dict[str, float] = {"ratio": 0.5, "floor": 1.0}
    assert store.update_budget_now("b", 0.0, calls=0, take=True, **args) is True
    assert store.update_budget_now("b", 0.0, calls=0, take=True, **args) is False
    # Six calls earn three retries in the same second (one already spent).
    assert store.update_budget_now("b", 0.1, calls=6, take=False, **args) is False
    assert [store.update_budget_now("b", 0.2, calls=0, take=True, **args) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    # A second later the window holds nothing: the floor again.
    assert store.update_budget_now("b", 1.2, calls=0, take=True, **args) is True
    assert store.update_budget_now("b", 1.2, calls=0, take=True, **args) is False


@pytest.mark.anyio
async def test_memory_store_answers_the_protocol_asynchronously() -> None:
    """The async protocol methods give what the synchronous ones give."""
    store = MemoryStore()
    assert await store.take_slot("k", 0.0, 1.0, 1, 0.0) == (True, 0.0)
    assert await store.take_slot("k", 0.0, 1.0, 1, 0.0) == (False, 1.0)
    assert await store.update_budget("b", 0.0, calls=1, take=True, ratio=0.0, floor=1.0)


@pytest.mark.anyio
async def test_a_shared_memory_store_needs_names_apart(anyio_backend: str) -> None:
    """Two limiters on one store with the same key but different names do not collide."""
    clock = VirtualClock()
    store = MemoryStore()
    a = RateLimiter(rate=1, max_wait=0, name="a", store=store)
    b = RateLimiter(rate=1, max_wait=0, name="b", store=store)
    client, server = client_for(a, b, clock=clock)
    async with client:
        await client.get("https://a.test/x")
    assert len(server.sent) == 1
    assert len(store) == 2


@pytest.mark.anyio
async def test_redis_store_refuses_trio_clearly(anyio_backend: str) -> None:
    """Under trio, building a RedisStore says why it cannot work; asyncio builds it."""
    if anyio_backend == "trio":
        with pytest.raises(ConfigurationError, match="only under asyncio"):
            RedisStore(url="redis://127.0.0.1:1/0", prefix="app")
    else:
        store = RedisStore(url="redis://127.0.0.1:1/0", prefix="app")
        assert store.available


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"url": "http://x", "prefix": "a"}, "url"),
        ({"url": "redis://x", "prefix": "has space"}, "prefix"),
        ({"url": "redis://x", "prefix": ""}, "prefix"),
        ({"url": "redis://x", "prefix": "a", "timeout": 0}, "timeout"),
        ({"prefix": "a"}, "url"),
    ],
)
def test_redis_store_configuration_is_checked(options: dict[str, Any], name: str) -> None:
    """A bad RedisStore argument fails at construction, naming itself."""
    with pytest.raises(ConfigurationError, match=name):
        RedisStore(**options)


def test_a_redis_url_with_a_password_is_never_shown() -> None:
    """The store's repr and a refused URL never show a password."""
    store = RedisStore(url="redis://:hunter2@127.0.0.1:6379/0", prefix="app")
    assert "hunter2" not in repr(store)
    with pytest.raises(ConfigurationError) as caught:
        RedisStore(url="hunter2://x", prefix="app")
    assert "hunter2" not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("vendor", "method", "documented"),
    [("tellus", "GET", 60), ("tellus", "POST", 30), ("turris", "POST", 60)],
)
async def test_vendor_limits_never_exceed_the_documented_minute(
    vendor: str, method: str, documented: int
) -> None:
    """The plugins' rate_limits() send at most the documented calls in any minute."""
    module = pytest.importorskip(f"resilience_{vendor}")
    clock = VirtualClock()
    layers = [attrs.evolve(limiter, max_wait=0) for limiter in module.rate_limits("cid")]
    client, server = client_for(*layers, clock=clock)
    async with client:
        for _ in range(1200):  # ten calls a second for two minutes
            with contextlib.suppress(RateLimitExceeded):
                await client.request(method, "https://api.test/v1/x")
            clock.advance(0.1)
    times = [t for _, _, t in server.sent]
    most = max(sum(1 for t in times if start <= t < start + 60.0) for start in times)
    assert documented - 1 <= most <= documented
