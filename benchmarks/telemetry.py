"""What telemetry costs per call: off, API without an SDK, SDK with a no-op exporter.

The same pipeline (Timeout, Retry, Timeout) is driven at the transport level
(``ResilientTransport.handle_async_request`` around an ``httpx.MockTransport``)
three ways, interleaved round by round so that machine noise hits each equally:

* ``telemetry=False``: no instrumentation at all;
* the OpenTelemetry API with no SDK (the global providers unset), the state of
  every program that never configures OpenTelemetry;
* the SDK: a ``TracerProvider`` with a ``SimpleSpanProcessor`` over an exporter
  that drops everything, and a ``MeterProvider`` with an in-memory reader.

Run: ``python benchmarks/telemetry.py [--rounds 30] [--calls 2000] [--backend asyncio]``.
The target (issue 7): the no-SDK row within 2 µs per call of ``telemetry=False``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import anyio
import httpx
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry, Timeout

URL = "https://api.example.test/v1/devices?page=2&access_token=SECRET"


class DropExporter(SpanExporter):
    """An exporter that exports nothing: the SDK's own cost, no I/O."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def layers() -> list[object]:
    return [
        Timeout(total=30.0),
        Retry(max_attempts=3, backoff=ExponentialBackoff(jitter="none")),
        Timeout(attempt=10.0),
    ]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"{}")


def transports() -> dict[str, ResilientTransport]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(DropExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    pipelines = {
        "telemetry=False": Pipeline(layers(), telemetry=False),
        "API, no SDK": Pipeline(layers()),
        "SDK, no-op exporter": Pipeline(
            layers(), tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
    }
    return {
        name: ResilientTransport(pipeline, inner=httpx.MockTransport(ok))
        for name, pipeline in pipelines.items()
    }


async def timed(transport: ResilientTransport, calls: int) -> float:
    """Microseconds per call over ``calls`` calls."""
    request = httpx.Request("GET", URL)
    handle = transport.handle_async_request
    start = time.perf_counter()
    for _ in range(calls):
        response = await handle(request)
        await response.aclose()
    return (time.perf_counter() - start) / calls * 1e6


async def run(rounds: int, calls: int) -> dict[str, list[float]]:
    candidates = transports()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for transport in candidates.values():  # warm up
        await timed(transport, calls // 10 or 1)
    order = list(candidates.items())
    for index in range(rounds):
        # Rotate who goes first, so that no variant always runs after the same one.
        shift = index % len(order)
        for name, transport in order[shift:] + order[:shift]:
            samples[name].append(await timed(transport, calls))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    # The no-SDK row is only meaningful while nobody configured OpenTelemetry.
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"

    samples = anyio.run(run, args.rounds, args.calls, backend=args.backend)
    base = samples["telemetry=False"]
    print(
        f"backend {args.backend}: {args.rounds} interleaved rounds of {args.calls} calls, "
        "µs per call"
    )
    print(f"{'variant':<22}{'median':>10}{'best':>10}{'vs off':>10}")
    for name, values in samples.items():
        # Paired by round: each round's difference from telemetry=False in that round.
        diff = statistics.median(v - b for v, b in zip(values, base, strict=True))
        shown = "" if name == "telemetry=False" else f"{diff:+.2f}"
        print(f"{name:<22}{statistics.median(values):>10.2f}{min(values):>10.2f}{shown:>10}")
    print("vs off: median over rounds of (variant - telemetry=False) in the same round")


if __name__ == "__main__":
    main()
