"""Breaks that grow with the age of the outage (``break_growth``, issue 14): a short
outage is probed about every ``break_duration``, a long one rarely; plain
``CircuitBreaker()`` keeps doubling the break on each failed probe."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import CircuitBreaker, CircuitRegistry, CircuitState, Pipeline, ResilientTransport
from resilience.errors import CircuitOpenError, ConfigurationError, ResilienceError
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio


def test_break_growth_is_off_by_default_and_validated() -> None:
    """Off by default (breaks double); a non-positive or non-finite growth fails at
    construction, naming the argument."""
    breaker = CircuitBreaker(break_duration=1.0, max_break_duration=30.0)
    assert breaker.break_growth is None
    assert [breaker.break_for(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    for bad in (0, -0.1, math.nan, math.inf, "0.1", True):
        with pytest.raises(ConfigurationError, match="break_growth"):
            CircuitBreaker(break_growth=bad)  # type: ignore[arg-type]


@given(
    growth=st.floats(0.001, 10.0),
    first=st.floats(0.01, 100.0),
    cap=st.floats(1.0, 100.0),
    age=st.floats(0.0, 1e7),
    later=st.floats(0.0, 1e7),
    reopenings=st.integers(0, 10_000),
)
def test_a_grown_break_is_the_share_of_the_age_within_its_bounds(
    growth: float, first: float, cap: float, age: float, later: float, reopenings: int
) -> None:
    """``break_for(n, age)`` is ``growth * age`` clamped to [break_duration,
    longest_break], whatever ``n``, and never shrinks as the outage ages."""
    breaker = CircuitBreaker(
        break_duration=first, max_break_duration=first * cap, break_growth=growth
    )
    brk = breaker.break_for(reopenings, age)
    assert brk == min(max(growth * age, first), first * cap)
    assert breaker.break_for(0, age) == brk
    assert breaker.break_for(reopenings, age + later) >= brk


class Backend(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.down = True
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return reply(503 if self.down else 200)


async def test_probes_come_every_second_at_first_and_rarely_later() -> None:
    """Growth 0.1, 1 s to 30 s: probed every second for the outage's first ten
    seconds, then every tenth of its age, every 30 s after five minutes; after the
    circuit closes, a new outage starts over at a second."""
    clock = VirtualClock()
    backend = Backend()
    pipeline = Pipeline(
        [
            CircuitBreaker(
                consecutive_failures=1,
                break_duration=1.0,
                max_break_duration=30.0,
                break_growth=0.1,
            )
        ],
        clock=clock,
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=backend)
    circuit = CircuitRegistry.of(pipeline).get("https://a.test:443")

    async def call() -> int | str:
        """The status the backend answered, or "rejected" (nothing sent)."""
        try:
            response = await transport.handle_async_request(httpx.Request("GET", "https://a.test/"))
        except CircuitOpenError:
            return "rejected"
        except ResilienceError as exc:
            assert exc.response is not None
            return exc.response.status_code
        return response.status_code

    assert await call() == 503  # the outage starts: opened at 0
    probes_at: list[float] = []
    breaks: list[float] = []
    while clock.now() < 600:
        breaks.append(circuit.retry_after)
        clock.advance(circuit.retry_after)
        probes_at.append(clock.now())
        assert await call() == 503
        assert await call() == "rejected"  # one probe per break
    assert backend.sent == 1 + len(probes_at)
    assert breaks[:10] == pytest.approx([1.0] * 10)
    for at, brk in zip(probes_at, breaks[1:], strict=False):
        assert brk == pytest.approx(min(max(0.1 * at, 1.0), 30.0))
    assert breaks[-1] == pytest.approx(30.0)
    # Probes in the first minute vs the last five minutes: many, then few.
    assert sum(at < 60 for at in probes_at) >= 20
    assert sum(at > 300 for at in probes_at) <= 11

    backend.down = False
    clock.advance(circuit.retry_after)
    assert await call() == 200
    assert circuit.state is CircuitState.CLOSED
    # A new outage is young again: its first breaks are a second long.
    backend.down = True
    assert await call() == 503
    for _ in range(3):
        assert circuit.retry_after == pytest.approx(1.0)
        clock.advance(circuit.retry_after)
        assert await call() == 503
