"""The retry budget under bursts (issue 11): the documented share of traffic is
reachable by concurrent calls, and a bad budget fails at construction."""

from __future__ import annotations

import anyio
import httpx
import pytest

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry, RetryBudget
from resilience.errors import ConfigurationError, RetriesExhausted
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0, jitter="none")


class Gate(httpx.AsyncBaseTransport):
    """Holds the first ``n`` requests until all ``n`` have arrived, then answers
    every request 503: ``n`` concurrent calls that all fail together."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sent = 0
        self.all_in = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent == self.n:
            self.all_in.set()
        if self.sent <= self.n:
            await self.all_in.wait()
        return reply(503)


async def burst(n: int, retry: Retry) -> tuple[int, list[str | None]]:
    """``n`` concurrent calls into an outage: requests sent, and each call's gave_up."""
    gate = Gate(n)
    pipeline = Pipeline([retry], clock=VirtualClock(), telemetry=False)
    transport = ResilientTransport(pipeline, inner=gate)
    reasons: list[str | None] = []

    async def one() -> None:
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
        reasons.append(info.value.report.gave_up)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return gate.sent, reasons


@pytest.mark.parametrize("n", [200, 1_000])
async def test_a_burst_gets_the_documented_share_of_retries(n: int) -> None:
    """N concurrent calls that all fail get about ``ratio * N`` retries from the
    default budget (``ratio`` 0.2), not just the 10 a fresh bucket starts with."""
    sent, reasons = await burst(n, Retry(max_attempts=2, backoff=ZERO))
    retries = sent - n
    assert 0.2 * n - 1 <= retries <= 0.2 * n + 10
    assert reasons.count("budget") == n - retries


async def test_a_small_burst_still_gets_the_ten_retries_a_fresh_budget_holds() -> None:
    """Below 50 concurrent calls the floor decides: 10 retries."""
    sent, _ = await burst(20, Retry(max_attempts=2, backoff=ZERO))
    assert sent - 20 == 10


async def test_retries_of_a_burst_follow_the_ratio() -> None:
    """``ratio=0.5``: half the burst is retried once."""
    budget = RetryBudget(ratio=0.5, min_per_second=0.0)
    sent, _ = await burst(400, Retry(max_attempts=2, backoff=ZERO, budget=budget))
    assert 199 <= sent - 400 <= 210


async def test_a_long_healthy_stream_does_not_bank_retries() -> None:
    """Thousands of earlier successful calls, one at a time, do not fill the
    bucket beyond its floor: the outage that follows gets 10 retries in hand,
    then the ratio."""
    state = {"status": 200}
    sent = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return reply(state["status"])

    budget = RetryBudget(min_per_second=0.0)
    pipeline = Pipeline(
        [Retry(max_attempts=2, backoff=ZERO, budget=budget)], clock=VirtualClock(), telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(answer))
    for _ in range(5_000):
        response = await transport.handle_async_request(httpx.Request("GET", URL))
        await response.aclose()
    state["status"] = 503
    sent = 0
    for _ in range(100):
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", URL))
    # 10 in hand, then 0.2 per call for the other calls.
    assert 100 + 10 + 20 - 3 <= sent <= 100 + 10 + 20 + 3


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"initial": 20.0, "capacity": 5.0}, "initial"),
        ({"initial": 5.5, "capacity": 5.0}, "capacity"),
    ],
)
def test_initial_above_capacity_is_refused(kwargs: dict[str, float], named: str) -> None:
    """``initial`` larger than ``capacity`` is not cut down silently: it fails at
    construction, naming both."""
    with pytest.raises(ConfigurationError, match=named):
        RetryBudget(**kwargs)


def test_initial_equal_to_capacity_is_accepted() -> None:
    """The edge: a bucket that starts full."""
    RetryBudget(initial=5.0, capacity=5.0)
    RetryBudget(initial=50.0)
