"""The report's delays say what was waited (issue 14): a wait that a deadline (or any
cancellation) cuts short is recorded as the time that passed, not the time planned,
for a backoff sleep as for a hold."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    ExponentialBackoff,
    Hold,
    Pipeline,
    ResilientTransport,
    Retry,
    Verdict,
)
from resilience.errors import ResilienceError
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio


class CuttingClock(VirtualClock):
    """A VirtualClock on which a sleep longer than ``after`` seconds lasts ``after``
    seconds, then its call's deadline strikes (the :class:`Cut` layer's scope)."""

    def __init__(self, after: float) -> None:
        super().__init__()
        self.after = after
        self.scope: anyio.CancelScope | None = None

    async def sleep(self, seconds: float) -> None:
        if seconds > self.after and self.scope is not None:
            self.sleeps.append(seconds)
            self.advance(self.after)
            self.scope.cancel()
            await anyio.lowlevel.checkpoint()
        await super().sleep(seconds)


class Cut:
    """A total timeout whose cancel scope the clock fires (as Timeout(total=...)'s
    real-time scope would): the call ends with what it had, gave_up "deadline"."""

    def __init__(self, clock: CuttingClock) -> None:
        self.clock = clock

    def bind(self, env: Any) -> Any:
        async def handle(request: httpx.Request, call: Any, call_next: Any) -> Any:
            with anyio.CancelScope() as scope:
                self.clock.scope = scope
                return await call_next(request, call)
            call.report.gave_up = "deadline"
            error = httpx.TimeoutException("cut", request=request)
            return call.classify_unfinished(request, error)

        return handle


async def test_a_backoff_sleep_cut_short_records_the_time_that_passed() -> None:
    """A 5 s backoff cut after 2 s: delays == [2.0] (it used to say 5.0)."""
    clock = CuttingClock(after=2.0)
    inner = ScriptedTransport.of(reply(503), reply(200))
    pipeline = Pipeline(
        [
            Cut(clock),
            Retry(backoff=ExponentialBackoff(initial=5.0, jitter="none"), budget=None),
        ],
        clock=clock,
        telemetry=False,
    )
    with pytest.raises(ResilienceError) as caught:
        await ResilientTransport(pipeline, inner=inner).handle_async_request(
            httpx.Request("GET", "https://a.test/x")
        )
    report = caught.value.report
    assert report.gave_up == "deadline"
    assert report.attempts == 1
    assert report.delays == [pytest.approx(2.0)]
    assert clock.sleeps == [5.0]


async def test_a_backoff_sleep_that_ends_records_the_wait_planned() -> None:
    """An uncut sleep is recorded as planned (and as the clock slept it)."""
    clock = CuttingClock(after=10.0)
    inner = ScriptedTransport.of(reply(503), reply(200))
    pipeline = Pipeline(
        [Cut(clock), Retry(backoff=ExponentialBackoff(initial=5.0, jitter="none"))],
        clock=clock,
        telemetry=False,
    )
    response = await ResilientTransport(pipeline, inner=inner).handle_async_request(
        httpx.Request("GET", "https://a.test/x")
    )
    assert response.extensions["resilience"].delays == clock.sleeps == [5.0]


async def test_a_hold_cut_short_records_the_time_held() -> None:
    """A call held for an open circuit (break 10 s) whose deadline strikes after 3 s:
    its delays say 3 s."""
    clock = CuttingClock(after=3.0)
    inner = ScriptedTransport.of(reply(200))
    pipeline = Pipeline(
        [
            Cut(clock),
            Retry(hold=Hold()),
            CircuitBreaker(consecutive_failures=1, break_duration=10.0),
        ],
        clock=clock,
        telemetry=False,
    )
    registry = CircuitRegistry.of(pipeline)
    registry.allow("https://a.test:443")
    registry.record("https://a.test:443", Verdict(Action.RETRY))
    with pytest.raises(ResilienceError) as caught:
        await ResilientTransport(pipeline, inner=inner).handle_async_request(
            httpx.Request("GET", "https://a.test/x")
        )
    report = caught.value.report
    assert report.gave_up == "deadline"
    assert report.delays == [pytest.approx(3.0)]
    assert registry.get("https://a.test:443").held == 0
