"""The CircuitBreaker's edges: races, concurrency, and its meeting with Retry.

Stale calls of a forgotten circuit, reset() during a probe, several probes failing
at once, transitions emitted once under concurrency, a breaker met open by Retry
(with and without waiting for the half-open), and cancellation while Retry waits.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    CircuitStateChanged,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    RetryScheduled,
    Timeout,
    Verdict,
)
from resilience.errors import CircuitOpenError, ResilienceError, RetriesExhausted
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

KEY = "https://a.test:443"
FAILED = Verdict(Action.RETRY)


class Gates(httpx.AsyncBaseTransport):
    """A backend holding each request until the test releases it with a status."""

    def __init__(self) -> None:
        self.held: list[tuple[anyio.Event, list[int]]] = []
        self.arrived = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        event, status = anyio.Event(), [200]
        self.held.append((event, status))
        self.arrived += 1
        await event.wait()
        return reply(status[0])

    def release(self, index: int, status: int) -> None:
        event, slot = self.held[index]
        slot[0] = status
        event.set()

    async def wait_for(self, count: int) -> None:
        while self.arrived < count:
            await anyio.lowlevel.checkpoint()


class Rig:
    """A pipeline on a virtual clock over a held backend, recording events."""

    def __init__(self, *layers: Any, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self.events: list[Any] = []
        self.backend = Gates()
        self.pipeline = Pipeline(
            list(layers), clock=self.clock, hooks=[self.events.append], telemetry=False
        )
        self.transport = ResilientTransport(self.pipeline, inner=self.backend)
        self.results: list[int | ResilienceError] = []

    @property
    def registry(self) -> CircuitRegistry:
        return CircuitRegistry.of(self.pipeline)

    def trip(self, key: str = KEY) -> None:
        """Open ``key``'s circuit with failures recorded through the registry."""
        registry = self.registry
        for _ in range(registry.config.minimum_calls):
            assert registry.allow(key) is None
            registry.record(key, FAILED)
        assert registry.get(key).state is CircuitState.OPEN

    async def call(self, url: str = "https://a.test/x") -> None:
        """One call; its status or error goes to :attr:`results`."""
        try:
            response = await self.transport.handle_async_request(httpx.Request("GET", url))
        except ResilienceError as exc:
            self.results.append(exc)
        else:
            await response.aclose()
            self.results.append(response.status_code)

    def transitions(self, key: str = KEY) -> list[tuple[str, str]]:
        return [
            (e.old, e.new)
            for e in self.events
            if isinstance(e, CircuitStateChanged) and e.key == key
        ]


# -- a circuit forgotten while a call is in flight --------------------------------


async def test_a_stale_call_of_a_forgotten_circuit_does_not_settle_a_probe() -> None:
    """A call admitted while closed, whose circuit was forgotten meanwhile, must not
    decide the half-open of the circuit that replaced it: only the probe does."""
    rig = Rig(CircuitBreaker(minimum_calls=1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)  # a long call, admitted while closed
        await rig.backend.wait_for(1)
        rig.clock.advance(60.0)
        for i in range(4):
            rig.registry.get(f"other{i}")  # the sweep forgets the idle circuit
        assert KEY not in rig.registry
        rig.trip()  # the backend fails for everybody else: a new circuit opens
        rig.clock.advance(30.0)
        tg.start_soon(rig.call)  # the probe
        await rig.backend.wait_for(2)
        circuit = rig.registry.get(KEY)
        assert circuit.state is CircuitState.HALF_OPEN
        rig.backend.release(0, 200)  # the old call ends well...
        await anyio.lowlevel.checkpoint()
        rig.backend.release(1, 503)  # ...but the probe fails
    assert rig.results[0] == 200
    assert isinstance(rig.results[1], RetriesExhausted)
    assert circuit.state is CircuitState.OPEN
    assert circuit.retry_after == 60.0
    assert rig.transitions() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]


# -- half-open probes --------------------------------------------------------------


async def test_probes_failing_together_reopen_once() -> None:
    """Two probes failing at once reopen the circuit once: one event, and the break
    doubles once (60 s, not 120 s)."""
    rig = Rig(CircuitBreaker(minimum_calls=1, half_open_calls=2, break_duration=30.0))
    rig.trip()
    rig.clock.advance(30.0)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(rig.call)
        await rig.backend.wait_for(2)
        while len(rig.results) < 1:
            await anyio.lowlevel.checkpoint()
        rig.backend.release(0, 503)
        rig.backend.release(1, 503)
    assert rig.backend.arrived == 2
    assert sum(isinstance(r, CircuitOpenError) for r in rig.results) == 1
    assert sum(isinstance(r, RetriesExhausted) for r in rig.results) == 2
    circuit = rig.registry.get(KEY)
    assert circuit.state is CircuitState.OPEN
    assert circuit.retry_after == 60.0
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


async def test_each_transition_is_one_event_with_many_concurrent_callers() -> None:
    """200 callers arriving at the half-open: one event per transition, frozen."""
    rig = Rig(CircuitBreaker(minimum_calls=1))
    rig.trip()
    rig.clock.advance(30.0)
    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(rig.call)
        while len(rig.results) < 199:
            await anyio.lowlevel.checkpoint()
        rig.backend.release(0, 200)
    assert rig.backend.arrived == 1
    assert rig.results.count(200) == 1
    assert rig.registry.get(KEY).state is CircuitState.CLOSED
    changes = [e for e in rig.events if isinstance(e, CircuitStateChanged)]
    assert [(e.old, e.new) for e in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        changes[0].new = "closed"  # type: ignore[misc]


async def test_reading_an_expired_break_emits_half_open_once() -> None:
    """Health checks reading the state of a circuit whose break is over move it to
    half-open once; later reads and the next call emit nothing more."""
    rig = Rig(CircuitBreaker(minimum_calls=1))
    rig.trip()
    rig.clock.advance(45.0)
    circuit = rig.registry.get(KEY)
    for _ in range(3):
        assert circuit.state is CircuitState.HALF_OPEN
        assert circuit.retry_after == 0.0
        assert rig.registry.blocked_for(httpx.Request("GET", "https://a.test/")) == 0.0
    assert rig.transitions() == [("closed", "open"), ("open", "half_open")]
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        await rig.backend.wait_for(1)
        rig.backend.release(0, 200)
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_reset_during_a_probe_ignores_the_probe() -> None:
    """A probe admitted before reset() neither reopens nor counts in the new window."""
    rig = Rig(CircuitBreaker(minimum_calls=1))
    rig.trip()
    rig.clock.advance(30.0)
    circuit = rig.registry.get(KEY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        await rig.backend.wait_for(1)
        circuit.reset()
        rig.backend.release(0, 503)
    assert isinstance(rig.results[0], RetriesExhausted)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls == 0
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_a_half_open_circuit_with_a_probe_in_flight_is_never_forgotten() -> None:
    """Churn of idle keys over hours forgets idle closed circuits and opened ones
    nobody asks for, never a half-open one whose probe is in flight."""
    rig = Rig(CircuitBreaker(minimum_calls=1))
    rig.trip("half")
    rig.trip("open")
    rig.clock.advance(30.0)
    assert rig.registry.allow("half") is None  # half-open, its probe in flight
    rig.registry.get("closed")
    for i in range(200):
        rig.clock.advance(60.0)
        rig.registry.get(f"idle{i}")
    assert "closed" not in rig.registry
    assert "half" in rig.registry
    assert "open" not in rig.registry
    assert rig.registry.get("half").state is CircuitState.HALF_OPEN
    assert rig.registry.allow("half") == 0.0  # its probe still holds the slot
    rig.registry.release("half")
    assert rig.registry.allow("half") is None


# -- with Retry -------------------------------------------------------------------


def retry_layers(
    *, wait: bool, total: float | None = None, attempts: int = 4, minimum_calls: int = 1
) -> list[Any]:
    layers: list[Any] = [] if total is None else [Timeout(total=total)]
    return [
        *layers,
        Retry(
            max_attempts=attempts,
            backoff=ExponentialBackoff(initial=1.0, jitter="none"),
            wait_for_half_open=wait,
        ),
        CircuitBreaker(minimum_calls=minimum_calls, break_duration=30.0),
    ]


async def answered(rig: Rig, *statuses: int) -> None:
    """One call whose attempts get ``statuses`` in turn (until the call ends)."""
    done = len(rig.results) + 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        for index, status in enumerate(statuses):
            while rig.backend.arrived <= index and len(rig.results) < done:
                await anyio.lowlevel.checkpoint()
            if rig.backend.arrived <= index:
                break  # the call ended before this attempt
            rig.backend.release(index, status)


async def test_retry_waits_for_a_breaker_it_met_open() -> None:
    """With wait_for_half_open, a call meeting an open breaker sleeps exactly until
    the half-open, and its next attempt is the probe."""
    rig = Rig(*retry_layers(wait=True, total=60.0))
    rig.trip()
    rig.clock.advance(10.0)
    await answered(rig, 200)
    assert rig.results == [200]
    assert rig.clock.sleeps == [20.0]
    assert rig.backend.arrived == 1
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_retry_waking_for_half_open_is_not_rejected_by_rounding() -> None:
    """The same wait, at clock readings where the float sum rounds down: the call
    must still probe right after its one sleep."""
    clock = VirtualClock()
    clock.advance(0.3)
    rig = Rig(*retry_layers(wait=True, attempts=2), clock=clock)
    rig.trip()  # half-opens at 30.3
    rig.clock.advance(0.28)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        while not rig.results and rig.backend.arrived == 0:
            await anyio.lowlevel.checkpoint()
        if rig.backend.arrived:
            rig.backend.release(0, 200)
    assert rig.results == [200]
    assert rig.clock.sleeps == [pytest.approx(29.72)]


class EarlyClock(VirtualClock):
    """A clock whose timers fire up to 10 ms early, as asyncio's may on Windows
    (its clock resolution is 15.6 ms there), yet never before half the time."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds - 0.01, seconds / 2))
        await anyio.lowlevel.checkpoint()


async def test_retry_woken_early_finishes_its_wait_for_the_half_open() -> None:
    """A sleep for the half-open that wakes a little early is finished (for the
    few milliseconds left) instead of spending an attempt on a breaker still open."""
    rig = Rig(*retry_layers(wait=True, attempts=2), clock=EarlyClock())
    rig.trip()
    rig.clock.advance(10.0)
    await answered(rig, 200)
    assert rig.results == [200]
    assert rig.clock.sleeps[0] == 20.0
    assert rig.clock.sleeps[1:]
    assert all(0 < s <= 0.01 + 1e-9 for s in rig.clock.sleeps[1:])
    assert rig.clock.now() == pytest.approx(30.0, abs=1e-6)
    assert rig.backend.arrived == 1


async def test_retry_woken_early_for_a_backoff_does_not_wait_twice() -> None:
    """An early wake from a backoff (no breaker in the way) is left alone."""
    rig = Rig(*retry_layers(wait=True, attempts=2, minimum_calls=5), clock=EarlyClock())
    await answered(rig, 503, 200)
    assert rig.results == [200]
    assert rig.clock.sleeps == [1.0]


async def test_an_open_breaker_met_after_a_real_attempt_is_final() -> None:
    """The breaker opens (for another caller) during this call's backoff: the next
    attempt meets it and the CircuitOpenError ends the call, carrying the report."""
    rig = Rig(*retry_layers(wait=False, minimum_calls=2))

    def trip_on_retry(event: object) -> None:
        if isinstance(event, RetryScheduled):
            rig.trip()

    rig.pipeline.env.hooks = (*rig.pipeline.env.hooks, trip_on_retry)
    # The call's own 503 is one failure of the two needed: only the hook opens it.
    await answered(rig, 503)
    error = rig.results[0]
    assert isinstance(error, CircuitOpenError)
    assert error.key == KEY
    assert error.retry_after == pytest.approx(29.0)
    assert error.request.url == "https://a.test/x"
    assert error.report.attempts == 1
    assert error.report.delays == [1.0]
    assert [v.action for v in error.report.verdicts] == [Action.RETRY]
    assert rig.backend.arrived == 1


async def test_an_open_breaker_met_too_late_for_the_deadline_is_final() -> None:
    """Waiting for the half-open is only done when it comes before the deadline."""
    rig = Rig(*retry_layers(wait=True, total=20.0))
    rig.trip()
    await rig.call()
    error = rig.results[0]
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after == 30.0
    assert error.report.gave_up == "circuit_open"
    assert error.report.attempts == 0
    assert rig.clock.sleeps == []
    assert rig.backend.arrived == 0


async def test_retry_stops_when_its_failed_probe_reopens() -> None:
    """A probe that fails reopens the breaker (for 60 s): Retry gives up at once with
    the real failure instead of sleeping into a rejection."""
    rig = Rig(*retry_layers(wait=False))
    rig.trip()
    rig.clock.advance(30.0)
    await answered(rig, 503)
    error = rig.results[0]
    assert isinstance(error, RetriesExhausted)
    assert error.problem is not None
    assert error.problem.status == 503
    assert error.report.gave_up == "circuit_open"
    assert rig.clock.sleeps == []
    assert rig.backend.arrived == 1
    assert rig.registry.get(KEY).retry_after == 60.0


async def test_retry_waits_out_a_reopened_break_when_it_fits() -> None:
    """With wait_for_half_open and time left, a failed probe's doubled break is slept
    through and the next attempt probes again."""
    rig = Rig(*retry_layers(wait=True, total=100.0))
    rig.trip()
    rig.clock.advance(30.0)
    await answered(rig, 503, 200)
    assert rig.results == [200]
    assert rig.clock.sleeps == [60.0]
    assert rig.backend.arrived == 2
    assert rig.transitions() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


class StuckClock(VirtualClock):
    """A virtual clock whose sleeps never end (so a test can cancel one)."""

    sleeping: anyio.Event | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.sleeping is not None:
            self.sleeping.set()
        await anyio.sleep_forever()


async def test_a_call_cancelled_while_waiting_for_half_open_holds_nothing() -> None:
    """Cancelled during Retry's sleep until the half-open: no probe slot is held,
    nothing was sent, and the next caller probes."""
    clock = StuckClock()
    clock.sleeping = anyio.Event()
    rig = Rig(*retry_layers(wait=True), clock=clock)
    rig.trip()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        await clock.sleeping.wait()
        tg.cancel_scope.cancel()
    assert clock.sleeps == [30.0]
    assert rig.results == []
    assert rig.backend.arrived == 0
    clock.advance(30.0)
    circuit = rig.registry.get(KEY)
    assert circuit.state is CircuitState.HALF_OPEN
    assert rig.registry.allow(KEY) is None  # the probe slot is free


async def test_a_hook_isolating_on_half_open_stops_the_triggering_call() -> None:
    """A hook taking a host out of service when its circuit half-opens (isolate())
    must stop every call, the one that caused the event included."""
    rig = Rig(CircuitBreaker(minimum_calls=1))

    def hold_on_half_open(event: object) -> None:
        if isinstance(event, CircuitStateChanged) and event.new == "half_open":
            rig.registry.get(event.key).isolate()

    rig.pipeline.env.hooks = (*rig.pipeline.env.hooks, hold_on_half_open)
    rig.trip()
    rig.clock.advance(30.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.call)
        while not rig.results and rig.backend.arrived == 0:
            await anyio.lowlevel.checkpoint()
        if rig.backend.arrived:
            rig.backend.release(0, 200)
    assert rig.registry.get(KEY).state is CircuitState.ISOLATED
    assert rig.backend.arrived == 0
    error = rig.results[0]
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after == float("inf")
