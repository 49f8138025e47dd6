"""The retry budget at the edge of an outage (issue 14, item 4): in any one second
the retries stay within ``max(min_per_second, ratio * calls of that second)``, so
the load on a failing server never exceeds 1.2 times the offered load, the first
second of the outage included."""

from __future__ import annotations

import bisect

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry, RetryBudget
from resilience.errors import RetriesExhausted
from resilience.testing import VirtualClock, reply

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0, jitter="none")


def busiest_second(times: list[float]) -> int:
    """The most of ``times`` (sorted) inside any half-open second ``(t - 1, t]``."""
    return max(
        (i + 1 - bisect.bisect_right(times, t - 1.0) for i, t in enumerate(times)), default=0
    )


@pytest.mark.anyio
@pytest.mark.parametrize("rate", [50, 200])
async def test_an_outage_never_gets_more_than_the_ratio_in_any_second(rate: int) -> None:
    """Open-loop calls at 50 and 200 a second with the default budget: 3 s healthy,
    then every answer a 503 for 3 s. In no second does the server see more than 1.2
    times the calls of that second (the old bucket let 1.4 times through at 50/s, its
    10 banked retries and the ratio's share spent in the outage's first second), and
    once the outage is under way the retries do reach the ratio."""
    clock = VirtualClock()
    sent: list[float] = []
    failing = False

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        return reply(503 if failing else 200)

    pipeline = Pipeline([Retry(max_attempts=5, backoff=ZERO)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(answer))
    step = 1.0 / rate
    for n in range(6 * rate):
        failing = n >= 3 * rate
        try:
            response = await transport.handle_async_request(httpx.Request("GET", URL))
            await response.aclose()
        except RetriesExhausted:
            pass
        clock.advance(step)
    outage = [t for t in sent if t >= 3.0 - 1e-9]
    # A rolling second holds ``rate`` calls, or one more at its edges.
    assert busiest_second(outage) <= int(1.2 * (rate + 1))
    last_second = [t for t in outage if t >= 5.0 - 1e-9]
    assert len(last_second) >= 1.18 * rate


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 1.0, 3.0, 10.0]),
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 0.8, allow_nan=False),
            st.integers(0, 40),
            st.integers(0, 40),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_no_second_holds_more_retries_than_its_allowance(
    ratio: float, floor: float, steps: list[tuple[float, int, int]]
) -> None:
    """Whatever the pattern of calls and retries asked for, the retries granted in
    any second ``(t - 1, t]`` never exceed ``max(min_per_second, ratio * calls
    started in it)``; and asking (``allows``) agrees with taking."""
    clock = VirtualClock()
    window = RetryBudget(ratio=ratio, min_per_second=floor).build(clock)
    calls: list[float] = []
    granted: list[float] = []
    for pause, started, asked in steps:
        clock.advance(pause)
        now = clock.now()
        for _ in range(started):
            window.deposit()
            calls.append(now)
        for _ in range(asked):
            expected = window.allows(now)
            assert window.try_withdraw(now) is expected
            if expected:
                granted.append(now)
                in_window = len(calls) - bisect.bisect_right(calls, now - 1.0)
                retries = len(granted) - bisect.bisect_right(granted, now - 1.0)
                assert retries <= max(floor, ratio * in_window) + 1e-9


def test_a_lone_caller_keeps_the_floor() -> None:
    """With no traffic to speak of, the default budget still grants 10 retries in
    any second (the floor), and 10 more a second later."""
    clock = VirtualClock()
    window = RetryBudget().build(clock)
    window.deposit()
    assert [window.try_withdraw(clock.now()) for _ in range(11)] == [True] * 10 + [False]
    clock.advance(1.0)
    assert window.try_withdraw(clock.now())
