"""Retry and the pipeline around it: bodies, budget, hints, deadlines, replays.

Every body stream the transport handed out is closed (also when cancelled while
closing), ``raise_on_failure=False`` returns the last response, the budget is
deposited once per call, ``Retry-After`` hints are clamped and parsed, a redirected
POST with a key is replayed, a deadline during a backoff keeps the last problem, an
empty idempotency key replays nothing, and a backoff returning NaN is harmless.

Closing is checked on the stream objects the inner transport handed out (the
pipeline and the client both replace ``response.stream``, so checking the
response's current stream would not see a leak).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from resilience import (
    Action,
    ExponentialBackoff,
    ResilientTransport,
    Retry,
    RetryBudget,
    Timeout,
    Verdict,
)
from resilience._classifier import HttpClassifier, classify_status, retry_after_of
from resilience._layer import Call, CallNext, Outcome, PipelineEnv
from resilience.errors import ConfigurationError, PermanentError, RetriesExhausted
from resilience.testing import ClosingStream, VirtualClock, through

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


class Recording(httpx.AsyncBaseTransport):
    """Answers with ``answer(request, index)`` and keeps every body stream it made."""

    def __init__(self, answer: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.streams: list[ClosingStream] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = len(self.requests)
        self.requests.append(request)
        response = self.answer(request, index)
        if isinstance(response.stream, ClosingStream):
            self.streams.append(response.stream)
        return response

    def open_streams(self) -> list[int]:
        """Indexes of the streams nobody closed."""
        return [i for i, s in enumerate(self.streams) if not s.closed]


def statuses(*codes: int, headers: dict[str, str] | None = None) -> Recording:
    """A transport answering ``codes`` in order (the last repeats), each body recorded."""

    def answer(request: httpx.Request, index: int) -> httpx.Response:
        code = codes[min(index, len(codes) - 1)]
        body = b'{"n": %d}' % index
        return httpx.Response(code, headers=headers, stream=ClosingStream(body))

    return Recording(answer)


def transport(
    inner: httpx.AsyncBaseTransport,
    *layers: object,
    clock: VirtualClock | None = None,
    **kwargs: Any,
) -> ResilientTransport:
    return through(inner, *layers, clock=clock, **kwargs)


# -- every discarded response is closed (at the transport's own stream) ----------------


@pytest.mark.parametrize(
    ("codes", "raise_on_failure", "expected"),
    [
        ((503, 500, 200), True, 200),
        ((503, 503, 503), True, RetriesExhausted),
        ((503, 404), True, PermanentError),
        ((503, 503, 503), False, 503),
        ((503, 404), False, 404),
    ],
)
async def test_every_body_stream_the_transport_handed_out_is_closed(
    codes: tuple[int, ...], raise_on_failure: bool, expected: int | type[Exception]
) -> None:
    """Retries, final errors and ``raise_on_failure=False``: each stream the inner
    transport returned is closed once the client is done (no leaked connection)."""
    inner = statuses(*codes)
    t = transport(inner, Retry(max_attempts=3, backoff=ONE), raise_on_failure=raise_on_failure)
    async with httpx.AsyncClient(transport=t) as client:
        if isinstance(expected, int):
            r = await client.get(URL)
            assert r.status_code == expected
            assert r.json() == {"n": len(inner.requests) - 1}
        else:
            with pytest.raises(expected):
                await client.get(URL)
    assert len(inner.streams) == len(codes)
    assert inner.open_streams() == []


class CancelOnClose(ClosingStream):
    """A body whose ``aclose`` cancels ``scope`` and then has to await to finish."""

    scope: anyio.CancelScope | None = None

    async def aclose(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        await anyio.lowlevel.checkpoint()
        self.closed = True


async def test_cancelled_while_closing_a_read_error_body_still_closes_it() -> None:
    """The caller is cancelled just as the pipeline closes a 503's connection after
    reading its body: the close still finishes, and no retry is sent."""
    stream = CancelOnClose(b"down")
    inner = Recording(lambda request, index: httpx.Response(503, stream=stream))
    clock = VirtualClock()
    t = transport(inner, Retry(backoff=ONE), clock=clock)
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            stream.scope = scope
            await t.handle_async_request(httpx.Request("GET", URL))
    assert scope.cancelled_caught
    assert stream.closed
    assert len(inner.requests) == 1


class RetryOnBusy(HttpClassifier):
    """The generic classifier (success bodies unread), but a 200 carrying
    ``x-busy`` is RETRY."""

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is not None and "x-busy" in response.headers:
            return Verdict(Action.RETRY)
        return super().classify(request, response, error)


async def test_cancelled_while_discarding_an_unread_response_still_closes_it() -> None:
    """A RETRY on a 2xx whose body was never read: Retry closes its connection before
    sleeping; a cancellation that lands during that close does not cut it short."""
    stream = CancelOnClose(b"busy")
    inner = Recording(
        lambda request, index: httpx.Response(200, headers={"x-busy": "1"}, stream=stream)
    )
    clock = VirtualClock()
    t = transport(inner, Retry(backoff=ONE), clock=clock, classifier=RetryOnBusy())
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            stream.scope = scope
            await t.handle_async_request(httpx.Request("GET", URL))
    assert scope.cancelled_caught
    assert stream.closed
    assert not stream.read  # discarded unread, never buffered
    assert len(inner.requests) == 1


# -- raise_on_failure=False on every way of giving up ---------------------------------


@pytest.mark.parametrize(
    ("method", "layers", "gave_up", "attempts"),
    [
        ("GET", lambda: [Retry(max_attempts=3, backoff=ONE, budget=None)], "max_attempts", 3),
        ("GET", lambda: [Timeout(total=2.5), Retry(max_attempts=9, backoff=ONE)], "deadline", 2),
        ("POST", lambda: [Retry(backoff=ONE)], "not_idempotent", 1),
        (
            "GET",
            lambda: [
                Retry(
                    max_attempts=9,
                    backoff=ONE,
                    budget=RetryBudget(initial=2.0, ratio=0.0, min_per_second=0.0),
                )
            ],
            "budget",
            3,
        ),
    ],
)
async def test_raise_on_failure_false_returns_the_last_response_whatever_stopped_it(
    method: str, layers: Callable[[], list[object]], gave_up: str, attempts: int
) -> None:
    """With ``raise_on_failure=False`` the final 503 comes back (readable, with the
    report saying why retrying stopped), and every earlier response was closed."""
    inner = statuses(503)
    t = transport(inner, *layers(), raise_on_failure=False)
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.request(method, URL, content=b"x")
    report = r.extensions["resilience"]
    assert r.status_code == 503
    assert r.json() == {"n": attempts - 1}
    assert (report.attempts, report.gave_up) == (attempts, gave_up)
    assert len(report.verdicts) == attempts
    assert len(report.delays) == attempts - 1
    assert inner.open_streams() == []


# -- the retry budget ----------------------------------------------------------------


class Twice:
    """A layer that runs the rest of the pipeline twice per call (as a splitter's
    re-request does) and returns the second outcome."""

    def bind(self, env: PipelineEnv) -> Callable[..., Any]:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            first = await call_next(request, call)
            await first.aclose()
            return await call_next(request, call)

        return handler


async def test_budget_is_deposited_once_per_logical_call() -> None:
    """A logical call that passes Retry twice earns ``ratio`` once: with ratio 1 and
    an empty bucket it gets one retry in all (3 attempts), not one per pass (4)."""
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, initial=0.0)
    inner = statuses(503)
    t = transport(inner, Twice(), Retry(max_attempts=2, backoff=ZERO, budget=budget))
    with pytest.raises(RetriesExhausted) as info:
        await t.handle_async_request(httpx.Request("GET", URL))
    assert info.value.report.attempts == 3
    assert info.value.report.gave_up == "budget"


async def test_a_long_idle_banks_no_retries() -> None:
    """An hour idle does not bank retries: a call in an outage then gets the
    floor's 3 retries of its second, and no more."""
    clock = VirtualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=3.0)
    inner = statuses(503)
    t = transport(inner, Retry(max_attempts=50, backoff=ZERO, budget=budget), clock=clock)
    clock.advance(3600.0)
    with pytest.raises(RetriesExhausted) as info:
        await t.handle_async_request(httpx.Request("GET", URL))
    assert info.value.report.attempts == 4
    assert info.value.report.gave_up == "budget"


# -- server hints and the deadline ---------------------------------------------------


async def test_hint_above_the_cap_is_clamped_before_the_deadline_check() -> None:
    """``Retry-After: 3600`` with the default 60 s cap and 100 s left: the wait is
    clamped to 60 s and fits, so the call sleeps 60 s and retries."""
    clock = VirtualClock()
    inner = statuses(429, 200, headers={"retry-after": "3600"})
    t = transport(inner, Timeout(total=100.0), Retry(backoff=ONE), clock=clock)
    r = await t.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert clock.sleeps == [60.0]
    assert r.extensions["resilience"].attempts == 2


def test_http_date_hint_with_a_garbage_date_header_uses_the_current_time() -> None:
    """A ``Date`` header that does not parse is ignored: an HTTP-date hint is then
    measured from the current time, not dropped."""
    when = email.utils.formatdate(time.time() + 600, usegmt=True)
    response = httpx.Response(503, headers={"retry-after": when, "date": "yesterday-ish"})
    hint = retry_after_of(response)
    assert hint is not None
    assert 590.0 <= hint <= 601.0


# -- redirects through httpx.AsyncClient ----------------------------------------------


async def test_redirected_post_with_a_key_is_retried_on_the_new_hop() -> None:
    """``follow_redirects=True``: each hop is its own logical call. A 307'd POST with
    an Idempotency-Key meets a 503 on the new URL and is replayed there with the same
    body and key; each response's report describes its own hop."""
    seen: list[tuple[str, bytes, str | None]] = []

    def answer(request: httpx.Request, index: int) -> httpx.Response:
        # As a network transport does: iterate the stream, never cache the body.
        body = b"".join(request.stream)  # type: ignore[arg-type]
        seen.append((request.url.path, body, request.headers.get("idempotency-key")))
        if request.url.path == "/a":
            headers = {"location": "https://api.test/b"}
            return httpx.Response(307, headers=headers, stream=ClosingStream(b""))
        return httpx.Response(503 if index == 1 else 201, stream=ClosingStream(b"{}"))

    inner = Recording(answer)
    t = transport(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=t, follow_redirects=True) as client:
        r = await client.post(
            "https://api.test/a", content=b"payload", headers={"Idempotency-Key": "k-1"}
        )
    assert r.status_code == 201
    assert seen == [("/a", b"payload", "k-1")] + [("/b", b"payload", "k-1")] * 2
    assert r.extensions["resilience"].attempts == 2
    assert r.extensions["resilience"].delays == [1.0]
    assert [h.status_code for h in r.history] == [307]
    assert r.history[0].extensions["resilience"].attempts == 1
    assert inner.open_streams() == []


# -- bugs ----------------------------------------------------------------------------


async def test_503_with_an_undecodable_body_is_still_retried_by_status() -> None:
    """A proxy's 503 labelled ``Content-Encoding: gzip`` whose body is not gzip: the
    whole body arrived, so the status code still says what happened (RETRY)."""
    headers = {"content-encoding": "gzip", "content-type": "text/html"}
    inner = Recording(
        lambda request, index: httpx.Response(
            503 if index == 0 else 200,
            headers=headers if index == 0 else None,
            stream=ClosingStream(b"<html>busy</html>" if index == 0 else b"{}"),
        )
    )
    t = transport(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.get(URL)
    assert r.status_code == 200
    report = r.extensions["resilience"]
    assert report.attempts == 2
    assert report.verdicts[0].action is Action.RETRY
    assert report.verdicts[0].problem is not None
    assert report.verdicts[0].problem.status == 503


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: ExponentialBackoff(max_delay=10**400), "max_delay"),
        (lambda: RetryBudget(initial=10**400), "initial"),
        (lambda: Timeout(total=10**400), "total"),
        (lambda: Timeout(attempt=10**400), "attempt"),
    ],
)
def test_integer_settings_too_large_for_a_float_fail_at_construction(
    build: Callable[[], object], argument: str
) -> None:
    """Bad configuration fails at construction with a message naming the argument.
    Today each of these is accepted; the pipeline then raises OverflowError when it
    is built (``max_delay``) or on the first call (the others)."""
    with pytest.raises(ConfigurationError, match=argument):
        build()


class StuckClock(VirtualClock):
    """A virtual clock whose sleeps never end (so a real cancel scope ends them)."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.sleep_forever()


async def test_deadline_during_a_backoff_sleep_keeps_the_last_attempts_problem() -> None:
    """The total scope fires (in real time, 0.05 s) while Retry sleeps after a 503
    that carried a request id: the RetriesExhausted still describes that 503."""

    class WithRequestId(HttpClassifier):
        def classify(
            self,
            request: httpx.Request,
            response: httpx.Response | None,
            error: BaseException | None,
        ) -> Verdict:
            if response is None:
                return super().classify(request, response, error)
            return classify_status("http", response, request_id=response.headers.get("x-rid"))

    clock = StuckClock()
    inner = statuses(503, headers={"x-rid": "req-42"})
    backoff = ExponentialBackoff(initial=0.01, max_delay=0.01, jitter="none")
    t = transport(
        inner, Timeout(total=0.05), Retry(backoff=backoff), clock=clock, classifier=WithRequestId()
    )
    with anyio.fail_after(5):
        with pytest.raises(RetriesExhausted) as info:
            await t.handle_async_request(httpx.Request("GET", URL))
    assert info.value.report.gave_up == "deadline"
    problem = info.value.problem
    assert problem is not None
    assert (problem.status, problem.request_id) == (503, "req-42")


async def test_an_empty_idempotency_key_does_not_make_a_post_replayable() -> None:
    """``Idempotency-Key: ""`` promises nothing: the POST is not replayed."""
    inner = statuses(503, 200)
    resilient = transport(inner, Retry(max_attempts=3, backoff=ONE))
    request = httpx.Request("POST", URL, content=b"{}", headers={"Idempotency-Key": " "})
    with pytest.raises(RetriesExhausted) as info:
        await resilient.handle_async_request(request)
    assert len(inner.requests) == 1
    assert info.value.report.gave_up == "not_idempotent"


async def test_a_backoff_returning_nan_still_honours_retry_after() -> None:
    """A custom Backoff's NaN is no wait of its own, but the server's ``Retry-After``
    still counts (it used to be dropped with the NaN)."""

    class Broken:
        @property
        def max_delay(self) -> float:
            return 30.0

        def delay(self, retry: int, previous: float | None = None) -> float:
            return float("nan")

    clock = VirtualClock()
    inner = statuses(503, 200, headers={"retry-after": "2"})
    resilient = transport(inner, Retry(max_attempts=3, backoff=Broken()), clock=clock)
    response = await resilient.handle_async_request(httpx.Request("GET", URL))
    await response.aclose()
    assert clock.sleeps == [2.0]


async def test_a_backoff_returning_nan_waits_nothing() -> None:
    """A custom Backoff's NaN is read as no wait, never passed on to the clock."""

    class Broken:
        @property
        def max_delay(self) -> float:
            return 30.0

        def delay(self, retry: int, previous: float | None = None) -> float:
            return float("nan")

    clock = VirtualClock()
    inner = statuses(503, 200)
    resilient = transport(inner, Retry(max_attempts=3, backoff=Broken()), clock=clock)
    response = await resilient.handle_async_request(httpx.Request("GET", URL))
    assert response.status_code == 200
    assert clock.sleeps == [0.0]
