"""Breaker hardening from the hostile test (issue 11): fast fails are checkpoints,
bounded windows, a failing key function, and open circuits that are forgotten."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    CircuitStateChanged,
    Pipeline,
    ResilientTransport,
    Verdict,
)
from resilience.errors import CircuitOpenError, ConfigurationError, ResilienceError
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://a.test/x"
KEY = "https://a.test:443"
OK = Verdict(Action.ACCEPT)
FAILED = Verdict(Action.RETRY)


def tripped(breaker: CircuitBreaker, answer: Any = None) -> tuple[ResilientTransport, Pipeline]:
    """A transport whose breaker for a.test was opened by one 503."""
    pipeline = Pipeline([breaker], clock=VirtualClock(), telemetry=False)
    registry = CircuitRegistry.of(pipeline)
    registry.allow(KEY)
    registry.record(KEY, FAILED)
    assert registry.get(KEY).state is CircuitState.OPEN
    inner = ScriptedTransport.of(answer if answer is not None else reply(200))
    return ResilientTransport(pipeline, inner=inner), pipeline


# -- a fast fail is a checkpoint ----------------------------------------------------


async def test_a_rejected_call_honours_an_enclosing_cancellation() -> None:
    """A loop that retries on CircuitOpenError inside a cancelled scope stops at
    its first rejection: the fast fail is a cancellation checkpoint."""
    transport, _ = tripped(CircuitBreaker(minimum_calls=1, break_duration=60.0))
    rejected = 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        for _ in range(50):
            try:
                await transport.handle_async_request(httpx.Request("GET", URL))
            except CircuitOpenError:
                rejected += 1
    assert scope.cancelled_caught
    assert rejected == 0


async def test_a_retry_loop_on_circuit_open_does_not_starve_the_probe() -> None:
    """While the half-open probe is in flight, a task that retries at once on
    CircuitOpenError lets the probe finish: the circuit closes and the loop's next
    call goes through, after a handful of rejections rather than all of them."""
    clock = VirtualClock()
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1, break_duration=5.0)], clock=clock, telemetry=False
    )
    registry = CircuitRegistry.of(pipeline)
    registry.allow(KEY)
    registry.record(KEY, FAILED)
    clock.advance(5.0)

    class SlowOk(httpx.AsyncBaseTransport):
        """Answers 200 after yielding to the scheduler a few times."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            return reply(200)

    transport = ResilientTransport(pipeline, inner=SlowOk())
    rejections = 0
    outcome: list[int] = []

    async def probe() -> None:
        response = await transport.handle_async_request(httpx.Request("GET", URL))
        outcome.append(response.status_code)

    async def impatient() -> None:
        nonlocal rejections
        await anyio.lowlevel.checkpoint()  # the probe goes first and takes the slot
        for _ in range(1_000):
            try:
                response = await transport.handle_async_request(httpx.Request("GET", URL))
            except CircuitOpenError:
                rejections += 1
                continue
            outcome.append(response.status_code)
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        tg.start_soon(impatient)
    assert outcome == [200, 200]
    assert 1 <= rejections < 20
    assert registry.get(KEY).state is CircuitState.CLOSED


async def test_rejections_let_move_on_after_fire() -> None:
    """An enclosing ``move_on_after`` whose deadline has come ends a loop that
    retries on an open breaker at its first rejection."""
    transport, _ = tripped(CircuitBreaker(minimum_calls=1, break_duration=3600.0))
    rejected = 0
    with anyio.move_on_after(0) as scope:
        for _ in range(1_000):
            try:
                await transport.handle_async_request(httpx.Request("GET", URL))
            except CircuitOpenError:
                rejected += 1
    assert scope.cancelled_caught
    assert rejected == 0


# -- bounded windows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"window_calls": 10**9}, "window_calls"),
        ({"window_calls": 10**13}, "window_calls"),
        ({"window_calls": 10_001}, "window_calls"),
        ({"window": 1e-323}, "window"),
        ({"window": 0.001}, "window"),
    ],
)
def test_windows_are_bounded_at_construction(kwargs: dict[str, Any], named: str) -> None:
    """A window that would cost a gigabyte per circuit, or divide by zero at call
    time, is refused when the breaker is built, naming the argument."""
    with pytest.raises(ConfigurationError, match=named):
        CircuitBreaker(minimum_calls=1, **kwargs)


@given(
    window=st.floats(min_value=1e-320, max_value=1e12, allow_nan=False),
    window_calls=st.none() | st.integers(min_value=1, max_value=10**12),
)
def test_a_breaker_that_builds_works_at_call_time(window: float, window_calls: int | None) -> None:
    """Whatever window a breaker accepts, calls are counted and judged without an
    error; whatever it refuses is refused with a ConfigurationError."""
    try:
        breaker = CircuitBreaker(minimum_calls=1, window=window, window_calls=window_calls)
    except ConfigurationError:
        assert window < 0.01 or (window_calls is not None and window_calls > 10_000)
        return
    clock = VirtualClock(start=1e6)
    registry = CircuitRegistry.of(Pipeline([breaker], clock=clock, telemetry=False))
    for verdict in (OK, OK, FAILED):
        if registry.allow(KEY) is None:
            registry.record(KEY, verdict)
        clock.advance(window / 3)
    assert isinstance(registry.get(KEY).state, CircuitState)
    assert registry.get(KEY).calls <= 3


# -- a key function that raises ---------------------------------------------------------


async def test_a_failing_key_function_is_a_typed_error_naming_it() -> None:
    """A key function's own exception does not escape raw from ``client.get()``:
    the call fails with a ResilienceError naming the function, chained to the
    original; nothing is sent."""

    def tenant_key(request: httpx.Request) -> str:
        return "tenant:" + request.headers["x-tenant"]

    inner = ScriptedTransport.of(reply(200))
    pipeline = Pipeline([CircuitBreaker(key=tenant_key)], clock=VirtualClock(), telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(ResilienceError) as info:
            await client.get(URL)
    error = info.value
    assert isinstance(error, ConfigurationError)
    assert "tenant_key" in str(error)
    assert "KeyError" in str(error)
    assert isinstance(error.__cause__, KeyError)
    assert error.request.url == URL
    assert error.report.attempts == 0
    assert inner.requests == []


# -- open circuits are forgotten too -------------------------------------------------------


def registry_with_opened_keys(n: int, **options: Any) -> tuple[CircuitRegistry, VirtualClock, list]:
    clock = VirtualClock()
    events: list[Any] = []
    breaker = CircuitBreaker(minimum_calls=1, window=10.0, break_duration=5.0, **options)
    pipeline = Pipeline([breaker], clock=clock, hooks=[events.append], telemetry=False)
    registry = CircuitRegistry.of(pipeline)
    for i in range(n):
        registry.allow(f"old-{i}")
        registry.record(f"old-{i}", FAILED)
    return registry, clock, events


def test_open_circuits_are_forgotten_after_their_break_and_a_quiet_period() -> None:
    """Keys that opened once and went quiet do not stay forever: once their break
    and a quiet period (the window or the longest break, whichever is longer) are
    over, new keys sweep them away as they would closed idle ones."""
    registry, clock, _ = registry_with_opened_keys(1_000)
    assert len(registry) == 1_000
    clock.advance(5.0 + 50.0 + 1.0)  # the break, then the longest break (10 x 5 s)
    for i in range(1_000):
        registry.allow(f"new-{i}")
        registry.record(f"new-{i}", OK)
    assert not any(f"old-{i}" in registry for i in range(1_000))
    assert len(registry) == 1_000  # the new keys, still in their window


def test_open_circuits_are_kept_during_the_quiet_period() -> None:
    """Before the quiet period is over an opened circuit keeps its state: a new
    call is a half-open probe, not a fresh closed call."""
    registry, clock, _ = registry_with_opened_keys(100)
    clock.advance(5.0 + 40.0)
    for i in range(1_000):
        registry.get(f"new-{i}")
    assert all(f"old-{i}" in registry for i in range(100))
    assert registry.get("old-0").state is CircuitState.HALF_OPEN


def test_a_forgotten_open_circuit_says_it_closed_and_reads_closed() -> None:
    """Forgetting an open circuit is reported as a change to closed (so gauges of
    open breakers go back down), and a handle kept from before reads closed with
    a fresh break length."""
    registry, clock, events = registry_with_opened_keys(1)
    handle = registry.get("old-0")
    clock.advance(60.0)
    for i in range(4):
        registry.get(f"new-{i}")
    assert "old-0" not in registry
    changes = [(e.old, e.new) for e in events if isinstance(e, CircuitStateChanged)]
    assert changes == [("closed", "open"), ("open", "closed")]
    assert handle.state is CircuitState.CLOSED
    assert handle.retry_after == 0.0


def test_isolated_circuits_are_never_forgotten() -> None:
    """An isolated circuit is held open by hand: no quiet period lets it go."""
    registry, clock, _ = registry_with_opened_keys(1)
    registry.get("old-0").isolate()
    clock.advance(10_000.0)
    for i in range(100):
        registry.get(f"new-{i}")
    assert registry.get("old-0").state is CircuitState.ISOLATED
    assert math.isinf(registry.get("old-0").retry_after)
