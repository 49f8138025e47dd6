"""The ConcurrencyLimit layer: slots per key, a bounded FIFO queue, bounded waits.

Calls are held in flight by a transport that waits on a gate the test opens; a
VirtualClock makes a bounded wait expire at once (its sleep returns immediately),
so a queued call with ``max_wait`` gives up as soon as it would have waited.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    ConcurrencyLimit,
    ConcurrencyLimitReached,
    Pipeline,
    ResilientTransport,
    Timeout,
)
from resilience.errors import ConcurrencyLimitExceeded, ConfigurationError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio


class Gated(httpx.AsyncBaseTransport):
    """Every request waits until the test opens its gate; arrivals are recorded."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.gates: dict[str, anyio.Event] = {}
        self.in_flight = 0
        self.most = 0

    def gate(self, name: str) -> anyio.Event:
        return self.gates.setdefault(name, anyio.Event())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.headers.get("x-name", "")
        self.arrived.append(name)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate(name).wait()
        finally:
            self.in_flight -= 1
        return httpx.Response(200, text=name)


def make(
    inner: httpx.AsyncBaseTransport, *layers: Any, events: list[Any] | None = None
) -> ResilientTransport:
    hooks = [events.append] if events is not None else []
    pipeline = Pipeline(list(layers), clock=VirtualClock(), hooks=hooks, telemetry=False)
    return ResilientTransport(pipeline, inner=inner)


async def settle() -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def call(
    transport: ResilientTransport,
    name: str,
    results: dict[str, Any],
    url: str = "https://a.test/x",
) -> None:
    """One GET named ``name``; its text or its error lands in ``results``."""
    request = httpx.Request("GET", url, headers={"x-name": name})
    try:
        response = await transport.handle_async_request(request)
        await response.aread()
        results[name] = response.text
    except ConcurrencyLimitExceeded as exc:
        results[name] = exc


def limits(transport: ResilientTransport) -> Any:
    """The bound layer (its in_flight/queued/keys read the live state)."""
    return transport.pipeline.env.concurrency_limits[0]


async def test_over_the_limit_fails_fast_with_a_typed_error() -> None:
    """Two slots, no queue: the third concurrent call fails at once, nothing sent,
    with the key, the limit and no retry_after; an event says so."""
    inner = Gated()
    events: list[Any] = []
    transport = make(inner, ConcurrencyLimit(limit=2), events=events)
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results)
        group.start_soon(call, transport, "b", results)
        await settle()
        await call(transport, "c", results)
        error = results["c"]
        assert isinstance(error, ConcurrencyLimitExceeded)
        assert (error.key, error.limit, error.retry_after, error.reason) == (
            "https://a.test:443",
            2,
            None,
            "queue_full",
        )
        assert "concurrency limit of 2" in str(error)
        assert error.report.attempts == 0
        assert sorted(inner.arrived) == ["a", "b"]  # trio starts tasks in any order
        inner.gate("a").set()
        inner.gate("b").set()
    assert events == [
        ConcurrencyLimitReached(key="https://a.test:443", limit=2, reason="queue_full")
    ]
    assert results["a"] == "a"
    assert results["b"] == "b"


async def test_queued_calls_are_served_first_come_first_served() -> None:
    """One slot, a queue of three: calls run one at a time in arrival order, and a
    fourth waiter is refused."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1, max_queued=3))
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        for name in "abcd":
            group.start_soon(call, transport, name, results)
            await settle()
        await call(transport, "e", results)
        assert isinstance(results["e"], ConcurrencyLimitExceeded)
        assert limits(transport).queued("https://a.test:443") == 3
        for name in "abcd":
            assert inner.arrived[-1] == name
            inner.gate(name).set()
            await settle()
    assert inner.arrived == list("abcd")
    assert inner.most == 1


async def test_a_newcomer_never_overtakes_the_queue() -> None:
    """A slot freed while calls wait goes to the oldest waiter, not to a call that
    arrives at that moment."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1, max_queued=5))
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results)
        await settle()
        group.start_soon(call, transport, "b", results)
        await settle()
        inner.gate("a").set()
        group.start_soon(call, transport, "late", results)  # arrives as a's slot frees
        await settle()
        inner.gate("b").set()
        await settle()
        inner.gate("late").set()
    assert inner.arrived == ["a", "b", "late"]


async def test_max_wait_bounds_the_wait_on_the_pipeline_clock() -> None:
    """A queued call waits at most max_wait on the pipeline's clock, then fails with
    reason max_wait; it leaves the queue."""
    inner = Gated()
    clock = VirtualClock()
    pipeline = Pipeline(
        [ConcurrencyLimit(limit=1, max_queued=1, max_wait=2.5)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=inner)
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results)
        await settle()
        await call(transport, "b", results)
        assert isinstance(results["b"], ConcurrencyLimitExceeded)
        assert results["b"].reason == "max_wait"
        assert clock.sleeps == [2.5]
        assert limits(transport).queued("https://a.test:443") == 0
        inner.gate("a").set()


async def test_the_deadline_cuts_the_wait() -> None:
    """Under Timeout(total=1), a queue wait of up to 10 s is cut to what is left."""
    inner = Gated()
    clock = VirtualClock()
    layers = [Timeout(total=1.0), ConcurrencyLimit(limit=1, max_queued=1, max_wait=10.0)]
    transport = ResilientTransport(Pipeline(layers, clock=clock, telemetry=False), inner=inner)
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results)
        await settle()
        await call(transport, "b", results)
        assert results["b"].reason == "deadline"
        assert clock.sleeps == [1.0]
        inner.gate("a").set()


async def test_keys_do_not_block_each_other() -> None:
    """A full key does not delay another key's calls."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1))
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results, "https://a.test/x")
        await settle()
        inner.gate("b").set()
        await call(transport, "b", results, "https://b.test/x")
        assert results["b"] == "b"
        inner.gate("a").set()


async def test_idle_keys_are_forgotten() -> None:
    """After calls to many hosts end, the layer holds no state for any of them."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1))
    results: dict[str, Any] = {}
    for index in range(200):
        inner.gate(f"n{index}").set()
        await call(transport, f"n{index}", results, f"https://h{index}.test/x")
    assert limits(transport).keys() == 0


async def test_cancelled_waiters_and_holders_free_their_places() -> None:
    """A cancelled queued call leaves the queue; a cancelled call in flight passes
    its slot on to the next waiter."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1, max_queued=2))
    results: dict[str, Any] = {}
    key = "https://a.test:443"
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as group:
            group.start_soon(call, transport, "a", results)
            await settle()
            group.start_soon(call, transport, "b", results)
            await settle()
            outer.start_soon(call, transport, "c", results)  # queued behind b
            await settle()
            assert limits(transport).queued(key) == 2
            group.cancel_scope.cancel()  # a (in flight) and b (queued)
        await settle()
        assert inner.arrived == ["a", "c"]
        inner.gate("c").set()
    assert results.get("c") == "c"
    assert limits(transport).keys() == 0


async def test_none_key_bypasses_the_limit() -> None:
    """A key function returning None lets the request through uncounted."""
    inner = Gated()
    transport = make(inner, ConcurrencyLimit(limit=1, key=lambda request: None))
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(call, transport, "a", results)
        await settle()
        inner.gate("b").set()
        await call(transport, "b", results)
        assert results["b"] == "b"
        inner.gate("a").set()


@settings(max_examples=60)
@given(
    limit=st.integers(1, 3),
    max_queued=st.integers(0, 3),
    plan=st.lists(st.one_of(st.just("arrive"), st.integers(0, 6)), max_size=25),
)
def test_never_more_than_the_limit_and_fifo(limit: int, max_queued: int, plan: list[Any]) -> None:
    """Random arrivals and completions: never more than ``limit`` in flight, calls
    start in arrival order, refusals only when the queue is full, no state left."""

    async def scenario() -> None:
        inner = Gated()
        transport = make(inner, ConcurrencyLimit(limit=limit, max_queued=max_queued))
        results: dict[str, Any] = {}
        layer = limits(transport)
        names: list[str] = []
        async with anyio.create_task_group() as group:
            for step in plan:
                if step == "arrive":
                    name = f"c{len(names)}"
                    busy = layer.in_flight("https://a.test:443")
                    waiting = layer.queued("https://a.test:443")
                    names.append(name)
                    group.start_soon(call, transport, name, results)
                    await settle()
                    refused = isinstance(results.get(name), ConcurrencyLimitExceeded)
                    assert refused == (busy >= limit and waiting >= max_queued)
                elif inner.arrived:
                    inner.gate(inner.arrived[step % len(inner.arrived)]).set()
                    await settle()
                assert inner.in_flight <= limit
            for name in names:
                inner.gate(name).set()
        started = [n for n in names if n in inner.arrived]
        assert inner.arrived == started
        assert layer.keys() == 0

    anyio.run(scenario)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": 1, "max_queued": -1}, "max_queued"),
        ({"limit": 1, "max_wait": 0}, "max_wait"),
        ({"limit": 1, "key": "host"}, "key"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, Any], named: str) -> None:
    """A bad argument fails at construction, naming it."""
    with pytest.raises(ConfigurationError, match=named):
        ConcurrencyLimit(**kwargs)
