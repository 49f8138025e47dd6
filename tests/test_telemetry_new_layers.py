"""Telemetry of the Hedge, ConcurrencyLimit and Fallback layers.

Each layer's event reaches the SDK: a span event on the call span, a counter, a
log line; a hedge is an attempt of its own (a CLIENT span, child of the call span,
with ``http.request.resend_count``); a call a fallback answered says so on its
span. Providers are passed to the pipeline (no global one is set), on a
``VirtualClock``, with the SDK's in-memory exporter and metric reader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from resilience import (
    ConcurrencyLimit,
    Fallback,
    Hedge,
    Pipeline,
    ResilientTransport,
    Retry,
)
from resilience.errors import ConcurrencyLimitExceeded, RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
IDENTITY = {"resilience.vendor": "http", "resilience.pipeline": "http"}


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

    def call(self) -> ReadableSpan:
        """The one ``resilience.call`` span."""
        (found,) = [s for s in self.spans() if s.name == "resilience.call"]
        return found

    def attempts(self) -> list[ReadableSpan]:
        """The CLIENT spans, in start order."""
        return [s for s in self.spans() if s.kind is SpanKind.CLIENT]

    def points(self, name: str) -> list[Any]:
        """Data points of the metric ``name`` of the ``resilience`` meter."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if scope.scope.name == "resilience" and metric.name == name:
                        return list(metric.data.data_points)
        return []

    def unit(self, name: str) -> str | None:
        """The unit of the metric ``name``."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric.unit
        return None


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


class Hanging(ScriptedTransport):
    """A ScriptedTransport whose ``None`` steps never answer (until cancelled)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(len(self.requests), len(self.script) - 1)
        if self.script[index] is None:
            self.requests.append(request)
            await anyio.sleep_forever()
        return await super().handle_async_request(request)


def make(otel: Otel, inner: httpx.AsyncBaseTransport, *layers: Any) -> ResilientTransport:
    """A recording pipeline over ``layers`` on a virtual clock."""
    pipeline = Pipeline(
        list(layers),
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    return ResilientTransport(pipeline, inner=inner)


async def get(transport: ResilientTransport) -> httpx.Response:
    """One GET through ``transport``."""
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(URL)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_hedge_is_an_event_a_count_and_an_attempt_span(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow first attempt is hedged: the call span has a resilience.hedge event
    (number, elapsed, trigger), resilience.client.call.hedges counts it, a DEBUG
    line says so, and the hedge is a CLIENT span of its own, child of the call
    span (not of the first attempt), with http.request.resend_count = 1."""
    caplog.set_level(logging.DEBUG, logger="resilience")
    inner = Hanging([None, reply(200)])
    response = await get(make(otel, inner, Hedge(delay=0.25)))
    assert response.status_code == 200

    call = otel.call()
    (event,) = [e for e in call.events if e.name == "resilience.hedge"]
    assert dict(event.attributes or {}) == {
        "resilience.hedge.number": 1,
        "resilience.hedge.elapsed": 0.25,
        "resilience.hedge.trigger": "delay",
    }
    first, hedge = otel.attempts()
    assert "http.request.resend_count" not in (first.attributes or {})
    assert (hedge.attributes or {})["http.request.resend_count"] == 1
    assert call.context is not None
    assert parent_id(first) == parent_id(hedge) == call.context.span_id
    # The loser was cancelled because the hedge won: not an error.
    assert first.status.status_code is StatusCode.UNSET
    assert (call.attributes or {})["resilience.attempt.count"] == 2
    assert (call.attributes or {})["resilience.outcome"] == "success"

    (point,) = otel.points("resilience.client.call.hedges")
    assert point.value == 1
    assert dict(point.attributes) == {
        "http.request.method": "GET",
        "server.address": "api.test",
        "resilience.hedge.trigger": "delay",
        **IDENTITY,
    }
    assert otel.unit("resilience.client.call.hedges") == "{hedge}"
    assert any("resilience hedge 1 of GET api.test" in r.getMessage() for r in caplog.records)


async def test_a_fast_failure_hedge_counts_with_its_trigger(otel: Otel) -> None:
    """A 503 at once sends the hedge without waiting: trigger "failure", and each
    attempt span carries its own status and resend count."""
    inner = ScriptedTransport([reply(503), reply(200)])
    await get(make(otel, inner, Hedge(delay=30.0)))
    (event,) = [e for e in otel.call().events if e.name == "resilience.hedge"]
    assert (event.attributes or {})["resilience.hedge.trigger"] == "failure"
    statuses = [
        (
            (s.attributes or {})["http.response.status_code"],
            (s.attributes or {}).get("http.request.resend_count"),
        )
        for s in otel.attempts()
    ]
    assert statuses == [(503, None), (200, 1)]
    (point,) = otel.points("resilience.client.call.hedges")
    assert (point.value, point.attributes["resilience.hedge.trigger"]) == (1, "failure")


async def test_no_hedge_no_event_no_count(otel: Otel) -> None:
    """A fast answer records no hedge event and no hedge count."""
    await get(make(otel, ScriptedTransport([reply(200)]), Hedge(delay=1.0)))
    assert [e.name for e in otel.call().events] == []
    assert otel.points("resilience.client.call.hedges") == []
    assert len(otel.attempts()) == 1


async def test_a_fallback_answer_is_on_the_call_span_and_counted(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries exhausted, the fallback answers: the call span says
    resilience.fallback = RetriesExhausted, its outcome is "fallback" and it is not
    an error (the caller got an answer); a resilience.fallback event carries the
    replaced error's type and code; resilience.client.call.fallbacks counts it; an
    INFO line says so. The failed attempt's own span stays an error."""
    caplog.set_level(logging.INFO, logger="resilience")

    def cached(request: httpx.Request, error: Exception) -> httpx.Response:
        return httpx.Response(200, json={"cached": True})

    inner = ScriptedTransport([reply(503)])
    transport = make(otel, inner, Fallback(cached, on=RetriesExhausted), Retry(max_attempts=1))
    response = await get(transport)
    assert response.json() == {"cached": True}

    call = otel.call()
    attributes = dict(call.attributes or {})
    assert attributes["resilience.fallback"] == "RetriesExhausted"
    assert attributes["resilience.outcome"] == "fallback"
    assert "error.type" not in attributes
    assert call.status.status_code is StatusCode.UNSET
    (event,) = [e for e in call.events if e.name == "resilience.fallback"]
    assert (event.attributes or {})["error.type"] == "RetriesExhausted"
    (attempt,) = otel.attempts()
    assert attempt.status.status_code is StatusCode.ERROR

    (point,) = otel.points("resilience.client.call.fallbacks")
    assert point.value == 1
    assert dict(point.attributes) == {
        "http.request.method": "GET",
        "server.address": "api.test",
        "error.type": "RetriesExhausted",
        **IDENTITY,
    }
    assert otel.unit("resilience.client.call.fallbacks") == "{call}"
    (duration,) = otel.points("resilience.client.call.duration")
    assert duration.attributes["resilience.outcome"] == "fallback"
    assert any(
        "resilience fallback answered GET api.test in place of RetriesExhausted" in r.getMessage()
        for r in caplog.records
    )


async def test_a_concurrency_limit_rejection_is_an_event_and_counted(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """One slot, no queue: the second concurrent call is refused. Its call span
    has a resilience.concurrency_limit.rejected event (key, limit, reason) and is
    an error; resilience.concurrency_limit.rejections counts it by key and reason."""
    caplog.set_level(logging.INFO, logger="resilience")
    inner = Hanging([None])
    transport = make(otel, inner, ConcurrencyLimit(limit=1))
    async with anyio.create_task_group() as group:
        group.start_soon(get, transport)
        while not inner.requests:
            await anyio.lowlevel.checkpoint()
        with pytest.raises(ConcurrencyLimitExceeded):
            await get(transport)
        group.cancel_scope.cancel()

    refused = [
        s
        for s in otel.spans()
        if s.name == "resilience.call"
        and (s.attributes or {}).get("error.type") == "ConcurrencyLimitExceeded"
    ]
    assert len(refused) == 1
    assert refused[0].status.status_code is StatusCode.ERROR
    (event,) = [e for e in refused[0].events if e.name == "resilience.concurrency_limit.rejected"]
    assert dict(event.attributes or {}) == {
        "resilience.concurrency_limit.key": "https://api.test:443",
        "resilience.concurrency_limit.limit": 1,
        "resilience.concurrency_limit.reason": "queue_full",
    }
    (point,) = otel.points("resilience.concurrency_limit.rejections")
    assert point.value == 1
    assert dict(point.attributes) == {
        "resilience.concurrency_limit.key": "https://api.test:443",
        "resilience.concurrency_limit.reason": "queue_full",
        **IDENTITY,
    }
    assert otel.unit("resilience.concurrency_limit.rejections") == "{call}"
    assert any("concurrency limit of 1 reached" in r.getMessage() for r in caplog.records)
