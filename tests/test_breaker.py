"""The CircuitBreaker layer: states, windows, probes, keys, registry, events."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Action,
    AuthRefresh,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    CircuitStateChanged,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Timeout,
    Verdict,
)
from resilience._breaker import _host_keys, host_key
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    ConfigurationError,
    PermanentError,
    ResilienceError,
    RetriesExhausted,
)
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

OK = Verdict(Action.ACCEPT)
FAILED = Verdict(Action.RETRY)


class Rig:
    """A pipeline on a virtual clock whose backend answers per host, as told."""

    def __init__(
        self,
        *layers: Any,
        breaker: CircuitBreaker | None = None,
        telemetry: bool = False,
    ) -> None:
        self.clock = VirtualClock()
        self.events: list[Any] = []
        # host -> a status, an exception to raise, or a callable making the response.
        self.answers: dict[str, Any] = {}
        self.inner = ScriptedTransport.of(self._answer)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.pipeline = Pipeline(
            list(layers) or [self.breaker],
            clock=self.clock,
            hooks=[self.events.append],
            telemetry=telemetry,
        )
        self.transport = ResilientTransport(self.pipeline, inner=self.inner)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers.get(request.url.host, 200)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            response: httpx.Response = answer(request)
            return response
        return reply(answer)

    @property
    def registry(self) -> CircuitRegistry:
        return CircuitRegistry.of(self.pipeline)

    def sent(self, host: str = "a.test") -> int:
        """Requests that reached the network for ``host``."""
        return sum(1 for r in self.inner.requests if r.url.host == host)

    def transitions(self, key: str | None = None) -> list[tuple[str, str]]:
        return [
            (e.old, e.new)
            for e in self.events
            if isinstance(e, CircuitStateChanged) and (key is None or e.key == key)
        ]

    async def call(self, host: str = "a.test", method: str = "GET") -> int | ResilienceError:
        """One call: the status code, or the error the pipeline raised."""
        request = httpx.Request(method, f"https://{host}/x")
        try:
            response = await self.transport.handle_async_request(request)
        except ResilienceError as exc:
            return exc
        await response.aread()
        await response.aclose()
        return response.status_code

    async def calls(self, n: int, host: str = "a.test") -> list[int | ResilienceError]:
        return [await self.call(host) for _ in range(n)]


def key_of(host: str) -> str:
    return f"https://{host}:443"


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"failure_ratio": -0.1}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"failure_ratio": math.nan}, "failure_ratio"),
        ({"failure_ratio": "half"}, "failure_ratio"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"minimum_calls": 2.5}, "minimum_calls"),
        ({"window": 0}, "window"),
        ({"window": -30.0}, "window"),
        ({"window": math.inf}, "window"),
        ({"window_calls": 0}, "window_calls"),
        ({"window_calls": 10}, "window_calls"),  # fewer than minimum_calls (20)
        ({"break_duration": 0}, "break_duration"),
        ({"break_duration": -1}, "break_duration"),
        ({"max_break_duration": 10.0}, "max_break_duration"),  # shorter than the break
        ({"max_break_duration": 0}, "max_break_duration"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_ratio": 1.01}, "slow_call_ratio"),
        ({"slow_call_ratio": -1}, "slow_call_ratio"),
        ({"key": "host"}, "key"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], named: str) -> None:
    """Bad values fail at construction with a ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError, match=named) as info:
        CircuitBreaker(**kwargs)
    assert isinstance(info.value, ValueError)


def test_configuration_defaults_and_break_lengths() -> None:
    """Defaults match the contract; breaks double per reopening, up to the cap."""
    breaker = CircuitBreaker()
    assert (breaker.failure_ratio, breaker.minimum_calls, breaker.window) == (0.5, 20, 30.0)
    assert breaker.break_duration == 30.0
    assert "key=host_key" in repr(breaker)
    assert [breaker.break_for(n) for n in range(6)] == [30, 60, 120, 240, 300, 300]
    constant = CircuitBreaker(break_duration=5, max_break_duration=5)
    assert {constant.break_for(n) for n in range(10)} == {5}
    assert CircuitBreaker(break_duration=1, max_break_duration=1e9).break_for(10_000) == 1e9
    # The edge values are accepted.
    CircuitBreaker(failure_ratio=0, slow_call_ratio=1, minimum_calls=1, window_calls=1)


# -- closed -> open ----------------------------------------------------------------


async def test_opens_at_the_failure_ratio_once_minimum_calls_were_seen() -> None:
    """Failures alone do not open it before minimum_calls; the ratio then does."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=10, failure_ratio=0.5))
    rig.answers["a.test"] = 503
    results = await rig.calls(9)
    assert all(isinstance(r, RetriesExhausted) for r in results)
    assert rig.registry.get(key_of("a.test")).state is CircuitState.CLOSED
    assert rig.registry.get(key_of("a.test")).failure_ratio == 1.0
    await rig.call()  # the tenth call: 10 failures out of 10
    assert rig.registry.get(key_of("a.test")).state is CircuitState.OPEN
    assert rig.sent() == 10
    assert rig.transitions() == [("closed", "open")]


async def test_a_low_failure_ratio_keeps_it_closed() -> None:
    """Below the ratio it stays closed, however many calls fail in all."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=4, failure_ratio=0.5))
    for _ in range(20):
        rig.answers["a.test"] = 200
        assert await rig.call() == 200
        assert await rig.call() == 200
        rig.answers["a.test"] = 503
        assert isinstance(await rig.call(), RetriesExhausted)  # 1 in 3 fail
    circuit = rig.registry.get(key_of("a.test"))
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failure_ratio == pytest.approx(1 / 3)
    assert rig.sent() == 60


async def test_ratio_counts_the_call_that_reaches_minimum_calls() -> None:
    """A success can be the call that makes the window big enough to judge."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=4, failure_ratio=0.5))
    rig.answers["a.test"] = 503
    await rig.calls(2)
    rig.answers["a.test"] = 200
    assert await rig.call() == 200
    assert rig.registry.get(key_of("a.test")).state is CircuitState.CLOSED
    assert await rig.call() == 200  # 2 failures out of 4 reach 0.5
    assert rig.registry.get(key_of("a.test")).state is CircuitState.OPEN


async def test_fail_and_refresh_auth_verdicts_never_count() -> None:
    """The caller's own mistakes (FAIL) and REFRESH_AUTH count neither way."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=2, failure_ratio=0.5))
    rig.answers["a.test"] = 400
    assert all(isinstance(r, PermanentError) for r in await rig.calls(50))
    rig.answers["a.test"] = 401
    assert all(isinstance(r, AuthenticationError) for r in await rig.calls(50))
    circuit = rig.registry.get(key_of("a.test"))
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls == 0
    rig.answers["a.test"] = 503
    await rig.calls(2)
    assert circuit.state is CircuitState.OPEN


async def test_connection_errors_count_as_failures() -> None:
    """A transport error (a RETRY verdict) is a breaker failure."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=3))
    rig.answers["a.test"] = httpx.ConnectError("refused")
    await rig.calls(3)
    assert rig.registry.get(key_of("a.test")).state is CircuitState.OPEN


async def test_a_verdict_can_opt_out_of_counting_as_a_failure() -> None:
    """``breaker_failure=False`` on a RETRY verdict keeps it out of the window."""

    class Lenient:
        vendor = "lenient"

        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            if response is not None and response.status_code == 429:
                return Verdict(Action.RETRY, breaker_failure=False)
            return Verdict(Action.ACCEPT)

    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(429))
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1)], classifier=Lenient(), clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=inner)
    for _ in range(5):
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", "https://a.test/"))
    circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls == 0


# -- open ----------------------------------------------------------------------------


async def test_open_fails_fast_without_touching_the_network() -> None:
    """An open circuit raises CircuitOpenError with key, retry_after and a problem."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=2, break_duration=30.0))
    rig.answers["a.test"] = 503
    await rig.calls(2)
    rig.clock.advance(12.5)
    error = await rig.call()
    assert isinstance(error, CircuitOpenError)
    assert not isinstance(error, httpx.HTTPStatusError)
    assert error.key == key_of("a.test")
    assert error.retry_after == pytest.approx(17.5)
    assert error.problem is not None
    assert error.problem.code == "circuit_open"
    assert error.problem.vendor == "http"
    assert error.request.url == "https://a.test/x"
    assert error.report.attempts == 0
    assert "https://a.test:443" in str(error)
    assert str(error).endswith("half-opens in 18s")  # whole seconds, rounded up
    assert error.__traceback__ is not None
    for _ in range(100):
        assert isinstance(await rig.call(), CircuitOpenError)
    assert rig.sent() == 2
    assert rig.registry.get(key_of("a.test")).retry_after == pytest.approx(17.5)


async def test_rejections_do_not_share_state_or_grow_tracebacks() -> None:
    """Each rejection is a fresh error; its traceback does not grow call after call."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1, break_duration=1e6))
    rig.answers["a.test"] = 503
    await rig.call()
    first, second = await rig.call(), await rig.call()
    assert isinstance(first, CircuitOpenError)
    assert isinstance(second, CircuitOpenError)
    assert first is not second

    def depth(error: BaseException) -> int:
        tb, n = error.__traceback__, 0
        while tb is not None:
            tb, n = tb.tb_next, n + 1
        return n

    for _ in range(50):
        later = await rig.call()
    assert isinstance(later, CircuitOpenError)
    assert depth(later) == depth(first)


async def test_memory_does_not_grow_with_rejected_calls() -> None:
    """Thousands of rejected calls leave nothing behind."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1, break_duration=1e6))
    rig.answers["a.test"] = 503
    await rig.call()
    request = httpx.Request("GET", "https://a.test/x")

    async def reject(n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(CircuitOpenError):
                await rig.transport.handle_async_request(request)

    await reject(200)  # warm up caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await reject(5_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 4_096
    assert rig.sent() == 1


# -- half-open -------------------------------------------------------------------


async def test_half_opens_after_the_break_and_a_successful_probe_closes() -> None:
    """After break_duration one probe goes; its success closes the circuit."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=2, break_duration=30.0))
    rig.answers["a.test"] = 503
    await rig.calls(2)
    circuit = rig.registry.get(key_of("a.test"))
    rig.clock.advance(29.9)
    assert isinstance(await rig.call(), CircuitOpenError)
    rig.clock.advance(0.1)
    assert circuit.state is CircuitState.HALF_OPEN
    assert circuit.retry_after == 0.0
    rig.answers["a.test"] = 200
    assert await rig.call() == 200
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls == 0  # closing starts a fresh window
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert rig.sent() == 3


async def test_a_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    """Each consecutive reopening doubles the break, up to max_break_duration."""
    breaker = CircuitBreaker(minimum_calls=1, break_duration=10.0, max_break_duration=35.0)
    rig = Rig(breaker=breaker)
    rig.answers["a.test"] = 503
    await rig.call()
    circuit = rig.registry.get(key_of("a.test"))
    breaks = []
    for _ in range(4):
        breaks.append(circuit.retry_after)
        rig.clock.advance(circuit.retry_after)
        assert isinstance(await rig.call(), RetriesExhausted)  # the probe fails
        assert circuit.state is CircuitState.OPEN
    breaks.append(circuit.retry_after)
    assert breaks == [10.0, 20.0, 35.0, 35.0, 35.0]
    rig.clock.advance(35.0)
    rig.answers["a.test"] = 200
    assert await rig.call() == 200
    assert circuit.state is CircuitState.CLOSED
    # Closed again: the next opening starts from the base break.
    rig.answers["a.test"] = 503
    await rig.call()
    assert circuit.retry_after == 10.0


async def test_a_slow_probe_reopens() -> None:
    """With slow-call detection, a probe that succeeds slowly counts as failed."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1, slow_call_duration=1.0))
    rig.answers["a.test"] = 503
    await rig.call()
    rig.clock.advance(30.0)

    def slow(request: httpx.Request) -> httpx.Response:
        rig.clock.advance(5.0)
        return reply(200)

    rig.answers["a.test"] = slow
    assert await rig.call() == 200
    assert rig.registry.get(key_of("a.test")).state is CircuitState.OPEN


class Gate(httpx.AsyncBaseTransport):
    """A backend that holds every request until released (a probe in flight)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests = 0
        self.arrived = anyio.Event()
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.arrived.set()
        await self.release.wait()
        return reply(self.status)


async def trip(pipeline: Pipeline, host: str = "a.test") -> None:
    """Open the circuit of ``host`` with failures recorded through the registry."""
    registry = CircuitRegistry.of(pipeline)
    for _ in range(registry.config.minimum_calls):
        assert registry.allow(key_of(host)) is None
        registry.record(key_of(host), FAILED)
    assert registry.get(key_of(host)).state is CircuitState.OPEN


@pytest.mark.parametrize("probes", [1, 3])
async def test_half_open_lets_exactly_half_open_calls_through_of_a_thousand(probes: int) -> None:
    """A thousand concurrent callers: exactly ``half_open_calls`` reach the network."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1, half_open_calls=probes)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=gate)
    await trip(pipeline)
    clock.advance(30.0)
    results: list[Any] = []

    async def caller() -> None:
        try:
            response = await transport.handle_async_request(
                httpx.Request("GET", "https://a.test/x")
            )
        except CircuitOpenError as exc:
            results.append(exc)
        else:
            await response.aclose()
            results.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(caller)
        while len(results) < 1000 - probes:
            await anyio.lowlevel.checkpoint()
        assert gate.requests == probes
        circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
        assert circuit.state is CircuitState.HALF_OPEN
        gate.release.set()
    assert gate.requests == probes
    assert results.count(200) == probes
    rejected = [r for r in results if isinstance(r, CircuitOpenError)]
    assert len(rejected) == 1000 - probes
    assert all(r.retry_after == 0.0 for r in rejected)
    assert circuit.state is CircuitState.CLOSED


async def test_several_probes_must_all_succeed_to_close() -> None:
    """With half_open_calls=3, two successes are not enough; a failure reopens."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1, half_open_calls=3))
    await trip(rig.pipeline)
    rig.clock.advance(30.0)
    circuit = rig.registry.get(key_of("a.test"))
    assert await rig.call() == 200
    assert await rig.call() == 200
    assert circuit.state is CircuitState.HALF_OPEN
    rig.answers["a.test"] = 503
    assert isinstance(await rig.call(), RetriesExhausted)
    assert circuit.state is CircuitState.OPEN
    assert circuit.retry_after == 60.0
    rig.clock.advance(60.0)
    rig.answers["a.test"] = 200
    assert await rig.calls(3) == [200, 200, 200]
    assert circuit.state is CircuitState.CLOSED


async def test_a_neutral_probe_frees_its_slot_without_deciding() -> None:
    """A probe answered with FAIL (400) neither closes nor reopens; the next may go."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1))
    await trip(rig.pipeline)
    rig.clock.advance(30.0)
    rig.answers["a.test"] = 400
    assert isinstance(await rig.call(), PermanentError)
    circuit = rig.registry.get(key_of("a.test"))
    assert circuit.state is CircuitState.HALF_OPEN
    rig.answers["a.test"] = 200
    assert await rig.call() == 200
    assert circuit.state is CircuitState.CLOSED


async def test_a_cancelled_probe_frees_its_slot() -> None:
    """Cancelling the only probe lets the next caller probe; nothing was counted."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    await trip(pipeline)
    clock.advance(30.0)
    request = httpx.Request("GET", "https://a.test/x")
    async with anyio.create_task_group() as tg:
        tg.start_soon(transport.handle_async_request, request)
        await gate.arrived.wait()
        with pytest.raises(CircuitOpenError):
            await transport.handle_async_request(request)  # the slot is taken
        tg.cancel_scope.cancel()
    circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
    assert circuit.state is CircuitState.HALF_OPEN
    gate.release.set()
    response = await transport.handle_async_request(request)
    await response.aclose()
    assert gate.requests == 2
    assert circuit.state is CircuitState.CLOSED


async def test_a_cancelled_call_counts_nothing() -> None:
    """A closed-state call cancelled in flight leaves the window untouched."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    with anyio.move_on_after(0.01):
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/x"))
    circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
    assert gate.requests == 1
    assert circuit.calls == 0
    assert circuit.state is CircuitState.CLOSED


async def test_a_total_timeout_above_the_breaker_frees_the_probe() -> None:
    """Timeout(total=...) cancelling a probe in flight frees the slot too."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline(
        [Timeout(total=0.01), CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=gate)
    await trip(pipeline)
    clock.advance(30.0)
    with pytest.raises(RetriesExhausted):
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/x"))
    circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
    assert circuit.state is CircuitState.HALF_OPEN
    assert CircuitRegistry.of(pipeline).allow(key_of("a.test")) is None  # the slot is free


async def test_an_attempt_timeout_below_the_breaker_is_a_failure() -> None:
    """Timeout(attempt=...) below the breaker turns a hung probe into a failure."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1), Timeout(attempt=0.01)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=gate)
    with pytest.raises(RetriesExhausted):
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/x"))
    assert CircuitRegistry.of(pipeline).get(key_of("a.test")).state is CircuitState.OPEN


# -- windows -----------------------------------------------------------------------


async def test_time_window_forgets_old_failures() -> None:
    """Failures older than the window no longer count toward the ratio."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=10, window=30.0))
    rig.answers["a.test"] = 503
    await rig.calls(9)
    circuit = rig.registry.get(key_of("a.test"))
    assert circuit.calls == 9
    rig.clock.advance(31.0)
    assert circuit.calls == 0
    assert circuit.failure_ratio == 0.0
    await rig.calls(9)
    assert circuit.state is CircuitState.CLOSED
    await rig.call()
    assert circuit.state is CircuitState.OPEN


async def test_time_window_slides_in_buckets() -> None:
    """Calls leave the window bucket by bucket (a tenth of the window each)."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=100, window=10.0))
    circuit = rig.registry.get(key_of("a.test"))
    for second in range(10):
        await rig.calls(second + 1)  # 1 call in second 0, 2 in second 1, ...
        rig.clock.advance(1.0)
    assert circuit.calls == sum(range(2, 11))  # second 0 has left
    rig.clock.advance(4.0)
    assert circuit.calls == sum(range(6, 11))
    rig.clock.advance(5.0)
    assert circuit.calls == 0


async def test_count_window_holds_the_last_calls() -> None:
    """With window_calls, only the last N calls count."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=5, window_calls=10, failure_ratio=0.5))
    circuit = rig.registry.get(key_of("a.test"))
    rig.answers["a.test"] = 503
    await rig.calls(2)
    rig.answers["a.test"] = 200
    await rig.calls(20)
    assert circuit.calls == 10
    assert circuit.failure_ratio == 0.0
    rig.answers["a.test"] = 503
    await rig.calls(4)
    assert circuit.failure_ratio == 0.4
    assert circuit.state is CircuitState.CLOSED
    await rig.call()
    assert circuit.state is CircuitState.OPEN


async def test_count_window_empties_after_a_pause_longer_than_window() -> None:
    """A count window is not kept forever: a pause longer than ``window`` empties it."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=5, window_calls=10, window=60.0))
    circuit = rig.registry.get(key_of("a.test"))
    rig.answers["a.test"] = 503
    await rig.calls(4)
    rig.clock.advance(59.0)
    assert circuit.calls == 4
    rig.clock.advance(2.0)
    assert circuit.calls == 0
    await rig.calls(4)
    assert circuit.state is CircuitState.CLOSED


async def test_slow_calls_open_the_circuit_at_their_own_ratio() -> None:
    """Calls slower than slow_call_duration count toward slow_call_ratio."""
    rig = Rig(
        breaker=CircuitBreaker(
            minimum_calls=4, window=100.0, slow_call_duration=2.0, slow_call_ratio=0.5
        )
    )
    circuit = rig.registry.get(key_of("a.test"))

    def taking(seconds: float) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            rig.clock.advance(seconds)
            return reply(200)

        return answer

    rig.answers["a.test"] = taking(2.0)  # exactly the limit: not slow
    await rig.calls(4)
    assert circuit.slow_call_ratio == 0.0
    rig.answers["a.test"] = taking(2.5)
    await rig.calls(3)
    assert circuit.slow_call_ratio == pytest.approx(3 / 7)
    assert circuit.state is CircuitState.CLOSED
    assert await rig.call() == 200  # slow calls still succeed...
    assert circuit.state is CircuitState.OPEN  # ...but 4 of 8 were slow
    assert circuit.failure_ratio == 0.0
    assert rig.sent() == 8


async def test_clock_jumps_by_hours_leave_the_window_right() -> None:
    """Hours-long jumps empty the window and end breaks; counting resumes cleanly."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=4))
    circuit = rig.registry.get(key_of("a.test"))
    rig.answers["a.test"] = 503
    await rig.calls(3)
    rig.clock.advance(5 * 3600.0)
    assert circuit.calls == 0
    await rig.calls(3)
    assert circuit.state is CircuitState.CLOSED
    await rig.call()
    assert circuit.state is CircuitState.OPEN
    rig.clock.advance(100 * 3600.0)
    assert circuit.state is CircuitState.HALF_OPEN
    rig.answers["a.test"] = 200
    assert await rig.call() == 200
    rig.clock.advance(3600.0 + 0.5)
    await rig.calls(7)
    rig.clock.advance(2.0)
    await rig.calls(2)
    assert circuit.calls == 9
    assert circuit.state is CircuitState.CLOSED


# -- keys ------------------------------------------------------------------------


async def test_keys_are_independent() -> None:
    """One host's open circuit does not stop calls to another host."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=2))
    rig.answers["bad.test"] = 503
    await rig.calls(2, host="bad.test")
    assert isinstance(await rig.call("bad.test"), CircuitOpenError)
    assert await rig.call("good.test") == 200
    assert rig.registry.get(key_of("good.test")).state is CircuitState.CLOSED
    assert rig.transitions(key_of("bad.test")) == [("closed", "open")]
    assert rig.transitions(key_of("good.test")) == []


async def test_default_key_is_scheme_host_and_port() -> None:
    """Ports are spelled out; a different port or scheme is another circuit."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1))
    for url in (
        "https://a.test/x",
        "https://a.test:443/y",
        "http://a.test/",
        "https://a.test:8443/",
    ):
        response = await rig.transport.handle_async_request(httpx.Request("GET", url))
        await response.aclose()
    assert sorted(rig.registry) == [
        "http://a.test:80",
        "https://a.test:443",
        "https://a.test:8443",
    ]
    assert rig.registry.get("https://a.test:443").calls == 2


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://API.example.com/v1/x?q=1", "https://api.example.com:443"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("http://127.0.0.1/", "http://127.0.0.1:80"),
    ],
)
async def test_default_key_spelling(url: str, key: str) -> None:
    """Hosts are lowercased, IPv6 addresses bracketed, default ports spelled out."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1))
    response = await rig.transport.handle_async_request(httpx.Request("GET", url))
    await response.aclose()
    assert list(rig.registry) == [key]


_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _label() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)


_hosts = st.one_of(
    st.lists(_label(), min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.sampled_from(["bücher.example", "xn--bcher-kva.example", "MÜNCHEN.test"]),
)


@given(
    scheme=st.sampled_from(sorted(_PORTS)),
    host=_hosts,
    port=st.none() | st.integers(min_value=1, max_value=65535),
    path=st.sampled_from(["/", "/v1/x?q=1", ""]),
)
def test_default_key_is_the_same_on_every_lookup(
    scheme: str, host: str, port: int | None, path: str
) -> None:
    """The default key (looked up in a cache after the first time) is always
    ``scheme://host:port`` as httpx reads the URL, the port spelled out."""
    url = httpx.URL(f"{scheme}://{host}" + ("" if port is None else f":{port}") + path)
    spelled = url.host if ":" not in url.host else f"[{url.host}]"
    expected = f"{url.scheme}://{spelled}:{url.port or _PORTS[scheme]}"
    for _ in range(2):
        assert host_key(httpx.Request("GET", url)) == expected


def test_default_keys_kept_for_speed_stay_bounded() -> None:
    """Keys of 5,000 hosts leave at most 1,024 of them cached."""
    keys = {host_key(httpx.Request("GET", f"https://h{i}.test/")) for i in range(5_000)}
    assert len(keys) == 5_000
    assert 0 < len(_host_keys) <= 1_024


async def test_custom_key_and_bypass() -> None:
    """``key=`` picks the circuit per request; returning None bypasses the breaker."""

    def by_path(request: httpx.Request) -> str | None:
        first = request.url.path.strip("/").split("/")[0]
        return None if first == "health" else f"api:{first}"

    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1, key=by_path)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=inner)
    with pytest.raises(RetriesExhausted):
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/orders/1"))
    with pytest.raises(CircuitOpenError) as info:
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/orders/2"))
    assert info.value.key == "api:orders"
    with pytest.raises(RetriesExhausted):
        await transport.handle_async_request(httpx.Request("GET", "https://a.test/users/1"))
    for _ in range(3):
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", "https://a.test/health"))
    assert len(inner.requests) == 5
    assert sorted(CircuitRegistry.of(pipeline)) == ["api:orders", "api:users"]


# -- registry --------------------------------------------------------------------


async def test_registry_forgets_idle_closed_circuits() -> None:
    """100,000 keys used once: the registry keeps only recent or unhealthy ones;
    an opened circuit goes too once its break and quiet period are over."""
    clock = VirtualClock()
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    registry = CircuitRegistry.of(pipeline)
    registry.allow("sick")
    registry.record("sick", FAILED)
    registry.get("held").isolate()
    largest = 0
    for i in range(100_000):
        key = f"https://host{i}.test:443"
        assert registry.allow(key) is None
        registry.record(key, OK)
        largest = max(largest, len(registry))
        clock.advance(0.01)  # 3,000 keys per 30-second window
    assert largest < 3_000 + 1_000
    assert "sick" not in registry  # opened at 0 s; break and quiet over by 330 s
    assert "held" in registry
    assert registry.get("held").state is CircuitState.ISOLATED
    assert "https://host99999.test:443" in registry
    assert "https://host0.test:443" not in registry


async def test_a_forgotten_circuit_object_still_controls_its_key() -> None:
    """A circuit the registry forgot acts on the registry's circuit for its key."""
    clock = VirtualClock()
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    registry = CircuitRegistry.of(pipeline)
    held = registry.get("k")
    registry.allow("k")
    registry.record("k", OK)
    clock.advance(60.0)
    for i in range(10):
        registry.get(f"other{i}")
    assert "k" not in registry
    held.isolate()
    assert registry.allow("k") == math.inf
    assert registry.get("k") is held
    registry.get("k").reset()
    # Forgotten again, then recreated by a call: the old object reads the new one.
    clock.advance(60.0)
    for i in range(10):
        registry.get(f"again{i}")
    assert "k" not in registry
    registry.allow("k")
    registry.record("k", FAILED)
    assert held.state is CircuitState.OPEN
    assert registry.get("k") is not held


async def test_a_call_outliving_its_forgotten_circuit_is_still_counted() -> None:
    """A call in flight while its idle circuit is forgotten counts in the new one."""
    clock = VirtualClock()
    gate = Gate(status=503)
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    registry = CircuitRegistry.of(pipeline)

    async def slow_call() -> None:
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", "https://a.test/"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_call)
        await gate.arrived.wait()
        clock.advance(60.0)
        for i in range(10):
            registry.get(f"other{i}")
        assert key_of("a.test") not in registry
        gate.release.set()
    assert registry.get(key_of("a.test")).state is CircuitState.OPEN


async def test_a_call_that_outlived_a_break_is_not_taken_for_a_probe() -> None:
    """A call admitted while closed, ending during half-open, frees no probe slot."""
    clock = VirtualClock()
    gate = Gate(status=200)
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    registry = CircuitRegistry.of(pipeline)
    key = key_of("a.test")

    async def slow_call() -> None:
        response = await transport.handle_async_request(httpx.Request("GET", "https://a.test/"))
        await response.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_call)
        await gate.arrived.wait()
        await trip(pipeline)  # other callers fail meanwhile
        clock.advance(30.0)
        assert registry.allow(key) is None  # someone else's probe takes the slot
        gate.release.set()
    # The old call's success neither closed the circuit nor freed the probe's slot.
    assert registry.get(key).state is CircuitState.HALF_OPEN
    assert registry.allow(key) == 0.0
    registry.record(key, OK)
    assert registry.get(key).state is CircuitState.CLOSED


async def test_registry_key_api_for_other_layers() -> None:
    """allow / record / release: what the splitter uses for per-part circuits."""
    clock = VirtualClock()
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=2, slow_call_duration=1.0, slow_call_ratio=1.0)],
        clock=clock,
        telemetry=False,
    )
    registry = pipeline.env.breakers[0]
    assert registry is CircuitRegistry.of(pipeline)
    assert registry.allow("derapi:solis") is None
    registry.record("derapi:solis", FAILED)
    registry.record("derapi:solis", Verdict(Action.SPLIT))
    assert registry.get("derapi:solis").failure_ratio == 0.5
    assert registry.get("derapi:solis").state is CircuitState.OPEN
    assert registry.allow("derapi:solis") == 30.0
    clock.advance(30.0)
    assert registry.allow("derapi:solis") is None  # the probe
    assert registry.allow("derapi:solis") == 0.0  # no slot left
    registry.release("derapi:solis")  # e.g. cancelled
    assert registry.allow("derapi:solis") is None
    registry.record("derapi:solis", OK, duration=0.5)
    assert registry.get("derapi:solis").state is CircuitState.CLOSED
    # Slow calls through the key API too.
    registry.record("derapi:enphase", OK, duration=3.0)
    registry.record("derapi:enphase", OK, duration=3.0)
    assert registry.get("derapi:enphase").state is CircuitState.OPEN
    registry.release("never-seen")  # harmless
    assert "never-seen" not in registry
    # solis closed with a fresh (empty) window: forgotten when enphase was created.
    assert list(registry) == ["derapi:enphase"]
    assert len(registry) == 1
    assert repr(registry).startswith("CircuitRegistry(1 circuit(s), CircuitBreaker(")


async def test_registries_of_several_breaker_layers() -> None:
    """Each layer has its own registry; the shared key is the innermost one's."""
    outer = CircuitBreaker(minimum_calls=5, key=lambda request: "everything")
    inner = CircuitBreaker(minimum_calls=1)
    pipeline = Pipeline([outer, inner], clock=VirtualClock(), telemetry=False)
    assert CircuitRegistry.of(pipeline) is CircuitRegistry.of(pipeline, inner)
    assert CircuitRegistry.of(pipeline, outer) is not CircuitRegistry.of(pipeline, inner)
    assert CircuitRegistry.of(pipeline, outer).config is outer
    with pytest.raises(LookupError):
        CircuitRegistry.of(pipeline, CircuitBreaker())
    with pytest.raises(LookupError):
        CircuitRegistry.of(Pipeline([], telemetry=False))


async def test_an_inner_layers_error_is_not_counted_by_the_outer_breaker() -> None:
    """The outer breaker ignores outcomes whose error an inner layer made."""
    outer = CircuitBreaker(minimum_calls=1, key=lambda request: "outer")
    inner = CircuitBreaker(minimum_calls=1)
    rig = Rig(outer, inner, breaker=inner)
    rig.answers["a.test"] = 503
    await rig.call()
    for _ in range(5):
        assert isinstance(await rig.call(), CircuitOpenError)
    outer_circuit = CircuitRegistry.of(rig.pipeline, outer).get("outer")
    assert outer_circuit.state is CircuitState.OPEN  # from the one real failure
    assert outer_circuit.calls == 1


async def test_auth_failure_below_the_breaker_is_not_counted() -> None:
    """An AuthenticationError made by AuthRefresh below the breaker counts nothing."""
    rig = Rig(
        CircuitBreaker(minimum_calls=1),
        AuthRefresh(StaticToken("secret-token")),
        breaker=CircuitBreaker(minimum_calls=1),
    )
    rig.answers["a.test"] = 401
    for _ in range(3):
        assert isinstance(await rig.call(), AuthenticationError)
    circuit = rig.registry.get(key_of("a.test"))
    assert circuit.state is CircuitState.CLOSED
    assert circuit.calls == 0


# -- manual control and events -----------------------------------------------------


async def test_isolate_holds_open_and_reset_closes() -> None:
    """isolate() rejects every call until reset(); both are events."""
    rig = Rig(breaker=CircuitBreaker())
    circuit = rig.registry.get(key_of("a.test"))
    circuit.isolate()
    circuit.isolate()  # idempotent
    assert circuit.state is CircuitState.ISOLATED
    assert circuit.state == "isolated"
    assert circuit.retry_after == math.inf
    rig.clock.advance(10 * 3600.0)
    error = await rig.call()
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after == math.inf
    assert "isolated" in str(error)
    assert rig.sent() == 0
    circuit.reset()
    assert circuit.state is CircuitState.CLOSED
    assert await rig.call() == 200
    assert rig.transitions() == [("closed", "isolated"), ("isolated", "closed")]
    assert repr(circuit) == "Circuit('https://a.test:443', state='closed')"


async def test_reset_clears_the_window_and_the_break_history() -> None:
    """reset() of an open circuit closes it with an empty window and base break."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=3))
    rig.answers["a.test"] = 503
    await rig.calls(3)
    circuit = rig.registry.get(key_of("a.test"))
    rig.clock.advance(30.0)
    await rig.call()  # a failed probe: the next break is 60 s
    assert circuit.retry_after == 60.0
    circuit.reset()
    assert circuit.calls == 0
    await rig.calls(2)
    assert circuit.state is CircuitState.CLOSED
    await rig.call()
    assert circuit.retry_after == 30.0


async def test_isolating_during_a_probe_ignores_the_probe() -> None:
    """A probe admitted before isolate() cannot close the isolated circuit."""
    clock = VirtualClock()
    gate = Gate()
    pipeline = Pipeline([CircuitBreaker(minimum_calls=1)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    await trip(pipeline)
    clock.advance(30.0)
    circuit = CircuitRegistry.of(pipeline).get(key_of("a.test"))
    async with anyio.create_task_group() as tg:

        async def probe() -> None:
            response = await transport.handle_async_request(httpx.Request("GET", "https://a.test"))
            await response.aclose()

        tg.start_soon(probe)
        await gate.arrived.wait()
        circuit.isolate()
        gate.release.set()
    assert circuit.state is CircuitState.ISOLATED


async def test_events_reach_hooks_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Each transition is a CircuitStateChanged event and an INFO log line."""
    caplog.set_level(logging.INFO, logger="resilience")
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1))
    rig.answers["a.test"] = 503
    await rig.call()
    rig.clock.advance(30.0)
    await rig.call()
    changes = [e for e in rig.events if isinstance(e, CircuitStateChanged)]
    assert changes == [
        CircuitStateChanged(key="https://a.test:443", old="closed", new="open"),
        CircuitStateChanged(key="https://a.test:443", old="open", new="half_open"),
        CircuitStateChanged(key="https://a.test:443", old="half_open", new="open"),
    ]
    lines = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert lines == [
        "resilience circuit breaker https://a.test:443: closed -> open",
        "resilience circuit breaker https://a.test:443: open -> half_open",
        "resilience circuit breaker https://a.test:443: half_open -> open",
    ]


async def test_works_with_telemetry_on() -> None:
    """The default (telemetry on, no SDK) pipeline opens, rejects and emits events."""
    rig = Rig(breaker=CircuitBreaker(minimum_calls=1), telemetry=True)
    rig.answers["a.test"] = 503
    await rig.call()
    assert isinstance(await rig.call(), CircuitOpenError)
    assert rig.transitions() == [("closed", "open")]


# -- with Retry ------------------------------------------------------------------


def retry_rig(*, wait: bool, total: float | None = None) -> Rig:
    layers: list[Any] = []
    if total is not None:
        layers.append(Timeout(total=total))
    breaker = CircuitBreaker(minimum_calls=1, break_duration=30.0)
    layers += [
        Retry(
            max_attempts=4,
            backoff=ExponentialBackoff(initial=1.0, jitter="none"),
            wait_for_half_open=wait,
        ),
        breaker,
    ]
    return Rig(*layers, breaker=breaker)


async def test_retry_does_not_retry_into_an_open_breaker() -> None:
    """When the failed attempt opened the breaker, Retry stops at once: no backoff
    sleep that would only end in a rejection; the caller gets the real failure."""
    rig = retry_rig(wait=False)
    rig.answers["a.test"] = 503
    error = await rig.call()
    assert isinstance(error, RetriesExhausted)
    assert error.problem is not None
    assert error.problem.status == 503
    assert error.report.gave_up == "circuit_open"
    assert rig.sent() == 1
    assert rig.clock.sleeps == []
    assert error.report.attempts == 1
    assert [v.action for v in error.report.verdicts] == [Action.RETRY]


async def test_an_open_breaker_met_on_the_first_attempt_is_final() -> None:
    """A call that meets an already open breaker fails fast with CircuitOpenError,
    and Retry does not retry it."""
    rig = retry_rig(wait=False)
    rig.answers["a.test"] = 503
    await rig.call()
    error = await rig.call()
    assert isinstance(error, CircuitOpenError)
    assert error.report.attempts == 0
    assert rig.sent() == 1
    assert rig.clock.sleeps == []


async def test_retry_waits_for_half_open_when_asked_and_it_fits() -> None:
    """With wait_for_half_open, Retry sleeps until the breaker half-opens, then probes."""
    rig = retry_rig(wait=True, total=60.0)

    def recovering(request: httpx.Request) -> httpx.Response:
        return reply(503 if rig.sent() == 1 else 200)

    rig.answers["a.test"] = recovering
    assert await rig.call() == 200
    assert rig.clock.sleeps == [30.0]  # straight to the half-open, no backoff before it
    assert rig.sent() == 2
    assert rig.transitions() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_retry_gives_up_when_half_open_comes_after_the_deadline() -> None:
    """If the breaker half-opens only after the deadline, Retry gives up at once."""
    rig = retry_rig(wait=True, total=20.0)
    rig.answers["a.test"] = 503
    error = await rig.call()
    assert isinstance(error, RetriesExhausted)
    assert error.report.gave_up == "circuit_open"
    assert rig.clock.sleeps == []
    assert rig.sent() == 1


async def test_retry_never_waits_for_an_isolated_breaker() -> None:
    """An isolated circuit never half-opens: waiting for it is pointless."""
    rig = retry_rig(wait=True)
    CircuitRegistry.of(rig.pipeline).get(key_of("a.test")).isolate()
    error = await rig.call()
    assert isinstance(error, CircuitOpenError)
    assert rig.clock.sleeps == []
    assert rig.sent() == 0
