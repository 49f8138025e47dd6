"""Telemetry of the real layers, end to end against the Derapi simulator.

``tests/test_telemetry.py`` checks the instrumentation with test-only layers; here
every span, event, metric and log line comes from the layers a user runs:
``resilience.standard_pipeline("derapi", ...)`` (Timeout, PartialFailureSplitter,
Retry, CircuitBreaker, AuthRefresh with Derapi's OAuth2 flow, Timeout) against
``resilience_derapi.simulator(...)`` over ``httpx.ASGITransport``, on a
``VirtualClock``. Each test checks the span tree (parentage), every attribute and
event by name and value against ``TELEMETRY.md``, the metrics (names, units,
bounded attributes) and scans everything recorded for the client secret and the
tokens the simulator issued.

Providers are passed to the pipeline (``tracer_provider=``/``meter_provider=``);
no test sets the global ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import attrs
import httpx
import pytest
import resilience_derapi
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from resilience_derapi import type_uri
from resilience_derapi.testing import Backend, DerapiSimulator

import resilience
from resilience import (
    CircuitBreaker,
    ExponentialBackoff,
    PartialFailureSplitter,
    Pipeline,
    ResilientTransport,
    Retry,
)
from resilience._telemetry import RESEND_COUNT_EXTENSION, redact_url
from resilience.errors import (
    CircuitOpenError,
    PartialFailureError,
    PermanentError,
    RetriesExhausted,
)
from resilience.testing import (
    Fault,
    FaultPlan,
    HangingTransport,
    ScriptedTransport,
    VirtualClock,
    reply,
)

pytestmark = pytest.mark.anyio

BASE = "http://derapi.test"
HOST = "derapi.test"
CLIENT_ID = "telemetry-client-id"
SECRET = "telemetry-client-secret-NEVER-RECORDED"
BREAKER_KEY = "http://derapi.test:80"
NO_JITTER = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")

# --- what TELEMETRY.md allows -------------------------------------------------------

CALL_ATTRIBUTES = {
    "http.request.method",
    "server.address",
    "server.port",
    "resilience.vendor",
    "resilience.pipeline",
    "resilience.attempt.count",
    "resilience.outcome",
    "error.type",
}
CALL_REQUIRED = CALL_ATTRIBUTES - {"error.type"}
ATTEMPT_ATTRIBUTES = {
    "http.request.method",
    "server.address",
    "server.port",
    "url.full",
    "http.response.status_code",
    "http.request.resend_count",
    "error.type",
    "resilience.verdict",
    "resilience.problem.code",
    "resilience.problem.request_id",
    "resilience.vendor",
    "resilience.pipeline",
    "network.protocol.version",
}
ATTEMPT_REQUIRED = {
    "http.request.method",
    "server.address",
    "server.port",
    "url.full",
    "resilience.verdict",
    "resilience.vendor",
    "resilience.pipeline",
}
OUTCOMES = {"success", "failure", "short_circuited", "timeout", "cancelled", "partial"}
VERDICTS = {"accept", "retry", "refresh_auth", "split", "fail"}
EVENT_ATTRIBUTES = {
    "resilience.retry": {
        "resilience.retry.attempt",
        "resilience.retry.delay",
        "resilience.retry.reason",
    },
    "resilience.circuit_breaker.state_change": {
        "resilience.circuit_breaker.key",
        "resilience.circuit_breaker.state",
        "resilience.circuit_breaker.previous_state",
    },
    "resilience.partial": {"resilience.partial.failed", "resilience.partial.count"},
}
_IDENTITY = {"resilience.vendor", "resilience.pipeline"}
_CALL_LABELS = {
    "http.request.method",
    "server.address",
    "resilience.outcome",
    "error.type",
    *_IDENTITY,
}
_RETRY_LABELS = {"http.request.method", "server.address", "error.type", *_IDENTITY}
METRICS: dict[str, tuple[str, set[str]]] = {
    "resilience.client.call.duration": ("s", _CALL_LABELS),
    "resilience.client.call.retries": ("{retry}", _RETRY_LABELS),
    "resilience.client.call.retry_delay": ("s", _RETRY_LABELS),
    "resilience.circuit_breaker.rejections": ("{call}", _CALL_LABELS),
    "resilience.circuit_breaker.state": (
        "{breaker}",
        {"resilience.circuit_breaker.key", "resilience.circuit_breaker.state", *_IDENTITY},
    ),
    "resilience.auth.refreshes": (
        "{refresh}",
        {"resilience.auth.trigger", "error.type", *_IDENTITY},
    ),
    "http.client.request.duration": (
        "s",
        {
            "http.request.method",
            "server.address",
            "server.port",
            "http.response.status_code",
            "network.protocol.version",
            "error.type",
            *_IDENTITY,
        },
    ),
}


# --- the harness -------------------------------------------------------------------------


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

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``, in start order."""
        return [s for s in self.spans() if s.name == name]

    def calls(self) -> list[ReadableSpan]:
        """The ``resilience.call`` spans, in start order."""
        return self.named("resilience.call")

    def attempts(self, call: ReadableSpan | None = None) -> list[ReadableSpan]:
        """resilience's CLIENT spans (of ``call``'s trace when given), in start order."""
        found = [
            s
            for s in self.spans()
            if s.kind is SpanKind.CLIENT
            and s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "resilience"
        ]
        if call is not None:
            found = [s for s in found if trace_id(s) == trace_id(call)]
        return found

    def metrics(self) -> dict[str, Any]:
        """The metrics of the ``resilience`` meter, by name."""
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name == "resilience":
                    for metric in scope.metrics:
                        found[metric.name] = metric
        return found

    def points(self, name: str) -> list[Any]:
        """Data points of the metric ``name`` (none when it was never recorded)."""
        metric = self.metrics().get(name)
        return list(metric.data.data_points) if metric is not None else []


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


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the ``resilience`` logger, DEBUG included."""
    caplog.set_level(logging.DEBUG, logger="resilience")
    return caplog


@attrs.define
class Derapi:
    """The Derapi preset with telemetry, a client on the simulator, what it issued."""

    client: httpx.AsyncClient
    sim: DerapiSimulator
    clock: VirtualClock
    pipeline: Pipeline
    tokens: list[str]
    """Every access token the simulator issued."""

    def secrets(self) -> list[str]:
        """Strings that must never be recorded."""
        return [SECRET, *self.tokens]


def derapi(
    otel: Otel,
    backends: Mapping[str, Backend],
    *,
    plan: FaultPlan | None = None,
    **overrides: Any,
) -> Derapi:
    """The Derapi preset on a virtual clock, recording into ``otel``."""
    clock = VirtualClock()
    sim = resilience_derapi.simulator(
        plan=plan, clock=clock, client_id=CLIENT_ID, client_secret=SECRET, backends=backends
    )
    tokens: list[str] = []
    issue = sim.issue_token

    def spy(subject: str, *, ttl: float | None = None) -> tuple[str, float]:
        token, life = issue(subject, ttl=ttl)
        tokens.append(token)
        return token, life

    sim.issue_token = spy  # type: ignore[method-assign]
    auth = resilience_derapi.token_provider(
        client_id=CLIENT_ID, client_secret=SECRET, base_url=BASE, clock=clock
    )
    overrides.setdefault("backoff", NO_JITTER)
    pipeline = resilience.standard_pipeline(
        "derapi",
        auth=auth,
        clock=clock,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        **overrides,
    )
    app: Any = sim
    transport = ResilientTransport(pipeline, inner=httpx.ASGITransport(app=app))
    client = httpx.AsyncClient(transport=transport, base_url=BASE)
    return Derapi(client, sim, clock, pipeline, tokens)


# --- checks shared by every test ------------------------------------------------------


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def resend_counts(spans: list[ReadableSpan]) -> list[int | None]:
    return [attrs_of(s).get("http.request.resend_count") for s in spans]


def check_tree(otel: Otel) -> None:
    """Every span follows TELEMETRY.md: names, kinds, parents, attribute sets."""
    spans = otel.spans()
    by_id = {span_id(s): s for s in spans}
    for span in spans:
        attributes = attrs_of(span)
        if span.name == "resilience.call":
            assert span.kind is SpanKind.INTERNAL
            assert span.parent is None  # no span was current around the calls
            assert CALL_REQUIRED <= attributes.keys() <= CALL_ATTRIBUTES, attributes
            assert attributes["resilience.outcome"] in OUTCOMES
            assert attributes["resilience.vendor"] == "derapi"
            assert attributes["server.address"] == HOST
            assert attributes["server.port"] == 80
            # Error and error.type only on final failure, and always together.
            failed = span.status.status_code is StatusCode.ERROR
            assert failed == ("error.type" in attributes)
            assert span.status.status_code is not StatusCode.OK
            for event in span.events:
                assert event.name in EVENT_ATTRIBUTES, event.name
                assert set(event.attributes or {}) == EVENT_ATTRIBUTES[event.name]
            continue
        parent = by_id.get(parent_id(span) or 0)
        assert parent is not None, f"{span.name} has no recorded parent"
        assert parent.name == "resilience.call"
        assert trace_id(parent) == trace_id(span)
        if span.name == "resilience.auth.refresh":
            assert span.kind is SpanKind.INTERNAL
            assert attributes["resilience.auth.trigger"] in {"initial", "proactive", "rejected"}
            assert attributes.keys() <= {
                "resilience.auth.trigger",
                "resilience.vendor",
                "resilience.pipeline",
                "error.type",
            }
            continue
        assert span.kind is SpanKind.CLIENT
        assert span.name == attributes["http.request.method"]
        assert ATTEMPT_REQUIRED <= attributes.keys() <= ATTEMPT_ATTRIBUTES, attributes
        assert attributes["resilience.verdict"] in VERDICTS
        assert attributes["url.full"].startswith(f"{BASE}/")
        resend = attributes.get("http.request.resend_count")
        assert resend is None or (isinstance(resend, int) and resend >= 1)
        failed = span.status.status_code is StatusCode.ERROR
        assert failed == ("error.type" in attributes)
    # Within each call, the resend count is absent first, then 1, 2, ...
    for call in otel.calls():
        counts = resend_counts(otel.attempts(call))
        assert counts == [None, *range(1, len(counts))][: len(counts)]
        assert attrs_of(call)["resilience.attempt.count"] == len(counts)


def check_metrics(otel: Otel, forbidden: list[str]) -> None:
    """Known names and units only; attributes from the bounded set, no URL or id."""
    for name, metric in otel.metrics().items():
        assert name in METRICS, name
        unit, allowed = METRICS[name]
        assert metric.unit == unit, name
        for point in metric.data.data_points:
            attributes = dict(point.attributes)
            assert attributes.keys() <= allowed, (name, attributes)
            for value in attributes.values():
                text = str(value)
                assert "/sites" not in text, (name, attributes)
                assert "?" not in text, (name, attributes)
                for item in forbidden:
                    assert item not in text, (name, attributes)


def recorded_text(otel: Otel, logs: pytest.LogCaptureFixture) -> list[str]:
    """Everything recorded, as strings: spans, events, metric attributes, log lines."""
    texts: list[str] = []
    for span in otel.spans():
        texts.append(span.name)
        texts.append(str(span.status.description))
        texts.extend(f"{k}={v!r}" for k, v in attrs_of(span).items())
        for event in span.events:
            texts.append(event.name)
            texts.extend(f"{k}={v!r}" for k, v in (event.attributes or {}).items())
    for metric in otel.metrics().values():
        for point in metric.data.data_points:
            texts.extend(f"{k}={v!r}" for k, v in dict(point.attributes).items())
    for record in logs.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_text:
            texts.append(record.exc_text)
    return texts


def check_no_secret(otel: Otel, logs: pytest.LogCaptureFixture, api: Derapi) -> None:
    """No client secret, token or Authorization value anywhere."""
    secrets = api.secrets()
    assert len(secrets) >= 2, "the scan must know at least one issued token"
    for text in recorded_text(otel, logs):
        for secret in secrets:
            assert secret not in text, text
        assert "Bearer " not in text, text
        assert "Basic " not in text, text


def item_ids(api: Derapi, *backends: str) -> list[str]:
    return [str(item["id"]) for backend in backends for item in api.sim.items(backend)]


def check_all(otel: Otel, logs: pytest.LogCaptureFixture, api: Derapi, *backends: str) -> None:
    check_tree(otel)
    check_metrics(otel, [*api.secrets(), *item_ids(api, *backends)])
    check_no_secret(otel, logs, api)


# --- partial failures: the real PartialFailureSplitter ----------------------------------


def mixed_backends() -> dict[str, Backend]:
    """One healthy, one rejecting the vendor credentials, one flapping, one down."""
    return {
        "sma": Backend(),
        "solis": Backend.rejecting_credentials(),
        "solaredge": Backend.flapping(2),
        "tesla": Backend.timing_out(),
    }


async def test_partial_failure_with_the_real_splitter(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """A list with failed backends: one call span over the token fetch, the list and
    every narrowed re-request (each a resend), a resilience.partial event naming the
    parts that still failed, outcome partial, and the call span left UNSET."""
    api = derapi(otel, mixed_backends())
    async with api.client:
        response = await api.client.get("/sites")
    assert response.status_code == 200
    assert api.clock.sleeps == [1.0, 2.0, 4.0]  # the splitter's rounds

    (call,) = otel.calls()
    assert attrs_of(call) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
        "resilience.attempt.count": 6,
        "resilience.outcome": "partial",
    }
    assert call.status.status_code is StatusCode.UNSET
    assert events(call, "resilience.partial") == [
        {"resilience.partial.failed": ("solis", "tesla"), "resilience.partial.count": 2}
    ]
    # One retry event per re-request round of the splitter (no Retry-layer retry).
    rounds = events(call, "resilience.retry")
    assert [e["resilience.retry.attempt"] for e in rounds] == [1, 2, 3]
    assert [e["resilience.retry.delay"] for e in rounds] == [1.0, 2.0, 4.0]

    (refresh,) = otel.named("resilience.auth.refresh")
    assert parent_id(refresh) == span_id(call)
    assert attrs_of(refresh) == {
        "resilience.auth.trigger": "initial",
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }

    attempts = otel.attempts()
    assert {parent_id(a) for a in attempts} == {span_id(call)}
    assert resend_counts(attempts) == [None, 1, 2, 3, 4, 5]
    assert [attrs_of(a)["url.full"] for a in attempts] == [
        f"{BASE}/sites",
        f"{BASE}/sites?vendor=solaredge",
        f"{BASE}/sites?vendor=tesla",
        f"{BASE}/sites?vendor=solaredge",
        f"{BASE}/sites?vendor=tesla",
        f"{BASE}/sites?vendor=tesla",
    ]
    first = attrs_of(attempts[0])
    assert first == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "url.full": f"{BASE}/sites",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "resilience.verdict": "split",
        "resilience.problem.code": "partial-success",
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }
    # A 200 with failed parts is delivered, not an error; the re-request that
    # recovered solaredge is a plain accept.
    assert [a.status.status_code for a in attempts] == [StatusCode.UNSET] * 6
    assert [attrs_of(a)["resilience.verdict"] for a in attempts] == [
        "split",
        "split",
        "split",
        "accept",
        "split",
        "split",
    ]
    # The token request went to the same host, inside the refresh span, before any attempt.
    assert (refresh.end_time or 0) <= (attempts[0].start_time or 0)

    (duration,) = otel.points("resilience.client.call.duration")
    assert dict(duration.attributes) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
        "resilience.outcome": "partial",
    }
    (per_attempt,) = otel.points("http.client.request.duration")
    assert per_attempt.count == 6
    assert dict(per_attempt.attributes) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }
    (refreshes,) = otel.points("resilience.auth.refreshes")
    assert (dict(refreshes.attributes), refreshes.value) == (
        {
            "resilience.auth.trigger": "initial",
            "resilience.vendor": "derapi",
            "resilience.pipeline": "derapi",
        },
        1,
    )
    partial_logs = [r.getMessage() for r in logs.records if "partial failure" in r.getMessage()]
    assert len(partial_logs) == 1
    assert "vendor derapi" in partial_logs[0]
    assert "solis" in partial_logs[0]
    assert "tesla" in partial_logs[0]
    check_all(otel, logs, api, "sma", "solis", "solaredge", "tesla")


async def test_strict_partial_failure_fails_the_call(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """strict=True: PartialFailureError; the call span is Error with that error.type,
    its outcome still partial, and the partial event is there."""
    api = derapi(otel, mixed_backends(), splitter=PartialFailureSplitter(strict=True))
    async with api.client:
        with pytest.raises(PartialFailureError):
            await api.client.get("/sites")
    (call,) = otel.calls()
    attributes = attrs_of(call)
    assert call.status.status_code is StatusCode.ERROR
    assert attributes["error.type"] == "PartialFailureError"
    assert attributes["resilience.outcome"] == "partial"
    assert events(call, "resilience.partial") == [
        {"resilience.partial.failed": ("solis", "tesla"), "resilience.partial.count": 2}
    ]
    (duration,) = otel.points("resilience.client.call.duration")
    assert dict(duration.attributes)["error.type"] == "PartialFailureError"
    check_all(otel, logs, api, "sma", "solis", "solaredge", "tesla")


async def test_part_breaker_state_change_lands_on_the_call_span(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """The splitter's per-backend breaker (key derapi:tesla) opens during a call:
    the state change is an event on that call's span and moves the gauge."""
    breaker = CircuitBreaker(minimum_calls=3, failure_ratio=0.5, window=60.0, break_duration=30.0)
    api = derapi(
        otel,
        {"sma": Backend(), "tesla": Backend.timing_out()},
        breaker=breaker,
        splitter=PartialFailureSplitter(max_rounds=1),
    )
    async with api.client:
        for _ in range(3):
            response = await api.client.get("/sites")
            assert response.status_code == 200
    calls = otel.calls()
    assert len(calls) == 3
    changes = [events(call, "resilience.circuit_breaker.state_change") for call in calls]
    assert changes == [
        [],
        [
            {
                "resilience.circuit_breaker.key": "derapi:tesla",
                "resilience.circuit_breaker.state": "open",
                "resilience.circuit_breaker.previous_state": "closed",
            }
        ],
        [],
    ]
    assert [attrs_of(c)["resilience.outcome"] for c in calls] == ["partial"] * 3
    # Call 2's list opened tesla's breaker: from then on tesla is not re-asked.
    assert [attrs_of(c)["resilience.attempt.count"] for c in calls] == [2, 1, 1]
    (state,) = otel.points("resilience.circuit_breaker.state")
    assert (dict(state.attributes), state.value) == (
        {
            "resilience.circuit_breaker.key": "derapi:tesla",
            "resilience.circuit_breaker.state": "open",
            "resilience.vendor": "derapi",
            "resilience.pipeline": "derapi",
        },
        1,
    )
    assert otel.points("resilience.circuit_breaker.rejections") == []  # no call was rejected
    assert any(
        "circuit breaker derapi:tesla: closed -> open (vendor derapi)" in r.getMessage()
        for r in logs.records
    )
    check_all(otel, logs, api, "sma", "tesla")


# --- retries: the real Retry layer -------------------------------------------------------


async def test_retries_then_success_leave_the_call_unset(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """A 502 then a 429 then a 200: two Error attempts and a resend per retry, one
    resilience.retry event per retry (attempt, delay, reason), the call span UNSET."""
    api = derapi(otel, {"sma": Backend(script=["backend-server-error", "too-many-requests"])})
    site = api.sim.items("sma")[0]["id"]
    async with api.client:
        response = await api.client.get(f"/sites/{site}")
    assert response.status_code == 200
    assert len(api.clock.sleeps) == 2

    (call,) = otel.calls()
    assert call.status.status_code is StatusCode.UNSET
    assert attrs_of(call) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
        "resilience.attempt.count": 3,
        "resilience.outcome": "success",
    }
    server_error, too_many, ok = otel.attempts()
    assert attrs_of(server_error) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "url.full": f"{BASE}/sites/{site}",
        "http.response.status_code": 502,
        "network.protocol.version": "1.1",
        "error.type": "502",
        "resilience.verdict": "retry",
        "resilience.problem.code": type_uri("backend-server-error"),
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }
    assert attrs_of(too_many)["http.response.status_code"] == 429
    assert attrs_of(too_many)["error.type"] == "429"
    assert attrs_of(too_many)["http.request.resend_count"] == 1
    assert attrs_of(too_many)["resilience.problem.code"] == type_uri("too-many-requests")
    assert attrs_of(ok)["http.request.resend_count"] == 2
    assert attrs_of(ok)["resilience.verdict"] == "accept"
    assert "error.type" not in attrs_of(ok)
    assert [a.status.status_code for a in (server_error, too_many, ok)] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert events(call, "resilience.retry") == [
        {
            "resilience.retry.attempt": 1,
            "resilience.retry.delay": api.clock.sleeps[0],
            "resilience.retry.reason": type_uri("backend-server-error"),
        },
        {
            "resilience.retry.attempt": 2,
            "resilience.retry.delay": api.clock.sleeps[1],
            "resilience.retry.reason": type_uri("too-many-requests"),
        },
    ]
    # The retry event is recorded before the wait, between the attempts.
    retry_times = [e.timestamp for e in call.events if e.name == "resilience.retry"]
    assert (server_error.end_time or 0) <= retry_times[0] <= (too_many.start_time or 0)

    labels = {
        "http.request.method": "GET",
        "server.address": HOST,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }
    retries = {
        p.attributes["error.type"]: p.value for p in otel.points("resilience.client.call.retries")
    }
    assert retries == {type_uri("backend-server-error"): 1, type_uri("too-many-requests"): 1}
    for point in otel.points("resilience.client.call.retries"):
        assert dict(point.attributes).keys() == {*labels, "error.type"}
    delays = otel.points("resilience.client.call.retry_delay")
    assert sum(p.sum for p in delays) == pytest.approx(sum(api.clock.sleeps))
    assert sum(p.count for p in delays) == 2
    (duration,) = otel.points("resilience.client.call.duration")
    assert dict(duration.attributes) == {**labels, "resilience.outcome": "success"}
    by_status = {
        p.attributes["http.response.status_code"]: dict(p.attributes)
        for p in otel.points("http.client.request.duration")
    }
    assert sorted(by_status) == [200, 429, 502]
    assert by_status[502]["error.type"] == "502"
    assert "error.type" not in by_status[200]
    retry_logs = [r.getMessage() for r in logs.records if "resilience retry" in r.getMessage()]
    assert len(retry_logs) == 2
    check_all(otel, logs, api, "sma")


async def test_exhausted_retries_fail_the_call(otel: Otel, logs: pytest.LogCaptureFixture) -> None:
    """Derapi Internal Error: retried twice, then permanent; the call span is Error
    with the raised error's class; every attempt is Error."""
    plan = FaultPlan(errors=[Fault(code=type_uri("derapi-internal-error"), path="/sites/*")])
    api = derapi(otel, {"sma": Backend()}, plan=plan, max_attempts=6)
    site = api.sim.items("sma")[0]["id"]
    async with api.client:
        with pytest.raises(PermanentError):
            await api.client.get(f"/sites/{site}")
    (call,) = otel.calls()
    assert call.status.status_code is StatusCode.ERROR
    assert attrs_of(call)["error.type"] == "PermanentError"
    assert attrs_of(call)["resilience.outcome"] == "failure"
    attempts = otel.attempts()
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR] * 3
    assert [attrs_of(a)["resilience.verdict"] for a in attempts] == ["retry", "retry", "fail"]
    assert {attrs_of(a)["resilience.problem.code"] for a in attempts} == {
        type_uri("derapi-internal-error")
    }
    status = attrs_of(attempts[0])["http.response.status_code"]
    assert {attrs_of(a)["error.type"] for a in attempts} == {str(status)}
    assert [e["resilience.retry.attempt"] for e in events(call, "resilience.retry")] == [1, 2]
    (duration,) = otel.points("resilience.client.call.duration")
    assert dict(duration.attributes)["resilience.outcome"] == "failure"
    assert dict(duration.attributes)["error.type"] == "PermanentError"
    check_all(otel, logs, api, "sma")


# --- auth: the real AuthRefresh ------------------------------------------------------------


async def test_refresh_and_replay(otel: Otel, logs: pytest.LogCaptureFixture) -> None:
    """Our token expired: the 401 attempt is Error (refresh_auth), a refresh span
    (trigger rejected) runs between it and the replay, and the replay carries
    resend_count 1; the call span stays UNSET."""
    api = derapi(otel, {"sma": Backend()})
    async with api.client:
        await api.client.get("/sites")
        api.sim.expire_tokens()
        api.clock.advance(1.0)  # tokens carry whole-second times: the next one is newer
        response = await api.client.get("/sites")
    assert response.status_code == 200
    assert len(api.tokens) == 2

    first, second = otel.calls()
    initial, rejected_refresh = otel.named("resilience.auth.refresh")
    assert parent_id(initial) == span_id(first)
    assert parent_id(rejected_refresh) == span_id(second)
    assert attrs_of(initial)["resilience.auth.trigger"] == "initial"
    assert attrs_of(rejected_refresh) == {
        "resilience.auth.trigger": "rejected",
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
    }
    assert rejected_refresh.status.status_code is StatusCode.UNSET

    rejected, replay = otel.attempts(second)
    assert attrs_of(rejected)["http.response.status_code"] == 401
    assert attrs_of(rejected)["error.type"] == "401"
    assert attrs_of(rejected)["resilience.verdict"] == "refresh_auth"
    assert "http.request.resend_count" not in attrs_of(rejected)
    assert rejected.status.status_code is StatusCode.ERROR
    assert attrs_of(replay)["http.request.resend_count"] == 1
    assert attrs_of(replay)["resilience.verdict"] == "accept"
    assert replay.status.status_code is StatusCode.UNSET
    assert (rejected.end_time or 0) <= (rejected_refresh.start_time or 0)
    assert (rejected_refresh.end_time or 0) <= (replay.start_time or 0)

    assert second.status.status_code is StatusCode.UNSET
    assert attrs_of(second)["resilience.outcome"] == "success"
    assert attrs_of(second)["resilience.attempt.count"] == 2
    assert events(second, "resilience.retry") == []  # a replay is not a Retry retry

    counts = {
        p.attributes["resilience.auth.trigger"]: p.value
        for p in otel.points("resilience.auth.refreshes")
    }
    assert counts == {"initial": 1, "rejected": 1}
    check_all(otel, logs, api, "sma")


async def test_proactive_refresh(otel: Otel, logs: pytest.LogCaptureFixture) -> None:
    """A token near expiry is refreshed before sending: trigger proactive, no resend."""
    api = derapi(otel, {"sma": Backend()})
    async with api.client:
        await api.client.get("/sites")
        api.clock.advance(3590.0)  # past the refresh point, before the 3600 s expiry
        await api.client.get("/sites")
    _, second = otel.calls()
    (refresh,) = [
        s for s in otel.named("resilience.auth.refresh") if trace_id(s) == trace_id(second)
    ]
    assert attrs_of(refresh)["resilience.auth.trigger"] == "proactive"
    assert parent_id(refresh) == span_id(second)
    (attempt,) = otel.attempts(second)
    assert "http.request.resend_count" not in attrs_of(attempt)
    counts = {
        p.attributes["resilience.auth.trigger"]: p.value
        for p in otel.points("resilience.auth.refreshes")
    }
    assert counts == {"initial": 1, "proactive": 1}
    check_all(otel, logs, api, "sma")


# --- the real CircuitBreaker ----------------------------------------------------------------


async def test_breaker_opens_rejects_and_closes(otel: Otel, logs: pytest.LogCaptureFixture) -> None:
    """Two failures open the host's breaker (event on that call), the next call is
    rejected (call span Error CircuitOpenError, short_circuited, no attempt, the
    rejection counted), and after the break a probe closes it again."""
    breaker = CircuitBreaker(minimum_calls=2, failure_ratio=0.5, window=60.0, break_duration=30.0)
    backend = Backend(script=["backend-server-error", "backend-server-error"])
    api = derapi(otel, {"sma": backend}, breaker=breaker, max_attempts=2)
    site = api.sim.items("sma")[0]["id"]
    async with api.client:
        with pytest.raises(RetriesExhausted):
            await api.client.get(f"/sites/{site}")
        with pytest.raises(CircuitOpenError):
            await api.client.get(f"/sites/{site}")
        api.clock.advance(30.0)
        response = await api.client.get(f"/sites/{site}")
    assert response.status_code == 200

    failed, rejected, probe = otel.calls()

    def change(old: str, new: str) -> dict[str, str]:
        return {
            "resilience.circuit_breaker.key": BREAKER_KEY,
            "resilience.circuit_breaker.state": new,
            "resilience.circuit_breaker.previous_state": old,
        }

    state_change = "resilience.circuit_breaker.state_change"
    assert events(failed, state_change) == [change("closed", "open")]
    assert attrs_of(failed)["resilience.outcome"] == "failure"
    assert attrs_of(failed)["error.type"] == "RetriesExhausted"
    assert [a.status.status_code for a in otel.attempts(failed)] == [StatusCode.ERROR] * 2

    assert events(rejected, state_change) == []
    assert rejected.status.status_code is StatusCode.ERROR
    assert attrs_of(rejected) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 80,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
        "resilience.attempt.count": 0,
        "resilience.outcome": "short_circuited",
        "error.type": "CircuitOpenError",
    }
    assert otel.attempts(rejected) == []

    assert events(probe, state_change) == [
        change("open", "half_open"),
        change("half_open", "closed"),
    ]
    assert probe.status.status_code is StatusCode.UNSET
    assert attrs_of(probe)["resilience.outcome"] == "success"

    (rejection,) = otel.points("resilience.circuit_breaker.rejections")
    assert rejection.value == 1
    assert dict(rejection.attributes) == {
        "http.request.method": "GET",
        "server.address": HOST,
        "resilience.vendor": "derapi",
        "resilience.pipeline": "derapi",
        "resilience.outcome": "short_circuited",
        "error.type": "CircuitOpenError",
    }
    states = {
        p.attributes["resilience.circuit_breaker.state"]: p.value
        for p in otel.points("resilience.circuit_breaker.state")
    }
    assert states == {"open": 0, "half_open": 0}  # back to closed: nothing away from it
    outcomes = sorted(
        p.attributes["resilience.outcome"] for p in otel.points("resilience.client.call.duration")
    )
    assert outcomes == ["failure", "short_circuited", "success"]
    messages = [r.getMessage() for r in logs.records]
    assert f"resilience circuit breaker {BREAKER_KEY}: closed -> open (vendor derapi)" in messages
    check_all(otel, logs, api, "sma")


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrent_calls_keep_their_own_trees(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """Calls run in separate anyio tasks (asyncio and trio): each attempt and refresh
    is a child of its own call, in its own trace."""
    api = derapi(otel, {"sma": Backend(), "solaredge": Backend.flapping(1)})
    sites = [api.sim.items(name)[0]["id"] for name in ("sma", "solaredge")]
    async with api.client, anyio.create_task_group() as tg:
        for site in sites:
            tg.start_soon(api.client.get, f"/sites/{site}")
        tg.start_soon(api.client.get, "/sites")
    calls = otel.calls()
    assert len(calls) == 3
    assert len({trace_id(c) for c in calls}) == 3
    for call in calls:
        for attempt in otel.attempts(call):
            assert parent_id(attempt) == span_id(call)
    # solaredge fails once: whichever call reaches it first sends it again.
    assert sorted(attrs_of(c)["resilience.attempt.count"] for c in calls) == [1, 1, 2]
    check_all(otel, logs, api, "sma", "solaredge")


# --- resend count across calls: redirects, a request sent again --------------------------


async def test_a_redirect_counts_as_a_resend(otel: Otel) -> None:
    """httpx follows a 302 with a new call: its attempts go on counting resends
    (the conventions count redirects), through a real Retry."""
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=NO_JITTER)],
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    inner = ScriptedTransport.of(
        reply(302, headers={"location": "https://api.example.test/moved"}),
        reply(503),
        reply(200),
    )
    transport = ResilientTransport(pipeline, inner=inner)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        response = await client.get("https://api.example.test/start")
    assert response.status_code == 200
    first, second = otel.calls()
    assert resend_counts(otel.attempts(first)) == [None]
    assert resend_counts(otel.attempts(second)) == [1, 2]
    assert attrs_of(otel.attempts(second)[0])["url.full"] == "https://api.example.test/moved"
    assert attrs_of(first)["resilience.outcome"] == "success"
    assert attrs_of(second)["resilience.attempt.count"] == 2


async def test_a_request_sent_again_starts_from_zero(otel: Otel) -> None:
    """The same request object sent twice is two calls, each first attempt unmarked."""
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=NO_JITTER)],
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    inner = ScriptedTransport.of(reply(503), reply(200), reply(200))
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        request = client.build_request("GET", "https://api.example.test/again")
        await client.send(request)
        await client.send(request)
    assert request.extensions[RESEND_COUNT_EXTENSION] == 0  # the hook's copy: last attempt
    first, second = otel.calls()
    assert resend_counts(otel.attempts(first)) == [None, 1]
    assert resend_counts(otel.attempts(second)) == [None]


def test_url_full_redacts_the_conventions_default_query_keys() -> None:
    """AWSAccessKeyId, Signature, sig and X-Goog-Signature: the HTTP conventions'
    default list of query keys whose values are redacted."""
    url = httpx.URL(
        "https://bucket.example.test/o?AWSAccessKeyId=AKIAEXAMPLE&Signature=abc"
        "&sig=def&X-Goog-Signature=ghi&Expires=1"
    )
    assert redact_url(url) == (
        "https://bucket.example.test/o?AWSAccessKeyId=REDACTED&Signature=REDACTED"
        "&sig=REDACTED&X-Goog-Signature=REDACTED&Expires=1"
    )


# --- timeout and cancellation through the real layers ------------------------------------


async def test_deadline_ends_the_call_as_a_timeout(
    otel: Otel, logs: pytest.LogCaptureFixture
) -> None:
    """The preset's total timeout leaves no room for the next wait: Retry gives up,
    the call span is Error (RetriesExhausted) with outcome timeout."""
    backend = Backend(script=["backend-server-error"] * 4)
    api = derapi(otel, {"sma": backend}, total_timeout=2.5)
    site = api.sim.items("sma")[0]["id"]
    async with api.client:
        with pytest.raises(RetriesExhausted) as caught:
            await api.client.get(f"/sites/{site}")
    assert caught.value.report.gave_up == "deadline"
    (call,) = otel.calls()
    assert call.status.status_code is StatusCode.ERROR
    assert attrs_of(call)["resilience.outcome"] == "timeout"
    assert attrs_of(call)["error.type"] == "RetriesExhausted"
    assert [e["resilience.retry.attempt"] for e in events(call, "resilience.retry")] == [1]
    check_all(otel, logs, api, "sma")


async def test_cancelled_call_through_every_layer_is_not_an_error(otel: Otel) -> None:
    """The caller cancels a call hanging below Retry, the breaker and AuthRefresh:
    outcome cancelled, nothing Error, no error.type, no rejection, breaker closed."""
    pipeline = Pipeline(
        [
            Retry(max_attempts=3, backoff=NO_JITTER),
            CircuitBreaker(minimum_calls=1, failure_ratio=0.1),
            resilience.AuthRefresh(resilience.StaticToken("static-token-NEVER-RECORDED")),
        ],
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    inner = HangingTransport()

    async def call() -> None:
        async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as c:
            await c.get("https://api.example.test/hang")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await inner.started.wait()
        tg.cancel_scope.cancel()

    (span,) = otel.calls()
    assert span.status.status_code is StatusCode.UNSET
    assert attrs_of(span)["resilience.outcome"] == "cancelled"
    assert "error.type" not in attrs_of(span)
    (attempt,) = otel.attempts()
    assert attempt.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs_of(attempt)
    assert parent_id(attempt) == span_id(span)
    (refresh,) = otel.named("resilience.auth.refresh")
    assert refresh.status.status_code is StatusCode.UNSET
    assert otel.points("resilience.circuit_breaker.rejections") == []
    assert otel.points("resilience.circuit_breaker.state") == []
    assert otel.points("resilience.client.call.retries") == []
    assert otel.points("http.client.request.duration") == []  # a cancelled attempt: no duration
    for text in recorded_text_spans(otel):
        assert "static-token-NEVER-RECORDED" not in text


def recorded_text_spans(otel: Otel) -> list[str]:
    """Span names, attributes and events as strings."""
    texts: list[str] = []
    for span in otel.spans():
        texts.append(span.name)
        texts.extend(f"{k}={v!r}" for k, v in attrs_of(span).items())
        for event in span.events:
            texts.extend(f"{k}={v!r}" for k, v in (event.attributes or {}).items())
    return texts
