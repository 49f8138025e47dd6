"""Telemetry of the RateLimiter: a span event on the call span and a counter.

SDK providers are passed to the pipeline (no global one is set), on a
``VirtualClock``, with the in-memory span exporter and metric reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience import Pipeline, RateLimiter, ResilientTransport
from resilience.errors import RateLimitExceeded
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
IDENTITY = {"resilience.vendor": "http", "resilience.pipeline": "http"}


@pytest.fixture
def providers() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader, Any, Any]]:
    """An SDK tracer and meter provider writing to memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield exporter, reader, tracer_provider, meter_provider
    tracer_provider.shutdown()
    meter_provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """Data points of the metric ``name`` of the ``resilience`` meter."""
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if scope.scope.name == "resilience" and metric.name == name:
                    return list(metric.data.data_points)
    return []


def calls(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The ``resilience.call`` spans, in start order."""
    spans = [s for s in exporter.get_finished_spans() if s.name == "resilience.call"]
    return sorted(spans, key=lambda s: s.start_time or 0)


async def test_a_delayed_and_a_refused_call_are_events_and_counted(providers: Any) -> None:
    """Burst 1, one call a second, max_wait 1 s: after a first call, of two
    concurrent ones one waits 1 s (a ``delayed`` event) and the other would wait
    2 s and is refused (a ``rejected`` event with its reason);
    ``resilience.rate_limit.calls`` counts both by limiter, outcome and reason,
    never by key."""
    exporter, reader, tracer_provider, meter_provider = providers
    pipeline = Pipeline(
        [RateLimiter(rate=1, max_wait=1.0, client_id="cid", name="queries")],
        clock=VirtualClock(autojump=True),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(lambda r: reply(200)))
    refused: list[BaseException] = []

    async def get(client: httpx.AsyncClient) -> None:
        try:
            await client.get(URL)
        except RateLimitExceeded as error:
            refused.append(error)

    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL)
        async with anyio.create_task_group() as group:
            group.start_soon(get, client)
            group.start_soon(get, client)
    assert len(refused) == 1
    first, *others = calls(exporter)
    assert not [e for e in first.events if e.name == "resilience.rate_limit"]
    events = [e for span in others for e in span.events if e.name == "resilience.rate_limit"]
    delayed, rejected = sorted(
        events, key=lambda e: str((e.attributes or {})["resilience.rate_limit.outcome"])
    )
    assert dict(delayed.attributes or {}) == {
        "resilience.rate_limit.limiter": "queries",
        "resilience.rate_limit.key": "http:cid",
        "resilience.rate_limit.outcome": "delayed",
        "resilience.rate_limit.wait": 1.0,
    }
    assert dict(rejected.attributes or {}) == {
        "resilience.rate_limit.limiter": "queries",
        "resilience.rate_limit.key": "http:cid",
        "resilience.rate_limit.outcome": "rejected",
        "resilience.rate_limit.wait": 2.0,
        "resilience.rate_limit.reason": "max_wait",
    }
    counted = {
        tuple(sorted(dict(p.attributes).items())): p.value
        for p in points(reader, "resilience.rate_limit.calls")
    }
    assert counted == {
        tuple(
            sorted(
                {
                    "resilience.rate_limit.limiter": "queries",
                    "resilience.rate_limit.outcome": "delayed",
                    **IDENTITY,
                }.items()
            )
        ): 1,
        tuple(
            sorted(
                {
                    "resilience.rate_limit.limiter": "queries",
                    "resilience.rate_limit.outcome": "rejected",
                    "resilience.rate_limit.reason": "max_wait",
                    **IDENTITY,
                }.items()
            )
        ): 1,
    }
