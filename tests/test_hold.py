"""Hold, then ramp (issue 14): a call that meets an open breaker waits for the backend
to come back instead of failing, is woken when a probe succeeds, and goes at its
turn in a ramp; it honours its deadline, ``max_wait``, the cap of held calls and
cancellation, and shows in the report, the events and the spans.

Scenarios with many concurrent calls run on :class:`SteppedClock`, a VirtualClock
whose sleeps last until the test moves time past their end (concurrent sleeps
overlap as in real time, where a plain VirtualClock adds them up), so the clock
times at which requests reach the server show the ramp.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import sniffio
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    CallHeld,
    CallReleased,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    ExponentialBackoff,
    Hold,
    Pipeline,
    ResilientTransport,
    Retry,
    RetryBudget,
    Timeout,
)
from resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    ResilienceError,
    RetriesExhausted,
)
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

KEY = "https://a.test:443"


async def settle() -> None:
    """Let every other task run until it blocks. (anyio's wait_all_tasks_blocked
    polls every 0.1 s of real time under asyncio; this only yields.)"""
    if sniffio.current_async_library() != "asyncio":
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(100_000):
        await asyncio.sleep(0)
        if all(
            task is this or (task._fut_waiter is not None and not task._fut_waiter.done())  # type: ignore[attr-defined]
            for task in asyncio.all_tasks()
        ):
            return


class SteppedClock(VirtualClock):
    """A VirtualClock whose sleeps last until :meth:`run` moves time past their end."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[list[Any]] = []  # [end, number, event, still waited for]
        self.number = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not seconds > 0:
            await anyio.lowlevel.checkpoint()
            return
        self.number += 1
        timer = [self.now() + seconds, self.number, anyio.Event(), True]
        heapq.heappush(self.timers, timer)
        try:
            await timer[2].wait()
        finally:
            timer[3] = False

    async def run(self, until: float | None = None) -> None:
        """Fire the timers in time order, letting every task run in between, until
        none is left (or the next one ends after ``until``)."""
        for _ in range(100_000):
            await settle()
            while self.timers and not self.timers[0][3]:
                heapq.heappop(self.timers)
            if not self.timers or (until is not None and self.timers[0][0] > until):
                break
            timer = heapq.heappop(self.timers)
            if timer[0] > self.now():
                self.advance(timer[0] - self.now())
            timer[2].set()
        if until is not None and until > self.now():
            self.advance(until - self.now())


class Server(httpx.AsyncBaseTransport):
    """Down (503) until a clock time (or by hand), healthy after; logs each request's time."""

    def __init__(self, clock: VirtualClock, down_until: float = 0.0) -> None:
        self.clock = clock
        self.down_until = down_until
        self.down = False
        self.times: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.times.append(self.clock.now())
        if self.down or self.clock.now() < self.down_until:
            return reply(503)
        return reply(200)


Caller = Callable[[], Awaitable[Any]]


def rig(
    clock: VirtualClock,
    server: Server,
    *,
    hold: Hold | None = None,
    total: float | None = 15.0,
    budget: RetryBudget | None = None,
    max_attempts: int = 5,
    **breaker: Any,
) -> tuple[Caller, Pipeline, list[Any]]:
    """Timeout(total) > Retry(hold) > CircuitBreaker over ``server``; a caller that
    returns the response's report or the error, and the events."""
    options: dict[str, Any] = {
        "consecutive_failures": 5,
        "break_duration": 1.0,
        "max_break_duration": 30.0,
        "break_growth": 0.1,
    }
    options.update(breaker)
    layers: list[Any] = [] if total is None else [Timeout(total=total)]
    layers += [
        Retry(
            max_attempts=max_attempts,
            backoff=ExponentialBackoff(initial=0.1, max_delay=2.0, jitter="none"),
            budget=budget,
            hold=Hold() if hold is None else hold,
        ),
        CircuitBreaker(**options),
    ]
    events: list[Any] = []
    pipeline = Pipeline(layers, clock=clock, hooks=[events.append], telemetry=False)
    transport = ResilientTransport(pipeline, inner=server)

    async def call() -> Any:
        try:
            response = await transport.handle_async_request(httpx.Request("GET", KEY + "/x"))
        except ResilienceError as exc:
            return exc
        await response.aclose()
        return response

    return call, pipeline, events


def trip(pipeline: Pipeline, failures: int = 5) -> None:
    """Open the circuit now, as a run of failures would."""
    from resilience import Action, Verdict

    registry = CircuitRegistry.of(pipeline)
    for _ in range(failures):
        registry.allow(KEY)
        registry.record(KEY, Verdict(Action.RETRY))
    assert registry.get(KEY).state is CircuitState.OPEN


def of(events: list[Any], kind: type) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


# -- settings ------------------------------------------------------------------------


def test_hold_settings_are_validated() -> None:
    """Bad Hold values fail at construction, naming the argument; holding is off by
    default and takes a Hold."""
    assert Retry().hold is None
    for name, bad in [
        ("max_calls", 0),
        ("max_calls", 1.5),
        ("max_wait", 0),
        ("max_wait", math.inf),
        ("ramp_start", 0),
        ("ramp_rate", -1.0),
        ("ramp_interval", 0),
    ]:
        with pytest.raises(ConfigurationError, match=name):
            Hold(**{name: bad})
    with pytest.raises(ConfigurationError, match="ramp_start"):
        Hold(ramp_start=2.0, ramp_rate=1.0)
    with pytest.raises(ConfigurationError, match="hold"):
        Retry(hold=True)  # type: ignore[arg-type]


@given(
    rate=st.floats(0.01, 5000.0),
    config=st.builds(
        Hold,
        ramp_start=st.sampled_from([0.1, 0.25, 0.5]),
        ramp_rate=st.sampled_from([0.5, 1.0, 2.0]),
        ramp_interval=st.sampled_from([0.1, 0.5, 1.0]),
    ),
)
def test_the_ramp_starts_at_once_grows_and_never_outruns_its_top_rate(
    rate: float, config: Hold
) -> None:
    """The first held call goes at once; turns never go backwards; the release rate
    never exceeds ``ramp_rate`` times the offered rate (or one call per interval,
    whichever is more); and it grows from its start as slow start does."""
    n = 400
    offsets = [config.release_offset(i, rate) for i in range(n)]
    assert offsets[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(offsets))
    start = max(config.ramp_start * rate, 1.0 / config.ramp_interval)
    top = max(config.ramp_rate * rate, start)
    for i in range(0, n, 37):
        for j in range(i, n, 53):
            assert offsets[j] - offsets[i] >= (j - i) / top * (1 - 1e-9) - 1e-9
    # Released within t seconds: at most what the growing rate allows.
    for t in (0.25, 0.5, 1.0, 2.0):
        cap = start * config.ramp_interval / math.log(2) * (2 ** (t / config.ramp_interval) - 1)
        assert sum(offset <= t for offset in offsets) <= min(cap, top * t + cap) + 1 + 1e-6


def test_with_the_defaults_the_first_second_releases_about_half_the_offered_load() -> None:
    """At 50 and 200 calls/s, the default ramp releases about 54% of a second's
    offered calls in its first second, and the offered rate after that."""
    hold = Hold()
    for rate in (50.0, 200.0):
        offsets = [hold.release_offset(i, rate) for i in range(int(10 * rate))]
        first = sum(offset < 1.0 for offset in offsets)
        assert 0.5 * rate <= first <= 0.6 * rate
        second = sum(1.0 <= offset < 2.0 for offset in offsets)
        assert second == pytest.approx(rate, abs=2)


# -- one held call --------------------------------------------------------------------


async def test_a_call_meeting_an_open_breaker_is_held_and_goes_as_its_probe() -> None:
    """The circuit is open for a second more and the server is back: instead of a
    CircuitOpenError, the call waits for the break to end (nothing sent meanwhile)
    and goes as the circuit's probe; the wait is its report's delay."""
    clock = VirtualClock()
    server = Server(clock)
    call, pipeline, events = rig(clock, server)
    trip(pipeline)
    response = await call()
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    report = response.extensions["resilience"]
    assert report.attempts == 1
    assert report.delays == pytest.approx([1.0])
    assert report.gave_up is None
    assert server.times == [pytest.approx(1.0)]
    held, released = of(events, CallHeld), of(events, CallReleased)
    assert [(e.key, e.attempt, e.held) for e in held] == [(KEY, 1, 1)]
    assert [(e.outcome, e.released) for e in released] == [("probe", True)]
    assert released[0].waited == pytest.approx(1.0)
    assert CircuitRegistry.of(pipeline).get(KEY).state is CircuitState.CLOSED


async def test_without_hold_the_same_call_fails_fast() -> None:
    """The same call with holding off (the default): CircuitOpenError at once."""
    clock = VirtualClock()
    server = Server(clock)
    events: list[Any] = []
    pipeline = Pipeline(
        [Retry(), CircuitBreaker(consecutive_failures=5, break_duration=1.0)],
        clock=clock,
        hooks=[events.append],
        telemetry=False,
    )
    trip(pipeline)
    with pytest.raises(CircuitOpenError) as caught:
        await ResilientTransport(pipeline, inner=server).handle_async_request(
            httpx.Request("GET", KEY + "/x")
        )
    assert caught.value.report.delays == []
    assert server.times == []
    assert not of(events, CallHeld)


async def test_a_held_call_whose_probe_fails_holds_again_and_goes_once_the_server_is_back() -> None:
    """The server is back 2.5 s after the circuit opened: the held call probes at
    1 s and 2 s (both fail; breaks stay a second, the outage being young), then at
    3 s it succeeds; each failed probe is one of its attempts."""
    clock = VirtualClock()
    server = Server(clock, down_until=2.5)
    call, pipeline, events = rig(clock, server)
    trip(pipeline)
    response = await call()
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert server.times == pytest.approx([1.0, 2.0, 3.0])
    report = response.extensions["resilience"]
    assert report.attempts == 3
    assert report.delays == pytest.approx([1.0, 1.0, 1.0])
    assert [e.outcome for e in of(events, CallReleased)] == ["probe"] * 3


async def test_a_call_whose_deadline_comes_before_the_next_probe_is_not_held() -> None:
    """With 0.5 s left and a break of a second, holding is hopeless: the call fails
    fast, as without holding."""
    clock = VirtualClock()
    server = Server(clock)
    call, pipeline, events = rig(clock, server, total=0.5)
    trip(pipeline)
    error = await call()
    assert isinstance(error, CircuitOpenError)
    assert error.report.gave_up == "circuit_open"
    assert error.report.delays == []
    assert not of(events, CallHeld)
    assert server.times == []


async def test_a_held_call_gives_up_when_a_failed_probe_pushes_the_next_past_its_end() -> None:
    """Doubling breaks (no growth): the probe at 1 s fails and the next is at 3 s;
    a call with 2.5 s in all gives up right then (at 1 s, not at its deadline), with
    gave_up "circuit_open" and the second it actually waited in its delays."""
    clock = VirtualClock()
    server = Server(clock)
    server.down = True
    call, pipeline, _events = rig(clock, server, total=2.5, break_growth=None)
    trip(pipeline)
    error = await call()
    assert isinstance(error, RetriesExhausted)  # its own probe's 503
    assert error.report.gave_up == "circuit_open"
    assert error.report.attempts == 1
    assert error.report.delays == pytest.approx([1.0])
    assert clock.now() == pytest.approx(1.0)


async def test_max_wait_bounds_a_hold_without_a_deadline() -> None:
    """No Timeout(total): a hold still ends, at max_wait at the latest."""
    clock = VirtualClock()
    server = Server(clock)
    server.down = True
    call, pipeline, _ = rig(clock, server, total=None, hold=Hold(max_wait=3.5), max_attempts=50)
    trip(pipeline)
    error = await call()
    assert isinstance(error, RetriesExhausted)
    assert error.report.gave_up == "circuit_open"
    assert sum(error.report.delays) <= 3.5
    assert len(server.times) == 3  # probes at 1, 2 and 3 s


async def test_a_call_whose_retry_budget_is_spent_is_held_while_the_circuit_is_open() -> None:
    """An empty budget: the attempt that trips the breaker does not end the call
    (gave_up "budget"); it holds, spending no token, and succeeds after the break."""
    clock = VirtualClock()
    server = Server(clock, down_until=0.5)
    empty = RetryBudget(ratio=0.0, min_per_second=0.0, initial=0.0)
    call, _pipeline, _ = rig(clock, server, budget=empty, consecutive_failures=1)
    response = await call()
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.extensions["resilience"].attempts == 2
    assert response.extensions["resilience"].delays == pytest.approx([1.0])


async def test_a_hold_needs_a_breaker_below() -> None:
    """Retry(hold=...) without a breaker retries as without it."""
    clock = VirtualClock()
    server = Server(clock, down_until=0.15)
    pipeline = Pipeline(
        [Retry(backoff=ExponentialBackoff(initial=0.1, jitter="none"), hold=Hold())],
        clock=clock,
        telemetry=False,
    )
    response = await ResilientTransport(pipeline, inner=server).handle_async_request(
        httpx.Request("GET", KEY + "/x")
    )
    assert response.status_code == 200
    assert response.extensions["resilience"].delays == pytest.approx([0.1, 0.2])


# -- many held calls -------------------------------------------------------------------


async def test_held_calls_go_when_a_probe_succeeds_in_a_ramp() -> None:
    """Calls arrive at 20/s; the server fails for the first 4 s. During the outage
    it gets the 5 failures that trip the breaker and one probe a second, nothing
    else; every call is held, woken when the probe at 4.2 s succeeds, and goes at
    its turn in the ramp: at most twice the offered load in any second after,
    about 1.6 times in the first (the fresh calls and half a second's held ones).
    Every call succeeds."""
    clock = SteppedClock()
    server = Server(clock, down_until=4.0)
    call, pipeline, events = rig(clock, server)
    results: list[Any] = []
    rate = 20.0

    async def one() -> None:
        results.append(await call())

    async with anyio.create_task_group() as tg:

        async def arrivals() -> None:
            for _ in range(int(6 * rate)):
                tg.start_soon(one)
                await clock.sleep(1 / rate)

        tg.start_soon(arrivals)
        await clock.run()

    assert len(results) == 120
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
    per_second = collections.Counter(int(t) for t in server.times)
    assert per_second[1] == per_second[2] == per_second[3] == 1  # one probe per break
    recovered = next(
        e for e in events if getattr(e, "new", None) == "closed" and e.old == "half_open"
    )
    assert recovered is not None
    closed_at = min(t for t in server.times if t >= 4.0)
    assert 4.0 <= closed_at <= 5.0
    for start in (closed_at + k * 0.5 for k in range(8)):
        in_window = sum(start <= t < start + 1.0 for t in server.times)
        assert in_window <= 2 * rate + 1
    first = sum(closed_at <= t < closed_at + 1.0 for t in server.times)
    assert first <= 1.75 * rate
    released = of(events, CallReleased)
    assert {e.outcome for e in released} <= {"probe", "recovered"}
    assert CircuitRegistry.of(pipeline).get(KEY).held == 0


async def test_the_ramp_releases_the_longest_held_first_at_its_planned_turns() -> None:
    """Forty calls held over 2 s (20/s), then ``reset()`` recovers the circuit: they
    reach the server in the order they were held, at the turns Hold.release_offset
    plans for 20 calls a second."""
    clock = SteppedClock()
    server = Server(clock)
    call, pipeline, _events = rig(
        clock, server, total=60.0, break_duration=20.0, max_break_duration=20.0
    )
    trip(pipeline)
    order: list[int] = []

    async def one(number: int) -> None:
        result = await call()
        assert isinstance(result, httpx.Response)
        order.append(number)

    async with anyio.create_task_group() as tg:

        async def arrivals() -> None:
            for number in range(40):
                tg.start_soon(one, number)
                await clock.sleep(0.05)

        tg.start_soon(arrivals)
        await clock.run(until=2.0)
        circuit = CircuitRegistry.of(pipeline).get(KEY)
        assert circuit.held == 40
        assert server.times == []
        circuit.reset()
        await clock.run()
    assert order == list(range(40))
    rate = 40 / 2.0
    planned = [2.0 + Hold().release_offset(i, rate) for i in range(40)]
    assert server.times == pytest.approx(planned)


async def test_calls_beyond_max_calls_fail_fast() -> None:
    """Hold(max_calls=3): the fourth call that meets the open breaker is not held."""
    clock = SteppedClock()
    server = Server(clock)
    call, pipeline, events = rig(clock, server, hold=Hold(max_calls=3))
    trip(pipeline)
    results: list[Any] = []

    async def one() -> None:
        results.append(await call())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
        await clock.run(until=0.5)
        assert CircuitRegistry.of(pipeline).get(KEY).held == 3
        assert len(results) == 1
        assert isinstance(results[0], CircuitOpenError)
        assert results[0].report.delays == []
        await clock.run()
    assert [type(r) for r in results[1:]] == [httpx.Response] * 3
    assert len(of(events, CallHeld)) == 3


async def test_isolating_the_circuit_ends_every_hold() -> None:
    """isolate() by hand: nobody can wait for it, so every held call gives up."""
    clock = SteppedClock()
    server = Server(clock)
    call, pipeline, events = rig(clock, server, break_duration=10.0)
    trip(pipeline)
    results: list[Any] = []

    async def one() -> None:
        results.append(await call())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
        await clock.run(until=2.0)
        CircuitRegistry.of(pipeline).get(KEY).isolate()
        await clock.run()
    assert all(isinstance(r, CircuitOpenError) for r in results)
    assert all(r.report.gave_up == "circuit_open" for r in results)
    assert all(r.report.delays == [pytest.approx(2.0)] for r in results)
    assert [e.outcome for e in of(events, CallReleased)] == ["isolated"] * 3
    assert server.times == []


class ShortDeadline:
    """A test layer: requests to ``/short`` get a deadline 2 s away (on the clock)."""

    def bind(self, env: Any) -> Any:
        async def handle(request: httpx.Request, call: Any, call_next: Any) -> Any:
            if request.url.path == "/short":
                call.deadline = env.clock.now() + 2.0
            return await call_next(request, call)

        return handle


async def test_a_failed_probe_ends_the_holds_it_makes_hopeless_at_once() -> None:
    """Doubling breaks: held calls with 2 s left give up when the probe at 1 s fails
    (the next is at 3 s), not at their deadline; one with 30 s (the prober) keeps
    holding and succeeds at 3 s."""
    clock = SteppedClock()
    server = Server(clock, down_until=2.0)
    events: list[Any] = []
    pipeline = Pipeline(
        [
            Timeout(total=30.0),
            ShortDeadline(),
            Retry(budget=None, hold=Hold()),
            CircuitBreaker(consecutive_failures=5, break_duration=1.0),
        ],
        clock=clock,
        hooks=[events.append],
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=server)
    trip(pipeline)
    results: dict[str, Any] = {}

    async def one(name: str, path: str) -> None:
        try:
            response = await transport.handle_async_request(httpx.Request("GET", KEY + path))
            results[name] = response.status_code
        except ResilienceError as exc:
            results[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "long", "/long")  # held first: the circuit's prober
        await clock.run(until=0.1)
        tg.start_soon(one, "a", "/short")
        tg.start_soon(one, "b", "/short")
        await clock.run()
    for name in ("a", "b"):
        assert isinstance(results[name], CircuitOpenError)
        assert results[name].report.gave_up == "circuit_open"
        assert results[name].report.delays == [pytest.approx(0.9)]
    assert results["long"] == 200
    assert server.times == pytest.approx([1.0, 3.0])
    assert sorted(e.outcome for e in of(events, CallReleased)) == [
        "probe",
        "probe",
        "timeout",
        "timeout",
    ]


# -- cancellation ------------------------------------------------------------------------


def run_both(test: Callable[[], Awaitable[None]]) -> None:
    for backend in ("asyncio", "trio"):
        anyio.run(test, backend=backend)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    held=st.integers(1, 25),
    down=st.sampled_from([0.5, 2.5, 6.0]),
)
def test_random_cancellations_leave_no_waiter_behind(seed: int, held: int, down: float) -> None:
    """Held calls cancelled at random times (before, during and after the recovery
    and its ramp) leave the circuit's queue empty, never block the others, and
    never leave a probe slot taken: every call not cancelled succeeds."""
    rng = random.Random(seed)

    async def scenario() -> None:
        clock = SteppedClock()
        server = Server(clock, down_until=down)
        call, pipeline, _ = rig(clock, server, total=30.0)
        trip(pipeline)
        outcomes: dict[int, Any] = {}

        async def one(number: int, scope: anyio.CancelScope) -> None:
            with scope:
                outcomes[number] = await call()
                return
            outcomes[number] = "cancelled"

        scopes = [anyio.CancelScope() for _ in range(held)]
        cancel_at = {
            number: rng.uniform(0.0, down + 3.0) for number in range(held) if rng.random() < 0.5
        }
        async with anyio.create_task_group() as tg:
            for number in range(held):
                tg.start_soon(one, number, scopes[number])
            for at, number in sorted((at, number) for number, at in cancel_at.items()):
                await clock.run(until=at)
                scopes[number].cancel()
            await clock.run()
        circuit = CircuitRegistry.of(pipeline).get(KEY)
        assert circuit.held == 0
        for number in range(held):
            result = outcomes[number]
            if result == "cancelled":
                assert number in cancel_at
            elif isinstance(result, ResilienceError):
                # Only a long outage outlasts a call's five attempts (probes).
                assert result.report.gave_up == "max_attempts"
                assert down > 4.0
            else:
                assert result.status_code == 200
        # No probe slot was left taken: once the break is over, a call gets through.
        clock.advance(circuit.retry_after + down)
        result = await call()
        assert isinstance(result, httpx.Response)
        assert result.status_code == 200
        assert circuit.state is CircuitState.CLOSED

    run_both(scenario)


async def test_a_hold_shows_on_the_call_span() -> None:
    """With an OpenTelemetry SDK, the call span gets a ``resilience.hold`` event (the
    circuit's key, calls held) and a ``resilience.hold.release`` event (seconds
    held, how it ended)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = VirtualClock()
    pipeline = Pipeline(
        [Retry(hold=Hold()), CircuitBreaker(consecutive_failures=1, break_duration=1.0)],
        clock=clock,
        tracer_provider=provider,
    )
    trip(pipeline, failures=1)
    response = await ResilientTransport(pipeline, inner=Server(clock)).handle_async_request(
        httpx.Request("GET", KEY + "/x")
    )
    assert response.status_code == 200
    provider.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "resilience.call"]
    events = {event.name: dict(event.attributes or {}) for event in span.events}
    assert events["resilience.hold"] == {"resilience.hold.key": KEY, "resilience.hold.count": 1}
    release = events["resilience.hold.release"]
    assert release["resilience.hold.outcome"] == "probe"
    assert release["resilience.hold.waited"] == pytest.approx(1.0)
