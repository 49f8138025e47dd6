"""The retry budget under bursts (issue 11): the documented share of traffic is
reachable by concurrent calls, and a bad budget fails at construction."""

from __future__ import annotations

import anyio
import httpx
import pytest

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry, RetryBudget
from resilience.errors import RetriesExhausted
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
    default budget (``ratio`` 0.2), not just the floor of 10 a second."""
    sent, reasons = await burst(n, Retry(max_attempts=2, backoff=ZERO))
    retries = sent - n
    assert 0.2 * n - 1 <= retries <= 0.2 * n + 10
    assert reasons.count("budget") == n - retries


async def test_a_small_burst_still_gets_the_ten_retries_a_fresh_budget_holds() -> None:
    """Below 50 concurrent calls the floor decides: 10 retries in the second."""
    sent, _ = await burst(20, Retry(max_attempts=2, backoff=ZERO))
    assert sent - 20 == 10


async def test_retries_of_a_burst_follow_the_ratio() -> None:
    """``ratio=0.5``: half the burst is retried once."""
    budget = RetryBudget(ratio=0.5, min_per_second=0.0)
    sent, _ = await burst(400, Retry(max_attempts=2, backoff=ZERO, budget=budget))
    assert 199 <= sent - 400 <= 210


async def test_a_long_healthy_stream_does_not_bank_retries() -> None:
    """A thousand earlier successful calls, at 50 a second, bank nothing: in the
    first second of the outage that follows (50 more calls) the retries are those of
    that second's 50 calls, 10 (``ratio`` 0.2, no floor), not 10 more besides."""
    clock = VirtualClock()
    state = {"status": 200}
    sent = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return reply(state["status"])

    budget = RetryBudget(min_per_second=0.0)
    pipeline = Pipeline(
        [Retry(max_attempts=2, backoff=ZERO, budget=budget)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(answer))
    for _ in range(1_000):
        response = await transport.handle_async_request(httpx.Request("GET", URL))
        await response.aclose()
        clock.advance(0.02)
    state["status"] = 503
    sent = 0
    for _ in range(50):
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", URL))
        clock.advance(0.02)
    assert 50 + 9 <= sent <= 50 + 10


async def test_the_reserve_is_spent_once() -> None:
    """``initial``: retries a fresh pipeline holds beyond the per-second allowance,
    spent once and never refilled."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, initial=2.0)
    pipeline = Pipeline(
        [Retry(max_attempts=2, backoff=ZERO, budget=budget)], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(lambda r: reply(503)))
    reasons = []
    for _ in range(4):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
        reasons.append(info.value.report.gave_up)
        clock.advance(3600.0)
    assert reasons == ["max_attempts", "max_attempts", "budget", "budget"]


def test_capacity_is_gone() -> None:
    """The old bucket's ``capacity`` has no meaning under the per-second rule: passing
    it fails at once rather than being ignored."""
    with pytest.raises(TypeError, match="capacity"):
        RetryBudget(capacity=5.0)  # type: ignore[call-arg]
