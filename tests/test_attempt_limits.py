"""How the engine cuts attempts: one limit per attempt, kept by the watchdog.

Timeout layers only set the call's deadline and attempt limit; the engine cuts
each attempt at the nearer of the two (a loop-wide watchdog under asyncio, an
anyio scope under trio), and the built-in layers end their own waits by the
deadline. A few tests wait for tiny real timeouts (at most 0.05 s) because a
real cut must happen; nothing sleeps for a backoff.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    Timeout,
    Token,
)
from resilience._watchdog import Watchdog
from resilience.errors import RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
TINY = 0.02
ONE = ExponentialBackoff(initial=1.0, max_delay=1.0, jitter="none")


def make(inner: httpx.AsyncBaseTransport, *layers: object) -> ResilientTransport:
    pipeline = Pipeline(list(layers), clock=VirtualClock(), telemetry=False)  # type: ignore[arg-type]
    return ResilientTransport(pipeline, inner=inner)


class Hangs(httpx.AsyncBaseTransport):
    """Every attempt first does ``before`` (if any), then never answers."""

    def __init__(self, before: object = None) -> None:
        self.before = before
        self.attempts = 0
        self.shielded_done = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.before == "shielded":
            # A cleanup an HTTP library shields: the cut must wait for it.
            with anyio.CancelScope(shield=True):
                await anyio.sleep(2 * TINY)
            self.shielded_done += 1
        await anyio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hung_attempt_is_cut_and_retried() -> None:
    """Timeout(attempt=...) cuts each hung attempt; Retry sends the next, and the
    call ends after max_attempts with the timeout as its cause."""
    inner = Hangs()
    transport = make(inner, Retry(max_attempts=3, backoff=ONE), Timeout(attempt=TINY))
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
    assert inner.attempts == 3
    assert info.value.report.attempts == 3
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    assert f"{TINY:g}s" in str(info.value.__cause__)


async def test_the_cut_waits_for_a_shielded_cleanup() -> None:
    """An attempt whose limit passes while it is inside a shielded scope is cut
    only once the shielded part is done (an anyio shield holds, also against the
    asyncio watchdog's native cancellation)."""
    inner = Hangs(before="shielded")
    transport = make(inner, Retry(max_attempts=1), Timeout(attempt=TINY / 4))
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted):
            await transport.handle_async_request(httpx.Request("GET", URL))
    assert (inner.attempts, inner.shielded_done) == (1, 1)


async def test_the_callers_own_cancellation_is_not_taken_for_a_timeout() -> None:
    """A caller's cancel scope that fires during an attempt with a (longer) attempt
    limit cancels the call: it is neither swallowed nor turned into a retry."""
    inner = Hangs()
    transport = make(inner, Retry(max_attempts=5, backoff=ONE), Timeout(attempt=10.0))
    with anyio.fail_after(5):
        with anyio.move_on_after(TINY) as scope:
            await transport.handle_async_request(httpx.Request("GET", URL))
    assert scope.cancelled_caught
    assert inner.attempts == 1


async def test_both_limits_at_once_the_callers_cancellation_wins() -> None:
    """When the caller's scope and the attempt limit fire together, the call is
    cancelled (the caller's cancellation is never swallowed with the timeout)."""
    inner = Hangs()
    transport = make(inner, Retry(max_attempts=5, backoff=ONE), Timeout(attempt=TINY))
    with anyio.fail_after(5):
        with anyio.move_on_after(TINY) as scope:
            try:
                await transport.handle_async_request(httpx.Request("GET", URL))
            except RetriesExhausted:  # pragma: no cover - the limit fired first
                pytest.fail("the caller's cancellation was turned into a retry")
    assert scope.cancelled_caught
    assert inner.attempts <= 2


async def test_a_total_timeout_cuts_the_attempt_and_blames_nobody() -> None:
    """Timeout(total) over Retry, a breaker and an attempt limit: the hung attempt
    is cut at the call's deadline, the call gives up with "deadline" and the
    breaker counts nothing (the caller's time ran out, not the backend)."""
    inner = Hangs()
    breaker = CircuitBreaker(minimum_calls=1, failure_ratio=0.0, consecutive_failures=1)
    pipeline = Pipeline(
        [Timeout(total=TINY), Retry(backoff=ONE), breaker, Timeout(attempt=10.0)],
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=inner)
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
    report = info.value.report
    assert report.gave_up == "deadline"
    assert report.attempts == 1
    assert f"total timeout of {TINY:g}s" in str(info.value.__cause__)
    from resilience import CircuitRegistry

    circuit = CircuitRegistry.of(pipeline).get("https://api.test:443")
    assert circuit.state.value == "closed"


class SlowToken:
    """A token endpoint that never answers."""

    token_endpoint = "https://api.test/oauth/token"

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        self.fetches += 1
        await anyio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_token_fetch_ends_by_the_calls_deadline() -> None:
    """A token endpoint slower than the call's total timeout: the call ends at its
    deadline ("deadline", no attempt sent), not at the fetch_timeout (30 s)."""
    provider = SlowToken()
    inner = ScriptedTransport.of(reply(200))
    transport = make(inner, Timeout(total=TINY), Retry(backoff=ONE), AuthRefresh(provider))
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
    assert info.value.report.gave_up == "deadline"
    assert provider.fetches == 1
    assert inner.requests == []
    assert "no token before the call's deadline" in str(info.value.__cause__)


def test_the_watchdog_keeps_only_attempts_in_flight() -> None:
    """Ten thousand attempts that each ended in time leave the heap about empty,
    and one timer armed at most (no entry per finished attempt piles up)."""

    class Loop:
        def __init__(self) -> None:
            self.now = 0.0
            self.timers = 0

        def time(self) -> float:
            return self.now

        def call_at(self, when: float, callback: object) -> object:
            self.timers += 1
            return self

        def cancel(self) -> None:
            pass

    class Task:
        def cancelling(self) -> int:
            return 0

    loop = Loop()
    dog = Watchdog(loop, BaseException)
    for _ in range(10_000):
        loop.now += 0.001
        dog.end(dog.start(Task(), 30.0))
    assert len(dog._heap) <= 2
    assert loop.timers == 1
