"""Telemetry: the span tree, attributes, events, metrics and logs of a call.

Every test passes its own SDK providers (``tracer_provider=``/``meter_provider=``)
with an in-memory exporter and metric reader; none sets the global providers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import attrs
import httpx
import opentelemetry.metrics._internal as metrics_internal
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilience
from resilience import (
    Action,
    AuthRefresh,
    Call,
    CallNext,
    CircuitBreaker,
    CircuitStateChanged,
    ExponentialBackoff,
    Outcome,
    PartialFailureReported,
    PartialReport,
    Pipeline,
    PipelineEnv,
    Problem,
    ResilientTransport,
    Retry,
    StaticToken,
    Timeout,
    Verdict,
)
from resilience._telemetry import redact_url
from resilience.errors import CircuitOpenError, RetriesExhausted
from resilience.testing import HangingTransport, ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

HOST = "api.example.test"
URL = f"https://{HOST}/v1/devices"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
BREAKER_KEY = f"https://{HOST}:443"


@attrs.define
class Otel:
    """An SDK tracer and meter provider writing to memory."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in start order."""
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def attempts(self) -> list[ReadableSpan]:
        """The CLIENT spans of resilience's own scope, in start order."""
        return [
            s
            for s in self.spans()
            if s.kind is SpanKind.CLIENT
            and s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "resilience"
        ]

    def points(self, name: str) -> list[Any]:
        """Data points of the metric ``name`` from the ``resilience`` meter."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name != "resilience":
                    continue
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def make(otel: Otel, layers: Sequence[Any] = (), **kwargs: Any) -> Pipeline:
    """A pipeline on a virtual clock, recording into ``otel``."""
    return Pipeline(
        list(layers),
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        **kwargs,
    )


async def get(
    pipeline: Pipeline, inner: httpx.AsyncBaseTransport, url: str = URL
) -> httpx.Response:
    """``GET url`` through ``pipeline``; the response is read and closed."""
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        return await client.get(url)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    return context.span_id


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


# --- test-only layers ------------------------------------------------------------


@attrs.frozen
class OpenBreaker:
    """Test-only: a breaker that opens on the first call and rejects every call."""

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            env.emit(CircuitStateChanged(key=BREAKER_KEY, old="closed", new="open"), call)
            error = CircuitOpenError("circuit open", key=BREAKER_KEY, retry_after=5.0)
            return Outcome(request, Verdict(Action.FAIL), error=error)

        return handler


PART_FAILURE = Verdict(
    Action.RETRY,
    problem=Problem(vendor="http", status=503, code="503", request_id="req-42"),
)


@attrs.frozen
class ReportPartial:
    """Test-only: delivers the response but reports the part ``backend-b`` failed."""

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            outcome = await call_next(request, call)
            failures = {"backend-b": PART_FAILURE}
            call.report.partial = PartialReport(failures=failures)
            env.emit(PartialFailureReported(failures=failures), call)
            return outcome

        return handler


@attrs.frozen
class Capture:
    """Test-only: remembers each call's telemetry state (``call.trace``)."""

    seen: list[Any] = attrs.field(factory=list)

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            self.seen.append(call.trace)
            return await call_next(request, call)

        return handler


class Watching(httpx.AsyncBaseTransport):
    """Answers 200 (or 503 on each path's first request, when ``flaky``), yielding
    first, and records the span current inside the transport and the traceparent."""

    def __init__(self, *, flaky: bool = False) -> None:
        self.flaky = flaky
        self.paths: dict[str, int] = {}
        self.current: list[int] = []
        self.recording: list[bool] = []
        self.traceparents: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.lowlevel.checkpoint()  # let concurrent calls interleave
        span = trace.get_current_span()
        self.current.append(span.get_span_context().span_id)
        self.recording.append(span.is_recording())
        self.traceparents.append(request.headers.get("traceparent"))
        seen = self.paths[request.url.path] = self.paths.get(request.url.path, 0) + 1
        return reply(503 if self.flaky and seen == 1 else 200)


# --- the span tree -----------------------------------------------------------------


async def test_success_is_one_call_span_over_one_attempt(otel: Otel) -> None:
    """A 200: an INTERNAL call span, parent of one CLIENT span with the HTTP attributes."""
    r = await get(make(otel), ScriptedTransport.of(reply(200)), f"{URL}?page=2")
    assert r.status_code == 200

    call = otel.span("resilience.call")
    assert call.kind is SpanKind.INTERNAL
    assert call.status.status_code is StatusCode.UNSET
    assert dict(call.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 443,
        "resilience.vendor": "http",
        "resilience.pipeline": "http",
        "resilience.attempt.count": 1,
        "resilience.outcome": "success",
    }
    (attempt,) = otel.attempts()
    assert attempt.name == "GET"
    assert parent_id(attempt) == span_id(call)
    assert attempt.status.status_code is StatusCode.UNSET
    assert dict(attempt.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 443,
        "url.full": f"{URL}?page=2",
        "resilience.vendor": "http",
        "resilience.pipeline": "http",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "resilience.verdict": "accept",
    }
    assert len(otel.spans()) == 2


async def test_retries_leave_the_call_unset_and_the_failed_attempts_error(otel: Otel) -> None:
    """503, 503, 200: three attempts (resend count absent, 1, 2), two retry events."""
    script = ScriptedTransport.of(reply(503), reply(503), reply(200))
    r = await get(make(otel, [Retry(max_attempts=3, backoff=ONE)]), script)
    assert r.status_code == 200

    call = otel.span("resilience.call")
    assert call.status.status_code is StatusCode.UNSET
    assert call.attributes is not None
    assert call.attributes["resilience.attempt.count"] == 3
    assert call.attributes["resilience.outcome"] == "success"
    assert "error.type" not in call.attributes

    first, second, third = otel.attempts()
    assert {parent_id(a) for a in (first, second, third)} == {span_id(call)}
    assert first.attributes is not None
    assert "http.request.resend_count" not in first.attributes
    assert [a.attributes["http.request.resend_count"] for a in (second, third)] == [1, 2]  # type: ignore[index]
    for failed in (first, second):
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.attributes is not None
        assert failed.attributes["error.type"] == "503"
        assert failed.attributes["http.response.status_code"] == 503
        assert failed.attributes["resilience.verdict"] == "retry"
        assert failed.attributes["resilience.problem.code"] == "503"
    assert third.status.status_code is StatusCode.UNSET
    assert third.attributes is not None
    assert "error.type" not in third.attributes

    assert events(call, "resilience.retry") == [
        {
            "resilience.retry.attempt": 1,
            "resilience.retry.delay": 1.0,
            "resilience.retry.reason": "503",
        },
        {
            "resilience.retry.attempt": 2,
            "resilience.retry.delay": 2.0,
            "resilience.retry.reason": "503",
        },
    ]


async def test_each_attempt_carries_its_own_traceparent(otel: Otel) -> None:
    """The attempt's context is current in the inner transport and in its headers."""
    inner = Watching(flaky=True)
    await get(make(otel, [Retry(max_attempts=3, backoff=ONE)]), inner)
    attempts = otel.attempts()
    ids = [span_id(a) for a in attempts]
    assert len(ids) == 2
    assert inner.current == ids
    assert inner.recording == [True, True]
    assert [tp.split("-")[2] if tp else None for tp in inner.traceparents] == [
        format(i, "016x") for i in ids
    ]


async def test_exhaustion_is_an_error_on_the_call(otel: Otel) -> None:
    """Three 503s: RetriesExhausted; the call span is Error with outcome failure."""
    pipeline = make(otel, [Retry(max_attempts=3, backoff=ONE)])
    with pytest.raises(RetriesExhausted):
        await get(pipeline, ScriptedTransport.of(reply(503)))
    call = otel.span("resilience.call")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["error.type"] == "RetriesExhausted"
    assert call.attributes["resilience.outcome"] == "failure"
    assert call.attributes["resilience.attempt.count"] == 3
    assert [a.status.status_code for a in otel.attempts()] == [StatusCode.ERROR] * 3
    assert len(events(call, "resilience.retry")) == 2


async def test_transport_error_names_the_exception(otel: Otel) -> None:
    """A connection error: the attempt's error.type is the exception class, no status."""
    script = ScriptedTransport.of(httpx.ConnectError("refused"), reply(200))
    await get(make(otel, [Retry(max_attempts=2, backoff=ONE)]), script)
    failed, ok = otel.attempts()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "ConnectError"
    assert failed.attributes["resilience.problem.code"] == "ConnectError"
    assert "http.response.status_code" not in failed.attributes
    assert ok.status.status_code is StatusCode.UNSET
    assert otel.span("resilience.call").status.status_code is StatusCode.UNSET


async def test_deadline_is_a_timeout_outcome(otel: Otel) -> None:
    """The next backoff does not fit in Timeout(total=...): outcome timeout, Error."""
    layers = [Timeout(total=2.5), Retry(max_attempts=5, backoff=ONE)]
    with pytest.raises(RetriesExhausted):
        await get(make(otel, layers), ScriptedTransport.of(reply(503)))
    call = otel.span("resilience.call")
    assert call.attributes is not None
    assert call.attributes["resilience.outcome"] == "timeout"
    assert call.status.status_code is StatusCode.ERROR


async def test_refresh_and_replay(otel: Otel) -> None:
    """A 401 then a 200 under AuthRefresh: refresh spans under the call, a replay."""
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(StaticToken("tok-SECRET"))]
    r = await get(make(otel, layers), ScriptedTransport.of(reply(401), reply(200)))
    assert r.status_code == 200

    call = otel.span("resilience.call")
    refreshes = [s for s in otel.spans() if s.name == "resilience.auth.refresh"]
    assert [s.kind for s in refreshes] == [SpanKind.INTERNAL] * 2
    assert [s.attributes["resilience.auth.trigger"] for s in refreshes] == [  # type: ignore[index]
        "initial",
        "rejected",
    ]
    assert {parent_id(s) for s in refreshes} == {span_id(call)}

    rejected, replay = otel.attempts()
    assert rejected.attributes is not None
    assert replay.attributes is not None
    assert rejected.attributes["resilience.verdict"] == "refresh_auth"
    assert rejected.attributes["error.type"] == "401"
    assert rejected.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in rejected.attributes
    assert replay.attributes["http.request.resend_count"] == 1
    assert call.status.status_code is StatusCode.UNSET
    assert call.attributes is not None
    assert call.attributes["resilience.outcome"] == "success"
    # The second refresh started after the rejected attempt ended.
    assert (refreshes[1].start_time or 0) >= (rejected.end_time or 0)

    counts = {
        p.attributes["resilience.auth.trigger"]: p.value
        for p in otel.points("resilience.auth.refreshes")
    }
    assert counts == {"initial": 1, "rejected": 1}


async def test_token_refresh_failure_is_an_error_span(otel: Otel) -> None:
    """A fetch that raises: the refresh span is Error with the exception's type."""
    pipeline = make(otel)
    instrument = pipeline.env.instrument
    with pytest.raises(RuntimeError), instrument.token_refresh(None, "proactive"):
        raise RuntimeError("token endpoint down")
    span = otel.span("resilience.auth.refresh")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.parent is None
    (point,) = otel.points("resilience.auth.refreshes")
    assert dict(point.attributes) == {
        "resilience.auth.trigger": "proactive",
        "resilience.vendor": "http",
        "resilience.pipeline": "http",
        "error.type": "RuntimeError",
    }


async def test_open_breaker_short_circuits(otel: Otel) -> None:
    """An open breaker: no attempt, call span Error CircuitOpenError, short_circuited."""
    inner = ScriptedTransport.of(reply(200))
    with pytest.raises(CircuitOpenError):
        await get(make(otel, [OpenBreaker()]), inner)
    assert inner.requests == []
    assert otel.attempts() == []
    call = otel.span("resilience.call")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["error.type"] == "CircuitOpenError"
    assert call.attributes["resilience.outcome"] == "short_circuited"
    assert call.attributes["resilience.attempt.count"] == 0
    assert events(call, "resilience.circuit_breaker.state_change") == [
        {
            "resilience.circuit_breaker.key": BREAKER_KEY,
            "resilience.circuit_breaker.state": "open",
            "resilience.circuit_breaker.previous_state": "closed",
        }
    ]
    (rejection,) = otel.points("resilience.circuit_breaker.rejections")
    assert rejection.value == 1
    assert rejection.attributes["error.type"] == "CircuitOpenError"
    (state,) = otel.points("resilience.circuit_breaker.state")
    assert state.value == 1
    assert state.attributes["resilience.circuit_breaker.state"] == "open"


async def test_breaker_state_counts_breakers_away_from_closed(otel: Otel) -> None:
    """closed→open→half_open→closed: the up-down counter ends at zero for each state."""
    instrument = make(otel).env.instrument
    for old, new in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]:
        instrument.on_event(CircuitStateChanged(key=BREAKER_KEY, old=old, new=new), None)
    values = {
        p.attributes["resilience.circuit_breaker.state"]: p.value
        for p in otel.points("resilience.circuit_breaker.state")
    }
    assert values == {"open": 0, "half_open": 0}


async def test_partial_failure_is_an_event(otel: Otel) -> None:
    """A split response with a failed part: resilience.partial event, outcome partial."""
    r = await get(make(otel, [ReportPartial()]), ScriptedTransport.of(reply(200)))
    assert r.status_code == 200
    call = otel.span("resilience.call")
    assert call.status.status_code is StatusCode.UNSET
    assert call.attributes is not None
    assert call.attributes["resilience.outcome"] == "partial"
    assert events(call, "resilience.partial") == [
        {"resilience.partial.failed": ("backend-b",), "resilience.partial.count": 1}
    ]


async def test_failed_response_without_raising(otel: Otel) -> None:
    """raise_on_failure=False: the final 404 comes back; the call is a failure."""
    r = await get(make(otel, raise_on_failure=False), ScriptedTransport.of(reply(404)))
    assert r.status_code == 404
    call = otel.span("resilience.call")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["error.type"] == "404"
    assert call.attributes["resilience.outcome"] == "failure"


async def test_cancellation_is_not_an_error(otel: Otel) -> None:
    """A call cancelled by its caller: outcome cancelled, no Error anywhere."""
    inner = HangingTransport()
    pipeline = make(otel)

    async def call() -> None:
        await get(pipeline, inner)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await inner.started.wait()
        tg.cancel_scope.cancel()

    span = otel.span("resilience.call")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilience.outcome"] == "cancelled"
    assert "error.type" not in span.attributes
    (attempt,) = otel.attempts()
    assert attempt.status.status_code is StatusCode.UNSET
    assert attempt.attributes is not None
    assert "error.type" not in attempt.attributes
    (point,) = otel.points("resilience.client.call.duration")
    assert point.attributes["resilience.outcome"] == "cancelled"


async def test_other_methods_follow_the_conventions(otel: Otel) -> None:
    """An unknown method: span name HTTP, method _OTHER, the original kept."""
    inner = ScriptedTransport.of(reply(200))
    async with httpx.AsyncClient(transport=ResilientTransport(make(otel), inner=inner)) as client:
        await client.request("PURGE", URL)
    (attempt,) = otel.attempts()
    assert attempt.name == "HTTP"
    assert attempt.attributes is not None
    assert attempt.attributes["http.request.method"] == "_OTHER"
    assert attempt.attributes["http.request.method_original"] == "PURGE"


# --- context and parenting ------------------------------------------------------------


async def test_calls_in_separate_tasks_parent_correctly(otel: Otel) -> None:
    """Five concurrent calls in their own tasks: each call span is a child of the
    caller's span, and each call's two attempts are children of that call."""
    inner = Watching(flaky=True)
    pipeline = make(otel, [Retry(max_attempts=3, backoff=ONE)])
    tracer = otel.tracer_provider.get_tracer("test")
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with tracer.start_as_current_span("caller") as caller:

            async def fetch(index: int) -> None:
                r = await client.get(f"{URL}/{index}")
                assert r.status_code == 200

            async with anyio.create_task_group() as tg:
                for index in range(5):
                    tg.start_soon(fetch, index)

    calls = [s for s in otel.spans() if s.name == "resilience.call"]
    assert len(calls) == 5
    assert {parent_id(s) for s in calls} == {caller.get_span_context().span_id}
    by_call: dict[int, set[str]] = {span_id(s): set() for s in calls}
    for attempt in otel.attempts():
        assert attempt.attributes is not None
        by_call[parent_id(attempt)].add(str(attempt.attributes["url.full"]))  # type: ignore[index]
    assert sorted(len(urls) for urls in by_call.values()) == [1] * 5  # one URL per call
    assert {next(iter(urls)) for urls in by_call.values()} == {f"{URL}/{i}" for i in range(5)}
    assert len(otel.attempts()) == 10
    assert set(inner.current) == {span_id(a) for a in otel.attempts()}
    # Nothing leaks into the caller's context once the calls are done.
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_suppressed_instrumentation_records_no_spans(otel: Otel) -> None:
    """Inside suppress_instrumentation (an exporter's own calls) nothing is recorded."""
    token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    )
    try:
        await get(make(otel), ScriptedTransport.of(reply(200)))
    finally:
        otel_context.detach(token)
    assert otel.spans() == []
    assert otel.points("resilience.client.call.duration") == []


# --- metrics --------------------------------------------------------------------------


async def test_metrics_of_a_retried_call(otel: Otel) -> None:
    """Retries, delays, call and attempt durations, with bounded attributes only."""
    script = ScriptedTransport.of(reply(503), reply(503), reply(200))
    await get(make(otel, [Retry(max_attempts=3, backoff=ONE)]), script, f"{URL}/42?id=7")

    (call,) = otel.points("resilience.client.call.duration")
    assert call.count == 1
    assert dict(call.attributes) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "resilience.vendor": "http",
        "resilience.pipeline": "http",
        "resilience.outcome": "success",
    }
    (retries,) = otel.points("resilience.client.call.retries")
    assert retries.value == 2
    assert retries.attributes["error.type"] == "503"
    (delay,) = otel.points("resilience.client.call.retry_delay")
    assert (delay.count, delay.sum) == (2, 3.0)
    attempts = {
        p.attributes.get("http.response.status_code"): p.count
        for p in otel.points("http.client.request.duration")
    }
    assert attempts == {503: 2, 200: 1}

    allowed = {
        "http.request.method",
        "server.address",
        "server.port",
        "http.response.status_code",
        "network.protocol.version",
        "error.type",
        "resilience.vendor",
        "resilience.pipeline",
        "resilience.outcome",
    }
    data = otel.reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert set(point.attributes) <= allowed, (metric.name, point.attributes)


async def test_telemetry_false_records_nothing(otel: Otel) -> None:
    """telemetry=False: no instrumentation, no span, no metric, whatever the providers."""
    pipeline = make(otel, telemetry=False)
    assert pipeline.env.instrument is None
    await get(pipeline, ScriptedTransport.of(reply(200)))
    assert otel.spans() == []
    assert otel.points("resilience.client.call.duration") == []


# --- no SDK, and providers set late -------------------------------------------------


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as if no SDK were ever configured (whatever other tests did)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)


@pytest.mark.usefixtures("no_sdk")
async def test_no_sdk_starts_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """API without SDK: the call runs as with telemetry off; no span is ever started."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was started without an SDK")

    for tracer_class in (trace.ProxyTracer, trace.NoOpTracer):
        monkeypatch.setattr(tracer_class, "start_span", forbidden)
        monkeypatch.setattr(tracer_class, "start_as_current_span", forbidden)
    capture = Capture()
    inner = Watching(flaky=True)
    pipeline = Pipeline([Retry(max_attempts=3, backoff=ONE), capture], clock=VirtualClock())
    assert pipeline.env.instrument is not None
    assert pipeline.env.instrument.records() is False
    r = await get(pipeline, inner)
    assert r.status_code == 200
    assert capture.seen == [None, None]
    assert inner.recording == [False, False]
    assert inner.traceparents == [None, None]
    with resilience.Pipeline().env.instrument.token_refresh(None, "initial"):
        pass  # the no-op scope


@pytest.mark.usefixtures("no_sdk")
async def test_global_provider_set_after_the_pipeline_is_used(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The global provider is resolved lazily: one set later is picked up."""
    pipeline = Pipeline(clock=VirtualClock())
    await get(pipeline, ScriptedTransport.of(reply(200)))
    assert otel.spans() == []
    # What trace.set_tracer_provider() does (it can only run once per process).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", otel.tracer_provider)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", otel.meter_provider)
    assert pipeline.env.instrument.records() is True
    await get(pipeline, ScriptedTransport.of(reply(200)))
    assert [s.name for s in otel.spans()] == ["resilience.call", "GET"]
    assert len(otel.points("resilience.client.call.duration")) == 1


async def test_noop_providers_record_nothing() -> None:
    """Explicit no-op providers: nothing records."""
    pipeline = Pipeline(
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=NoOpMeterProvider(),
    )
    assert pipeline.env.instrument.records() is False


async def test_metrics_only(otel: Otel) -> None:
    """A meter provider without tracing: metrics recorded, no span started."""
    pipeline = Pipeline(
        [Retry(max_attempts=2, backoff=ONE)],
        clock=VirtualClock(),
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=otel.meter_provider,
    )
    await get(pipeline, ScriptedTransport.of(reply(503), reply(200)))
    assert otel.spans() == []
    assert [p.count for p in otel.points("http.client.request.duration")] == [1, 1]
    (retries,) = otel.points("resilience.client.call.retries")
    assert retries.value == 1


# --- secrets -----------------------------------------------------------------------


SECRETS = ("SECRET", "hunter2", "tok-", "Bearer")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict) or hasattr(value, "items"):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    else:
        yield str(value)


async def test_no_secret_in_any_attribute_event_metric_or_log(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """Userinfo, sensitive query values and tokens appear nowhere we record."""
    caplog.set_level(logging.DEBUG, logger="resilience")
    url = (
        f"https://alice:hunter2@{HOST}/v1/devices?access_token=SECRET1&page=2"
        "&api_key=SECRET2&Signature=SECRET3&client_secret=SECRET4&code=SECRET5"
    )
    layers = [
        ReportPartial(),
        Retry(max_attempts=3, backoff=ONE),
        AuthRefresh(StaticToken("tok-SECRET6")),
    ]
    script = ScriptedTransport.of(reply(503), reply(401), reply(200))
    await get(make(otel, layers), script, url)
    instrument = make(otel, [OpenBreaker()])
    with pytest.raises(CircuitOpenError):
        await get(instrument, script, url)

    recorded: list[str] = []
    for span in otel.spans():
        recorded.append(span.name)
        recorded.extend(strings(dict(span.attributes or {})))
        recorded.append(span.status.description or "")
        for event in span.events:
            recorded.append(event.name)
            recorded.extend(strings(dict(event.attributes or {})))
    data = otel.reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    recorded.extend(strings(dict(point.attributes)))
    recorded.extend(record.getMessage() for record in caplog.records)
    assert recorded
    leaks = [text for text in recorded for secret in SECRETS if secret in text]
    assert leaks == []
    urls = {a.attributes["url.full"] for a in otel.attempts()}  # type: ignore[index]
    assert urls == {
        f"https://REDACTED:REDACTED@{HOST}/v1/devices?access_token=REDACTED&page=2"
        "&api_key=REDACTED&Signature=REDACTED&client_secret=REDACTED&code=REDACTED"
    }
    messages = [record.getMessage() for record in caplog.records]
    assert any("partial failure" in m and "backend-b" in m and "req-42" in m for m in messages)
    assert any("circuit breaker" in m and "closed -> open" in m for m in messages)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.test/a/b", "https://h.test/a/b"),
        ("http://h.test:8080/?q=1", "http://h.test:8080/?q=1"),
        ("https://u:p@h.test/", "https://REDACTED:REDACTED@h.test/"),
        ("https://u@h.test/", "https://REDACTED:REDACTED@h.test/"),
        ("https://h.test/?token=a&x=b", "https://h.test/?token=REDACTED&x=b"),
        (
            "https://h.test/?X-Amz-Security-Token=a&sig=b",
            "https://h.test/?X-Amz-Security-Token=REDACTED&sig=REDACTED",
        ),
        (
            "https://h.test/?refresh_token=a&key=b&password=c",
            "https://h.test/?refresh_token=REDACTED&key=REDACTED&password=REDACTED",
        ),
        ("https://h.test/?access%5Ftoken=a", "https://h.test/?access%5Ftoken=REDACTED"),
        ("https://h.test/?flag&secret=", "https://h.test/?flag&secret=REDACTED"),
        ("https://h.test/p%20q?a=%20#frag", "https://h.test/p%20q?a=%20#frag"),
        (
            "https://h.test/cb#access_token=a&state=s",
            "https://h.test/cb#access_token=REDACTED&state=s",
        ),
        ("https://h.test/?token=a#f%20g", "https://h.test/?token=REDACTED#f%20g"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Credentials and sensitive query (and fragment) values are replaced; the rest,
    the fragment included as the conventions ask, is kept as sent."""
    assert redact_url(httpx.URL(url)) == expected


# --- the httpx instrumentation's request hook --------------------------------------


async def test_request_hook_copies_the_resend_count(otel: Otel) -> None:
    """request_hook sets http.request.resend_count from the request's extensions."""
    tracer = otel.tracer_provider.get_tracer("test")
    for count in (None, 0, 2):
        request = httpx.Request("GET", URL)
        if count is not None:
            request.extensions[resilience.RESEND_COUNT_EXTENSION] = count
        span = tracer.start_span(f"hook-{count}")
        await resilience.request_hook(span, request)
        span.end()
    await resilience.request_hook(trace.INVALID_SPAN, object())
    resend = {s.name: (s.attributes or {}).get("http.request.resend_count") for s in otel.spans()}
    assert resend == {"hook-None": None, "hook-0": None, "hook-2": 2}


async def test_real_circuit_breaker_opens_and_rejects(otel: Otel) -> None:
    """With the real CircuitBreaker: the call that opens it carries the state change
    event; the next call is short-circuited and counted as a rejection."""
    inner = ScriptedTransport.of(reply(503))
    pipeline = make(otel, [CircuitBreaker(failure_ratio=0.5, minimum_calls=2)])
    for _ in range(2):
        with pytest.raises(RetriesExhausted):
            await get(pipeline, inner)
    with pytest.raises(CircuitOpenError):
        await get(pipeline, inner)
    assert len(inner.requests) == 2

    first, opening, rejected = [s for s in otel.spans() if s.name == "resilience.call"]
    assert events(first, "resilience.circuit_breaker.state_change") == []
    (change,) = events(opening, "resilience.circuit_breaker.state_change")
    assert change["resilience.circuit_breaker.state"] == "open"
    assert change["resilience.circuit_breaker.previous_state"] == "closed"
    assert change["resilience.circuit_breaker.key"] == BREAKER_KEY
    assert rejected.attributes is not None
    assert rejected.attributes["resilience.outcome"] == "short_circuited"
    assert rejected.attributes["error.type"] == "CircuitOpenError"
    assert rejected.status.status_code is StatusCode.ERROR
    (rejection,) = otel.points("resilience.circuit_breaker.rejections")
    assert rejection.value == 1
    (state,) = otel.points("resilience.circuit_breaker.state")
    assert (state.attributes["resilience.circuit_breaker.state"], state.value) == ("open", 1)
