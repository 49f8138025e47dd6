"""The Timeout layer: per-attempt limits, the total cancel scope, and the deadline.

Real cancel scopes must fire here, so a few tests wait for tiny real timeouts
(0.05 s); nothing sleeps for a backoff.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from resilience import (
    Action,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    Timeout,
    Verdict,
)
from resilience._classifier import HttpClassifier
from resilience.errors import ConfigurationError, RetriesExhausted
from resilience.testing import ScriptedTransport, StallingStream, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
TINY = 0.05


class HANG:
    """A script step: the attempt never answers."""


class HangingTransport(ScriptedTransport):
    """A ScriptedTransport whose ``HANG`` steps await an event that never fires."""

    hung: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(len(self.requests), len(self.script) - 1)
        if self.script[index] is HANG:
            self.requests.append(request)
            self.hung += 1
            await anyio.Event().wait()
        return await super().handle_async_request(request)


class CountingClassifier(HttpClassifier):
    """The generic classifier, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        self.calls += 1
        return super().classify(request, response, error)


def make(
    inner: httpx.AsyncBaseTransport,
    *layers: object,
    clock: object | None = None,
    classifier: object | None = None,
) -> ResilientTransport:
    """A ResilientTransport over ``layers`` with a virtual clock by default."""
    pipeline = Pipeline(
        list(layers),
        clock=clock or VirtualClock(),  # type: ignore[arg-type]
        classifier=classifier or "http",  # type: ignore[arg-type]
        telemetry=False,
    )
    return ResilientTransport(pipeline, inner=inner)


async def test_hung_attempt_is_classified_retry_and_retried() -> None:
    """Timeout(attempt=0.05) below Retry: a hung attempt times out, is classified as
    RETRY (a TimeoutException), and the retry succeeds."""
    inner = HangingTransport([HANG, reply(200, json={"ok": True})])
    counting = CountingClassifier()
    transport = make(inner, Retry(backoff=ONE), Timeout(attempt=TINY), classifier=counting)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.json() == {"ok": True}
    report = r.extensions["resilience"]
    assert report.attempts == 2
    assert report.verdicts[0].action is Action.RETRY
    assert report.verdicts[0].reason == "TimeoutException"
    assert counting.calls == 2
    assert inner.hung == 1
    assert inner.unclosed() == []


async def test_attempt_timeout_applies_wherever_the_layer_sits() -> None:
    """Timeout(attempt=...) above Retry still bounds each attempt below it."""
    inner = HangingTransport([HANG, HANG, reply(200)])
    transport = make(inner, Timeout(attempt=TINY), Retry(max_attempts=3, backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.extensions["resilience"].attempts == 3


async def test_tighter_attempt_timeout_wins() -> None:
    """With Timeout(attempt=100) outside Timeout(attempt=0.05), the tighter one holds."""
    inner = HangingTransport([HANG, reply(200)])
    transport = make(inner, Timeout(attempt=100.0), Retry(backoff=ONE), Timeout(attempt=TINY))
    with anyio.fail_after(5):
        r = await transport.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert r.extensions["resilience"].attempts == 2


async def test_every_attempt_hangs_raises_retries_exhausted() -> None:
    """All attempts hang: RetriesExhausted, no response, cause is the timeout."""
    inner = HangingTransport([HANG])
    transport = make(inner, Retry(max_attempts=2, backoff=ONE), Timeout(attempt=TINY))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert info.value.response is None
    assert not isinstance(info.value, httpx.HTTPStatusError)
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    assert info.value.report.attempts == 2
    assert info.value.report.gave_up == "max_attempts"


async def test_body_that_stalls_is_cut_by_the_attempt_timeout_and_closed() -> None:
    """An error body that stalls midway: the attempt times out, the response is
    closed, the attempt is classified once (RETRY) and retried."""
    stalled = httpx.Response(503, stream=StallingStream(b"partial"))
    steps = iter([stalled, reply(200)])
    inner = ScriptedTransport.of(lambda request: next(steps))
    counting = CountingClassifier()
    transport = make(inner, Retry(backoff=ONE), Timeout(attempt=TINY), classifier=counting)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.status_code == 200
    assert r.extensions["resilience"].attempts == 2
    assert counting.calls == 2
    assert inner.unclosed() == []


async def test_total_timeout_cancel_scope_ends_a_hung_call() -> None:
    """Timeout(total=0.05) around a hung attempt: the real cancel scope fires; the
    call ends as RetriesExhausted with gave_up == "deadline"."""
    inner = HangingTransport([HANG])
    counting = CountingClassifier()
    transport = make(inner, Timeout(total=TINY), Retry(backoff=ONE), classifier=counting)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(5):
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
    report = info.value.report
    assert report.gave_up == "deadline"
    assert report.attempts == 1
    assert [v.action for v in report.verdicts] == [Action.RETRY]
    assert counting.calls == 1
    assert "0.05" in str(info.value.__cause__)


class StuckClock(VirtualClock):
    """Virtual time, but a sleep never returns (so only a real cancel can end it)."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.Event().wait()


class PassThrough:
    """A custom layer that sends on as it is: the engine cannot know that it ends its
    waits by the call's deadline, so a Timeout(total=...) above keeps its own scope."""

    def bind(self, env: object) -> object:
        async def handler(request: httpx.Request, call: object, call_next: object) -> object:
            return await call_next(request, call)  # type: ignore[operator]

        return handler


async def test_total_timeout_during_a_backoff_sleep() -> None:
    """The total cancel scope fires while Retry sleeps (a custom layer below keeps
    it): the call ends with gave_up == "deadline", each attempt classified exactly
    once, the discarded response closed."""
    clock = StuckClock()
    inner = ScriptedTransport.of(reply(503), reply(200))
    counting = CountingClassifier()
    backoff = ExponentialBackoff(initial=0.01, max_delay=0.01, jitter="none")
    transport = make(
        inner,
        Timeout(total=TINY),
        Retry(backoff=backoff),
        PassThrough(),
        clock=clock,
        classifier=counting,
    )
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
    report = info.value.report
    assert clock.sleeps == [0.01]
    assert report.attempts == 1
    assert report.gave_up == "deadline"
    assert counting.calls == 1
    assert len(report.verdicts) == 1
    assert inner.unclosed() == []


async def test_deadline_on_the_virtual_clock_needs_no_real_time() -> None:
    """Timeout(total=60) with 10 s virtual waits: 6 sleeps, no real waiting."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    backoff = ExponentialBackoff(initial=10.0, multiplier=1.0, max_delay=10.0, jitter="none")
    transport = make(
        inner, Timeout(total=60.0), Retry(max_attempts=100, backoff=backoff), clock=clock
    )
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await transport.handle_async_request(httpx.Request("GET", URL))
    assert clock.sleeps == [10.0] * 6
    assert info.value.report.attempts == 7
    assert info.value.report.gave_up == "deadline"


async def test_deadline_is_restored_after_the_call() -> None:
    """The Timeout layer sets the call's deadline only while it runs below it."""
    seen: list[tuple[float | None, float | None]] = []

    class Spy:
        def bind(self, env: object) -> object:
            async def handler(request: httpx.Request, call: object, call_next: object) -> object:
                seen.append((call.deadline, call.attempt_timeout))  # type: ignore[attr-defined]
                return await call_next(request, call)  # type: ignore[operator]

            return handler

    clock = VirtualClock(start=100.0)
    inner = ScriptedTransport.of(reply(200))
    transport = make(inner, Spy(), Timeout(total=5.0, attempt=2.0), Spy(), clock=clock)
    r = await transport.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert seen == [(None, None), (105.0, 2.0)]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({}, "total=, attempt="),
        ({"total": 0}, "total"),
        ({"total": -1.0}, "total"),
        ({"attempt": 0.0}, "attempt"),
        ({"attempt": "10"}, "attempt"),
        ({"total": float("inf")}, "total"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], argument: str) -> None:
    """Timeout() with nothing, or a non-positive or non-number limit, fails at
    construction with a ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError, match=argument):
        Timeout(**kwargs)  # type: ignore[arg-type]


def test_total_timeout_inside_retry_is_refused() -> None:
    """Timeout(total=...) below Retry would bound each try, not the call: the
    pipeline refuses it (tests/test_layer_order.py has the other order rules)."""
    with pytest.raises(ConfigurationError, match=r"layers\[1\] is Timeout\(total=\.\.\.\) below"):
        Pipeline([Retry(backoff=ONE), Timeout(total=TINY)])
