"""Next to opentelemetry-instrumentation-httpx: its spans nest under ours.

``HTTPXClientInstrumentor().instrument()`` patches ``httpx.AsyncHTTPTransport``
(not ``MockTransport`` nor ``ASGITransport``), so these tests talk to a real
HTTP/1.1 server on a loopback port, served by the test itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.abc
import httpx
import pytest
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport, HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilience
from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

ONE = ExponentialBackoff(initial=1.0, jitter="none")


class Server:
    """A loopback HTTP/1.1 server answering a scripted status per request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.headers: list[dict[str, str]] = []
        self.port = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    return
            lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
            self.headers.append(
                {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines)
                }
            )
            status = self.statuses[min(len(self.headers), len(self.statuses)) - 1]
            head = f"HTTP/1.1 {status} Status\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
            await stream.send(head.encode() + b"ok")


@contextlib.asynccontextmanager
async def serving(statuses: list[int]) -> AsyncIterator[Server]:
    server = Server(statuses)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider, exporter
    tracer_provider.shutdown()


def scope(span: ReadableSpan) -> str:
    assert span.instrumentation_scope is not None
    return span.instrumentation_scope.name


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_global_instrumentation_nests_under_each_attempt(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """With instrument(): call → our attempt span → the instrumentation's span, per
    attempt; the request hook copies the resend count; each attempt sends the
    traceparent of its own innermost span."""
    tracer_provider, exporter = provider
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, async_request_hook=resilience.request_hook
    )
    try:
        async with serving([503, 200]) as server:
            pipeline = Pipeline(
                [Retry(max_attempts=3, backoff=ONE)],
                clock=VirtualClock(),
                tracer_provider=tracer_provider,
            )
            transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
            async with httpx.AsyncClient(transport=transport) as client:
                r = await client.get(f"http://127.0.0.1:{server.port}/v1/devices")
            assert r.status_code == 200
    finally:
        instrumentor.uninstrument()

    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    (call,) = [s for s in spans if s.name == "resilience.call"]
    ours = [s for s in spans if s.kind is SpanKind.CLIENT and scope(s) == "resilience"]
    theirs = [s for s in spans if s.kind is SpanKind.CLIENT and scope(s) != "resilience"]
    assert len(ours) == 2
    assert len(theirs) == 2
    assert len(spans) == 5
    for attempt, inner in zip(ours, theirs, strict=True):
        assert attempt.parent is not None
        assert attempt.parent.span_id == span_id(call)
        assert inner.parent is not None
        assert inner.parent.span_id == span_id(attempt)
        assert inner.context is not None
        assert inner.context.trace_id == call.context.trace_id  # type: ignore[union-attr]
    assert [(s.attributes or {}).get("http.request.resend_count") for s in theirs] == [None, 1]
    assert [(s.attributes or {}).get("http.request.resend_count") for s in ours] == [None, 1]
    assert ours[0].status.status_code is StatusCode.ERROR
    # The server saw, on each attempt, the traceparent of the innermost span.
    sent = [headers["traceparent"].split("-")[2] for headers in server.headers]
    assert sent == [format(span_id(s), "016x") for s in theirs]


async def test_without_the_instrumentation_our_span_is_sent(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Without instrument(): the server sees each attempt span's own traceparent."""
    tracer_provider, exporter = provider
    async with serving([503, 200]) as server:
        pipeline = Pipeline(
            [Retry(max_attempts=3, backoff=ONE)],
            clock=VirtualClock(),
            tracer_provider=tracer_provider,
        )
        transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(f"http://127.0.0.1:{server.port}/")
    attempts = sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT),
        key=lambda s: s.start_time or 0,
    )
    sent = [headers["traceparent"].split("-")[2] for headers in server.headers]
    assert sent == [format(span_id(s), "016x") for s in attempts]
    assert len(set(sent)) == 2


async def test_wrapping_the_inner_transport_nests_too(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The per-client alternative: AsyncOpenTelemetryTransport as the inner transport."""
    tracer_provider, exporter = provider
    inner = AsyncOpenTelemetryTransport(
        ScriptedTransport.of(reply(503), reply(200)),
        tracer_provider=tracer_provider,
        request_hook=resilience.request_hook,
    )
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=ONE)], clock=VirtualClock(), tracer_provider=tracer_provider
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        await client.get("https://api.example.test/")
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    ours = [s for s in spans if s.kind is SpanKind.CLIENT and scope(s) == "resilience"]
    theirs = [s for s in spans if s.kind is SpanKind.CLIENT and scope(s) != "resilience"]
    assert [s.parent.span_id if s.parent else None for s in theirs] == [span_id(s) for s in ours]
    assert [(s.attributes or {}).get("http.request.resend_count") for s in theirs] == [None, 1]


async def test_instrument_client_gives_one_span_over_all_attempts(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """What docs/telemetry.md warns about: instrument_client() on a client whose
    transport is ours wraps the whole logical call in one CLIENT span, above
    resilience.call; each attempt still sends its own traceparent."""
    tracer_provider, exporter = provider
    sent: list[str] = []

    def answer(status: int) -> Callable[[httpx.Request], httpx.Response]:
        def step(request: httpx.Request) -> httpx.Response:
            sent.append(request.headers["traceparent"].split("-")[2])
            return reply(status)

        return step

    script = ScriptedTransport.of(answer(503), answer(200))
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=ONE)], clock=VirtualClock(), tracer_provider=tracer_provider
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=script)) as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
        try:
            await client.get("https://api.example.test/")
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)
    spans = exporter.get_finished_spans()
    (outer,) = [s for s in spans if s.kind is SpanKind.CLIENT and scope(s) != "resilience"]
    (call,) = [s for s in spans if s.name == "resilience.call"]
    assert call.parent is not None
    assert call.parent.span_id == span_id(outer)
    ours = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT and scope(s) == "resilience"),
        key=lambda s: s.start_time or 0,
    )
    assert sent == [format(span_id(s), "016x") for s in ours]
