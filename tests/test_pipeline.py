"""The pipeline: layer order, the innermost step, body reading, classification,
closing every response, and cancellation."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from resilience import (
    Action,
    Call,
    CallNext,
    CircuitBreaker,
    ExponentialBackoff,
    Outcome,
    Pipeline,
    PipelineEnv,
    Problem,
    ResilientTransport,
    Retry,
    Verdict,
)
from resilience._classifier import HttpClassifier
from resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    PermanentError,
    RetriesExhausted,
)
from resilience.testing import (
    ClosingStream,
    ScriptedTransport,
    StallingStream,
    VirtualClock,
    reply,
    through,
)

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
MB = 1024 * 1024


class Recorder(HttpClassifier):
    """The generic classifier, recording what it saw (and counting calls)."""

    def __init__(self, *, needs_body: bool = False) -> None:
        self.needs_body = needs_body  # type: ignore[misc]
        self.seen: list[tuple[int | None, bool, str | None]] = []

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is None:
            self.seen.append((None, False, type(error).__name__))
        else:
            read = hasattr(response, "_content")
            self.seen.append((response.status_code, read, response.text if read else None))
        return super().classify(request, response, error)

    @property
    def calls(self) -> int:
        return len(self.seen)


def transport_for(
    inner: httpx.AsyncBaseTransport,
    *layers: object,
    classifier: object = "http",
    clock: VirtualClock | None = None,
    **kwargs: Any,
) -> ResilientTransport:
    """A ResilientTransport with a virtual clock and telemetry off."""
    return through(inner, *layers, classifier=classifier, clock=clock, **kwargs)


class FailingStream(ClosingStream):
    """A body that sends some bytes, then fails like a dropped connection."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset mid-body")


# -- layers --------------------------------------------------------------------------


class Tracer:
    """A layer that records when it runs, around ``call_next``."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def bind(self, env: PipelineEnv) -> Any:
        self.log.append(f"bind {self.name}")

        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            self.log.append(f"> {self.name}")
            outcome = await call_next(request, call)
            self.log.append(f"< {self.name} {outcome.verdict.action.value}")
            return outcome

        return handler


async def test_layers_run_outermost_first_and_bind_innermost_first() -> None:
    """Layers run outermost first; they are bound innermost first."""
    log: list[str] = []
    inner = ScriptedTransport.of(reply(200))
    transport = transport_for(inner, Tracer("a", log), Tracer("b", log))
    assert log == ["bind b", "bind a"]
    r = await transport.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert log[2:] == ["> a", "> b", "< b accept", "< a accept"]


async def test_a_layer_may_call_next_many_times() -> None:
    """A layer that calls ``call_next`` twice makes two attempts, both classified."""

    class Twice:
        def bind(self, env: PipelineEnv) -> Any:
            async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
                first = await call_next(request, call)
                await first.aclose()
                return await call_next(request, call)

            return handler

    recorder = Recorder()
    inner = ScriptedTransport.of(reply(200), reply(201))
    transport = transport_for(inner, Twice(), classifier=recorder)
    r = await transport.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert r.status_code == 201
    assert r.extensions["resilience"].attempts == 2
    assert recorder.calls == 2
    assert inner.unclosed() == []


async def test_a_layer_may_answer_without_sending() -> None:
    """A layer returning an outcome with an error (an open breaker) sends nothing;
    the error is raised as is, with the report and the request attached."""

    class Open:
        def bind(self, env: PipelineEnv) -> Any:
            async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
                error = CircuitOpenError("open", key="https://api.test", retry_after=5.0)
                return Outcome(request, Verdict(Action.FAIL), error=error)

            return handler

    inner = ScriptedTransport.of(reply(200))
    async with httpx.AsyncClient(transport=transport_for(inner, Open())) as client:
        with pytest.raises(CircuitOpenError) as info:
            await client.get(URL)
    assert inner.requests == []
    assert info.value.report.attempts == 0
    assert info.value.request.url == URL
    assert (info.value.key, info.value.retry_after) == ("https://api.test", 5.0)


async def test_a_response_the_error_does_not_carry_is_closed() -> None:
    """A layer that replaces a received response with a ResilienceError: the
    response is released, not leaked."""

    inner = ScriptedTransport.of(reply(200, json={"a": 1}))
    async with httpx.AsyncClient(transport=transport_for(inner, Replace())) as client:
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
    assert inner.unclosed() == []


def test_bad_layers_fail_at_construction() -> None:
    """Non-layers, a string, or a bad clock fail when the pipeline is built."""
    with pytest.raises(ConfigurationError, match=r"layers\[1\]"):
        Pipeline([Retry(), object()])
    with pytest.raises(ConfigurationError, match="layers"):
        Pipeline("Retry")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        Pipeline([], clock=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="classify"):
        Pipeline([], classifier=object())  # type: ignore[arg-type]


def test_repr_names_layers_and_vendor() -> None:
    """The pipeline's repr lists its layers and its classifier's vendor."""
    assert repr(Pipeline([Retry()], telemetry=False)) == "Pipeline([Retry], classifier='http')"


# -- the report ----------------------------------------------------------------------


async def test_report_in_response_extensions() -> None:
    """``response.extensions["resilience"]``: attempts, delays, verdicts, no partial."""
    inner = ScriptedTransport.of(reply(502), reply(504), reply(200))
    transport = transport_for(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    report = r.extensions["resilience"]
    assert report.attempts == 3
    assert report.delays == [1.0, 2.0]
    assert report.retries == 2
    assert [v.reason for v in report.verdicts] == ["502", "504", "accept"]
    assert report.partial is None
    assert report.gave_up is None


async def test_without_layers_the_pipeline_sends_once() -> None:
    """An empty pipeline: one attempt, classified; a 503 raises RetriesExhausted."""
    inner = ScriptedTransport.of(reply(503))
    async with httpx.AsyncClient(transport=transport_for(inner)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert info.value.report.attempts == 1
    assert inner.unclosed() == []


# -- classification ------------------------------------------------------------------


async def test_each_attempt_classified_exactly_once() -> None:
    """Across retries, a transport error and a final success: one classify per attempt."""
    recorder = Recorder()
    inner = ScriptedTransport.of(reply(503), httpx.ConnectError("down"), reply(429), reply(200))
    transport = transport_for(inner, Retry(max_attempts=5, backoff=ONE), classifier=recorder)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.extensions["resilience"].attempts == 4
    assert recorder.calls == 4
    assert [s[0] for s in recorder.seen] == [503, None, 429, 200]


class Raising(HttpClassifier):
    """A vendor classifier that chokes on non-JSON bodies."""

    vendor = "acme"
    needs_body = True

    def __init__(self) -> None:
        self.calls = 0

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        self.calls += 1
        if response is not None:
            response.json()  # raises on HTML
        return super().classify(request, response, error)


async def test_classifier_that_raises_is_logged_and_status_code_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An HTML 503 makes the classifier raise: logged with its name, the status-code
    reading (RETRY) is used, and the call goes on."""
    inner = ScriptedTransport.of(
        reply(503, content="<html><body>Service Unavailable</body></html>"),
        reply(200, json={"ok": True}),
    )
    raising = Raising()
    transport = transport_for(inner, Retry(backoff=ONE), classifier=raising)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(URL)
    assert r.json() == {"ok": True}
    assert raising.calls == 2
    assert "'acme'" in caplog.text
    assert "JSONDecodeError" in caplog.text
    assert "status-code reading" in caplog.text
    verdicts = r.extensions["resilience"].verdicts
    assert verdicts[0].action is Action.RETRY
    assert verdicts[0].problem.vendor == "http"
    assert inner.unclosed() == []


async def test_classifier_returning_a_non_verdict_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A classifier returning ``None`` is treated like one that raised."""

    class Sloppy:
        vendor = "sloppy"

        def classify(self, request: Any, response: Any, error: Any) -> Any:
            return None

    inner = ScriptedTransport.of(reply(404, json={"message": "nope"}))
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport_for(inner, classifier=Sloppy())) as client:
            with pytest.raises(PermanentError) as info:
                await client.get(URL)
    assert "'sloppy'" in caplog.text
    assert "NoneType, not a Verdict" in caplog.text
    assert info.value.problem is not None
    assert info.value.problem.status == 404


async def test_classifier_without_vendor_is_named_by_its_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A classifier with no ``vendor`` attribute is named by its class in the log."""

    class NoVendorClassifier:
        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            raise KeyError("code")

    inner = ScriptedTransport.of(reply(200))
    with caplog.at_level(logging.WARNING, logger="resilience"):
        r = await transport_for(inner, classifier=NoVendorClassifier()).handle_async_request(
            httpx.Request("GET", URL)
        )
    await r.aclose()
    assert r.status_code == 200
    assert "NoVendorClassifier" in caplog.text


# -- reading bodies ------------------------------------------------------------------


async def test_error_bodies_are_read_before_classifying() -> None:
    """Even a ``needs_body=False`` classifier sees an error body already read."""
    recorder = Recorder(needs_body=False)
    inner = ScriptedTransport.of(reply(500, json={"error": "boom"}), reply(200, content="ok"))
    transport = transport_for(inner, Retry(backoff=ONE), classifier=recorder)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL)
    assert recorder.seen[0] == (500, True, '{"error":"boom"}')
    assert recorder.seen[1] == (200, False, None)


async def test_success_body_not_read_with_the_http_classifier() -> None:
    """With "http" (``needs_body=False``), a 2xx body is left for the caller to stream:
    nothing was read when the response reached the caller."""
    streams: list[ClosingStream] = []

    def big(request: httpx.Request) -> httpx.Response:
        stream = ClosingStream(b"x" * (3 * MB), chunks=48)
        streams.append(stream)
        return httpx.Response(200, stream=stream)

    inner = ScriptedTransport.of(big)
    client = httpx.AsyncClient(transport=transport_for(inner, Retry()))
    async with client, client.stream("GET", URL) as r:
        assert streams[0].read is False
        sizes = [len(chunk) async for chunk in r.aiter_raw()]
        assert r.extensions["resilience"].attempts == 1
    assert len(sizes) == 48
    assert sum(sizes) == 3 * MB
    assert streams[0].closed


async def test_needs_body_classifier_sees_the_read_body() -> None:
    """A classifier that needs bodies gets 2xx bodies read (``response.json()``
    works), and the caller still gets the whole body."""
    seen: list[Any] = []

    class Envelope:
        vendor = "envelope"

        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            body = response.json()
            seen.append(body)
            if body["code"] != 0:
                problem = Problem(vendor="envelope", status=200, code=str(body["code"]))
                return Verdict(Action.RETRY, problem=problem)
            return Verdict(Action.ACCEPT)

    inner = ScriptedTransport.of(
        reply(200, json={"code": 9001}), reply(200, json={"code": 0, "data": [1, 2]})
    )
    transport = transport_for(inner, Retry(backoff=ONE), classifier=Envelope())
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert seen == [{"code": 9001}, {"code": 0, "data": [1, 2]}]
    assert r.json() == {"code": 0, "data": [1, 2]}
    assert [v.reason for v in r.extensions["resilience"].verdicts] == ["9001", "accept"]
    assert inner.unclosed() == []


async def test_read_body_is_a_normal_response_for_the_caller() -> None:
    """After the pipeline read a body, the caller's response still works: .json(),
    .elapsed, headers, gzip decoding, and streaming."""
    import gzip

    payload = json.dumps({"items": list(range(1000))}).encode()
    compressed = gzip.compress(payload)

    def gz(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
            stream=ClosingStream(compressed, chunks=7),
        )

    recorder = Recorder(needs_body=True)
    inner = ScriptedTransport.of(gz)
    async with httpx.AsyncClient(transport=transport_for(inner, classifier=recorder)) as client:
        r = await client.get(URL)
        assert r.json() == {"items": list(range(1000))}
        assert r.elapsed.total_seconds() >= 0
        assert recorder.seen[0][2] == payload.decode()
        async with client.stream("GET", URL) as streamed:
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
    assert body == payload
    assert inner.unclosed() == []


async def test_several_megabyte_bodies() -> None:
    """A 5 MB error body then a 5 MB success body read by the classifier: retried,
    delivered whole, every stream closed."""
    big_error = b"E" * (5 * MB)
    big_ok = json.dumps({"blob": "y" * (5 * MB)}).encode()
    recorder = Recorder(needs_body=True)
    inner = ScriptedTransport.of(
        httpx.Response(503, stream=ClosingStream(big_error, chunks=80)),
        httpx.Response(200, stream=ClosingStream(big_ok, chunks=80)),
    )
    transport = transport_for(inner, Retry(backoff=ONE), classifier=recorder)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert len(r.content) == len(big_ok)
    assert r.json()["blob"] == "y" * (5 * MB)
    assert inner.unclosed() == []


async def test_html_error_body_with_the_http_classifier() -> None:
    """An HTML 502 page: classified by status, retried; the final error's response
    holds the HTML text."""
    html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>"
    inner = ScriptedTransport.of(reply(502, content=html, headers={"content-type": "text/html"}))
    transport = transport_for(inner, Retry(max_attempts=2, backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert info.value.response is not None
    assert info.value.response.text == html
    with pytest.raises(json.JSONDecodeError):
        info.value.response.json()
    assert html not in str(info.value)
    assert inner.unclosed() == []


async def test_body_read_failure_is_classified_and_retried() -> None:
    """An error body that breaks off with ReadError: the attempt is classified as
    RETRY (a transport error), its response closed, and the retry succeeds."""
    recorder = Recorder()
    broken = httpx.Response(503, stream=FailingStream(b'{"partial": tr'))
    steps = iter([broken, reply(200, json={"ok": True})])
    inner = ScriptedTransport.of(lambda request: next(steps))
    transport = transport_for(inner, Retry(backoff=ONE), classifier=recorder)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.json() == {"ok": True}
    report = r.extensions["resilience"]
    assert report.attempts == 2
    assert [v.reason for v in report.verdicts] == ["ReadError", "accept"]
    assert recorder.seen[0] == (None, False, "ReadError")
    assert inner.unclosed() == []


async def test_success_body_read_failure_is_retried_with_a_needs_body_classifier() -> None:
    """A 200 whose body breaks off, with a classifier that reads bodies: retried."""
    broken = httpx.Response(200, stream=FailingStream(b"[1, 2,"))
    steps = iter([broken, reply(200, json=[1, 2, 3])])
    inner = ScriptedTransport.of(lambda request: next(steps))
    transport = transport_for(inner, Retry(backoff=ONE), classifier=Recorder(needs_body=True))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.json() == [1, 2, 3]
    assert inner.unclosed() == []


async def test_body_read_failure_on_the_last_attempt_raises_with_cause() -> None:
    """When the broken body is the last attempt: RetriesExhausted caused by ReadError,
    no response attached, everything closed."""
    inner = ScriptedTransport.of(lambda request: httpx.Response(500, stream=FailingStream(b"half")))
    transport = transport_for(inner, Retry(max_attempts=2, backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert info.value.response is None
    assert info.value.report.attempts == 2
    assert inner.unclosed() == []


# -- closing every discarded response ------------------------------------------------


async def test_discarded_responses_closed_on_retries_and_final_errors() -> None:
    """Retries, a final RetriesExhausted, a PermanentError: every stream closed."""
    for script, error in (
        ([reply(503), reply(500), reply(503)], RetriesExhausted),
        ([reply(503), reply(400, json={"bad": 1})], PermanentError),
    ):
        inner = ScriptedTransport(script)
        transport = transport_for(inner, Retry(max_attempts=3, backoff=ONE))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(error):
                await client.get(URL)
        assert len(inner.responses) == len(script)
        assert inner.unclosed() == []


async def test_closed_on_raise_on_failure_false_once_the_caller_reads() -> None:
    """``raise_on_failure=False`` hands the last response over; the client's read
    closes it; the earlier ones were closed by Retry."""
    inner = ScriptedTransport.of(reply(503), reply(503, json={"down": True}))
    transport = transport_for(inner, Retry(max_attempts=2, backoff=ONE), raise_on_failure=False)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(URL)
    assert r.status_code == 503
    assert r.json() == {"down": True}
    assert inner.unclosed() == []


# -- cancellation --------------------------------------------------------------------


class CancellingTransport(ScriptedTransport):
    """Plays its script, but on the attempt numbered ``cancel_on`` it cancels the
    caller's scope and hangs (like a network stall cut by the caller)."""

    scope: anyio.CancelScope | None = None
    cancel_on: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if len(self.requests) + 1 == self.cancel_on:
            self.requests.append(request)
            assert self.scope is not None
            self.scope.cancel()
            await anyio.Event().wait()
        return await super().handle_async_request(request)


async def test_cancelled_mid_attempt_leaks_nothing() -> None:
    """The caller cancels while the second attempt hangs: the first (503) response
    was closed, nothing else is open, and the scope caught the cancellation."""
    inner = CancellingTransport([reply(503), reply(200)])
    inner.cancel_on = 2
    transport = transport_for(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.CancelScope() as scope:
            inner.scope = scope
            await client.get(URL)
    assert scope.cancelled_caught
    assert len(inner.requests) == 2
    assert inner.unclosed() == []


async def test_cancelled_while_reading_a_body_closes_it() -> None:
    """The caller cancels while an error body stalls: the response is closed."""
    stalled = httpx.Response(503, stream=StallingStream(b"some"))
    inner = ScriptedTransport.of(lambda request: stalled)
    transport = transport_for(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.get(URL)
    assert scope.cancelled_caught
    assert stalled.stream.closed  # type: ignore[attr-defined]
    assert inner.unclosed() == []


class CancellingClock(VirtualClock):
    """A clock whose sleep cancels the caller's scope and then waits forever."""

    scope: anyio.CancelScope | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        assert self.scope is not None
        self.scope.cancel()
        await anyio.Event().wait()


async def test_cancelled_during_the_backoff_sleep_leaks_nothing() -> None:
    """The caller cancels while Retry sleeps: the discarded response was closed."""
    clock = CancellingClock()
    inner = ScriptedTransport.of(reply(503), reply(200))
    transport = transport_for(inner, Retry(backoff=ONE), clock=clock)
    with anyio.CancelScope() as scope:
        clock.scope = scope
        await transport.handle_async_request(httpx.Request("GET", URL))
    assert scope.cancelled_caught
    assert clock.sleeps == [1.0]
    assert inner.unclosed() == []


async def test_real_cancel_scope_around_client_get_with_a_hanging_transport() -> None:
    """A move_on_after around client.get while the inner transport hangs: the call
    ends promptly and leaks nothing."""

    class Hanging(ScriptedTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if len(self.requests) >= 1:
                self.requests.append(request)
                await anyio.Event().wait()
            return await super().handle_async_request(request)

    inner = Hanging([reply(503)])
    transport = transport_for(inner, Retry(backoff=ONE))
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(5):
            with anyio.move_on_after(0.05) as scope:
                await client.get(URL)
    assert scope.cancelled_caught
    assert len(inner.requests) == 2
    assert inner.unclosed() == []


# -- no reference cycles -------------------------------------------------------------


class Replace:
    """A layer that answers a received response with its own error."""

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            outcome = await call_next(request, call)
            outcome.error = CircuitOpenError("tripped", key="k", retry_after=1.0)
            outcome.verdict = Verdict(Action.FAIL)
            return outcome

        return handler


@pytest.mark.parametrize(
    ("layers", "script", "expected"),
    [
        pytest.param(
            (CircuitBreaker(minimum_calls=1),),
            (reply(503), reply(200)),
            CircuitOpenError,
            id="open-breaker",
        ),
        pytest.param((), (reply(404),), PermanentError, id="permanent"),
        pytest.param((Replace(),), (reply(200),), CircuitOpenError, id="layer-error"),
        pytest.param(
            (Retry(max_attempts=2, backoff=ONE),),
            (reply(503), reply(503)),
            RetriesExhausted,
            id="exhausted",
        ),
    ],
)
@pytest.mark.parametrize("via_client", [False, True], ids=["transport", "client"])
async def test_a_raised_error_is_freed_without_the_garbage_collector(
    layers: tuple[Any, ...], script: tuple[Any, ...], expected: type[Exception], via_client: bool
) -> None:
    """The error the pipeline raises is not held in a reference cycle through the
    pipeline's frames: once the caller drops it, it (with its response and report)
    is freed at once, not whenever the garbage collector runs."""
    transport = transport_for(ScriptedTransport.of(*script), *layers)
    client = httpx.AsyncClient(transport=transport)
    request = httpx.Request("GET", URL)
    for _ in range(len(script) - 1):  # trip the breaker (a no-op for the others)
        with contextlib.suppress(httpx.HTTPError):
            await transport.handle_async_request(request)
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            if via_client:
                await client.send(request)
            else:
                await transport.handle_async_request(request)
        except expected as exc:
            freed = weakref.ref(exc)
            report = weakref.ref(exc.report)
        else:  # pragma: no cover - a broken test
            raise AssertionError("nothing was raised")
        assert freed() is None
        assert report() is None
    finally:
        if enabled:
            gc.enable()
        await client.aclose()


async def test_through_builds_a_transport_for_tests() -> None:
    """``resilience.testing.through``: a virtual clock and no telemetry by default."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    resilient = through(inner, Retry(backoff=ONE))
    response = await resilient.handle_async_request(httpx.Request("GET", URL))
    assert response.status_code == 200
    clock = resilient.pipeline.clock
    assert isinstance(clock, VirtualClock)
    assert clock.sleeps == [1.0]
    assert resilient.pipeline.env.instrument is None
    assert through(inner, telemetry=True).pipeline.env.instrument is not None
    own = VirtualClock()
    assert through(inner, clock=own, raise_on_failure=False).pipeline.clock is own


# -- malformed verdicts --------------------------------------------------------------


def _malformed_verdicts() -> list[Verdict]:
    problem_is_text = Verdict(Action.RETRY, problem="rate limited")  # type: ignore[arg-type]
    flag_is_text = Verdict(Action.RETRY, breaker_failure="yes")  # type: ignore[arg-type]
    action_is_text = Verdict(Action.RETRY)
    object.__setattr__(action_is_text, "action", "retry")
    negative_wait = Verdict(Action.RETRY)
    object.__setattr__(negative_wait, "retry_after", -5.0)
    return [problem_is_text, flag_is_text, action_is_text, negative_wait]


@pytest.mark.parametrize(
    "malformed", _malformed_verdicts(), ids=["problem", "breaker_failure", "action", "retry_after"]
)
async def test_a_malformed_verdict_falls_back_to_the_status(
    malformed: Verdict, caplog: pytest.LogCaptureFixture
) -> None:
    """A Verdict whose problem is no Problem (or any other malformed field) is the
    documented fallback: logged, and the status-code reading is used; the call does
    not crash with AttributeError."""

    class Sloppy:
        vendor = "sloppy"

        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            return malformed

    inner = ScriptedTransport.of(reply(404, json={"message": "nope"}))
    transport = transport_for(inner, Retry(backoff=ONE), CircuitBreaker(), classifier=Sloppy())
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(PermanentError) as info:
                await client.get(URL)
    assert "malformed Verdict" in caplog.text
    assert info.value.problem is not None
    assert info.value.problem.status == 404
    assert [v.reason for v in info.value.report.verdicts] == ["404"]
    assert inner.unclosed() == []


# -- hooks ---------------------------------------------------------------------------


async def _one_retry(pipeline_hooks: Any) -> httpx.Response:
    inner = ScriptedTransport.of(reply(503), reply(200))
    transport = transport_for(inner, Retry(backoff=ONE), hooks=pipeline_hooks)
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(URL)


async def test_a_single_callable_is_accepted_as_hooks() -> None:
    """``hooks=print``-style: one callable is taken as the only hook."""
    seen: list[Any] = []
    response = await _one_retry(seen.append)
    assert response.status_code == 200
    assert [type(event).__name__ for event in seen] == ["RetryScheduled"]


class AsyncCallable:
    """An object whose __call__ is a coroutine function."""

    async def __call__(self, event: Any) -> None:  # pragma: no cover - never called
        return None


async def _async_hook(event: Any) -> None:  # pragma: no cover - never called
    return None


async def _async_gen_hook(event: Any) -> AsyncIterator[None]:  # pragma: no cover
    yield None


@pytest.mark.parametrize(
    "hook",
    [_async_hook, AsyncCallable(), _async_gen_hook],
    ids=["async def", "async __call__", "async generator"],
)
def test_an_async_hook_is_refused_when_the_pipeline_is_built(hook: Any) -> None:
    """An async hook would never run (hooks are called, not awaited): the pipeline
    refuses it with a ConfigurationError naming ``hooks``."""
    with pytest.raises(ConfigurationError, match=r"hooks\[1\].*async"):
        Pipeline([], hooks=[print, hook], telemetry=False)
    with pytest.raises(ConfigurationError, match=r"hooks\[0\].*async"):
        Pipeline([], hooks=hook, telemetry=False)


@pytest.mark.parametrize("bad", [42, "print", [print, None]], ids=["int", "str", "not callable"])
def test_hooks_that_are_not_callables_are_refused(bad: Any) -> None:
    """Anything but a callable or a sequence of callables fails with a
    ConfigurationError naming ``hooks``."""
    with pytest.raises(ConfigurationError, match="hooks"):
        Pipeline([], hooks=bad, telemetry=False)


async def test_a_hook_returning_a_coroutine_is_closed_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync hook that hands back a coroutine (a lambda around an async function):
    the coroutine is closed (no "never awaited" warning; pytest turns it into an
    error), the call goes on, and one warning is logged for that hook."""
    ran: list[Any] = []

    async def record(event: Any) -> None:  # pragma: no cover - closed unawaited
        ran.append(event)

    def hook(event: Any) -> Any:
        return record(event)

    inner = ScriptedTransport.of(reply(503), reply(503), reply(200))
    transport = transport_for(inner, Retry(max_attempts=3, backoff=ONE), hooks=[hook])
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(URL)
        gc.collect()
    assert response.status_code == 200
    assert response.extensions["resilience"].retries == 2
    assert ran == []
    warnings = [r for r in caplog.records if "returned an awaitable" in r.getMessage()]
    assert len(warnings) == 1
