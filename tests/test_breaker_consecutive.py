"""A run of consecutive failures opens the circuit (issue 14): a total outage trips
at once instead of waiting for a window of earlier successes to drain."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    Pipeline,
    ResilientTransport,
    Verdict,
)
from resilience.errors import CircuitOpenError, ConfigurationError, ResilienceError
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://a.test/x"
KEY = "https://a.test:443"
OK = Verdict(Action.ACCEPT)
FAILED = Verdict(Action.RETRY)
NEUTRAL = Verdict(Action.FAIL, breaker_failure=False)


class Backend(httpx.AsyncBaseTransport):
    """Answers with ``status`` and counts what reached it."""

    def __init__(self) -> None:
        self.status = 200
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return reply(self.status)


def rig(**options: Any) -> tuple[ResilientTransport, Backend, CircuitRegistry, VirtualClock]:
    clock = VirtualClock()
    backend = Backend()
    pipeline = Pipeline([CircuitBreaker(**options)], clock=clock, telemetry=False)
    return ResilientTransport(pipeline, inner=backend), backend, CircuitRegistry.of(pipeline), clock


async def call(transport: ResilientTransport) -> int | ResilienceError:
    try:
        response = await transport.handle_async_request(httpx.Request("GET", URL))
    except ResilienceError as exc:
        return exc
    await response.aclose()
    return response.status_code


def test_consecutive_failures_is_off_by_default_and_validated() -> None:
    """Plain ``CircuitBreaker()`` keeps the ratio window alone; a run shorter than
    one failure is refused, naming the argument."""
    assert CircuitBreaker().consecutive_failures is None
    for bad in (0, -1, 2.5, "5"):
        with pytest.raises(ConfigurationError, match="consecutive_failures"):
            CircuitBreaker(consecutive_failures=bad)  # type: ignore[arg-type]


async def test_a_total_outage_trips_after_the_run_despite_a_window_of_successes() -> None:
    """A 60 s window full of successes: five failures in a row open the circuit at
    once; the sixth call fails fast and sends nothing."""
    transport, backend, registry, clock = rig(window=60.0, consecutive_failures=5)
    for _ in range(200):
        assert await call(transport) == 200
        clock.advance(0.1)
    backend.status = 503
    sent = backend.sent
    for _ in range(5):
        assert not isinstance(await call(transport), CircuitOpenError)
    assert registry.get(KEY).state is CircuitState.OPEN
    assert isinstance(await call(transport), CircuitOpenError)
    assert backend.sent - sent == 5


async def test_without_the_option_the_window_must_drain_first() -> None:
    """The same outage without ``consecutive_failures``: the ratio window lets
    200 failures through before it opens (what the option is for)."""
    transport, backend, registry, clock = rig(window=60.0)
    for _ in range(200):
        await call(transport)
        clock.advance(0.1)
    backend.status = 503
    sent = backend.sent
    while registry.get(KEY).state is CircuitState.CLOSED:
        await call(transport)
    assert backend.sent - sent == 200


def test_a_success_or_a_pause_longer_than_the_window_ends_the_run() -> None:
    """Four failures, a success, four failures: still closed. Four failures, a
    pause longer than the window, four more: still closed. Neutral outcomes
    neither extend nor end a run."""
    clock = VirtualClock()
    registry = CircuitRegistry.of(
        Pipeline(
            [CircuitBreaker(window=10.0, consecutive_failures=5)], clock=clock, telemetry=False
        )
    )
    circuit = registry.get(KEY)

    def record(*verdicts: Verdict) -> None:
        for verdict in verdicts:
            assert registry.allow(KEY) is None
            registry.record(KEY, verdict)

    record(*[FAILED] * 4, OK, *[FAILED] * 4)
    assert circuit.consecutive_failures == 4
    record(OK, *[FAILED] * 4)
    clock.advance(10.5)
    assert circuit.consecutive_failures == 0
    record(*[FAILED] * 4)
    assert circuit.state is CircuitState.CLOSED
    record(NEUTRAL, NEUTRAL)
    assert circuit.consecutive_failures == 4
    record(FAILED)
    assert circuit.state is CircuitState.OPEN
    assert circuit.consecutive_failures == 0


def test_slow_successes_end_a_run() -> None:
    """A slow call that succeeded is no failure for the run."""
    clock = VirtualClock()
    registry = CircuitRegistry.of(
        Pipeline(
            [CircuitBreaker(consecutive_failures=3, slow_call_duration=1.0)],
            clock=clock,
            telemetry=False,
        )
    )
    for verdict, duration in [(FAILED, 0.1), (FAILED, 0.1), (OK, 5.0), (FAILED, 0.1)]:
        registry.allow(KEY)
        registry.record(KEY, verdict, duration=duration)
    assert registry.get(KEY).state is CircuitState.CLOSED
    assert registry.get(KEY).consecutive_failures == 1


def test_a_backend_failing_a_fifth_of_calls_at_random_never_trips_the_preset_run() -> None:
    """At 20% random failures a run of 10 starts with probability 0.2**10 (about
    1e-7) per call: 200,000 calls (over an hour at 50 calls/s) never trip it, while
    a run of 5 (3e-4 per call) would trip dozens of times."""
    rng = random.Random(20261203)
    outcomes = [FAILED if rng.random() < 0.2 else OK for _ in range(200_000)]

    def trips(run: int) -> int:
        clock = VirtualClock()
        events: list[Any] = []
        registry = CircuitRegistry.of(
            Pipeline(
                [
                    CircuitBreaker(
                        minimum_calls=20, failure_ratio=0.5, consecutive_failures=run, window=30.0
                    )
                ],
                clock=clock,
                hooks=[events.append],
                telemetry=False,
            )
        )
        for verdict in outcomes:
            if registry.allow(KEY) is None:
                registry.record(KEY, verdict)
            clock.advance(0.02)
        return sum(1 for e in events if e.new == "open")

    assert trips(10) == 0
    assert trips(5) > 20
