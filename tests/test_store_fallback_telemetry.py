"""``resilience.store.fallbacks``: steps of a shared store answered from local state.

Against a real ``redis-server`` the tests start and kill (asyncio only: redis-py's
asyncio client), with SDK providers passed to the pipeline (no global one is
set) and the in-memory metric reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilience import (
    CircuitBreaker,
    Pipeline,
    RateLimiter,
    RedisStore,
    ResilientTransport,
    Retry,
    RetryBudget,
)
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
METRIC = "resilience.store.fallbacks"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client needs asyncio (trio's refusal is tested elsewhere)."""
    return "asyncio"


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    """An SDK meter provider writing to memory."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def counted(reader: InMemoryMetricReader) -> dict[tuple[tuple[str, Any], ...], int]:
    """The points of ``resilience.store.fallbacks``: attributes -> count."""
    data = reader.get_metrics_data()
    found: dict[tuple[tuple[str, Any], ...], int] = {}
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if scope.scope.name == "resilience" and metric.name == METRIC:
                    for point in metric.data.data_points:
                        found[tuple(sorted(dict(point.attributes or {}).items()))] = point.value
    return found


def labels(layer: str, operation: str) -> tuple[tuple[str, Any], ...]:
    """A point's attributes: the layer, the store's step, the pipeline."""
    return tuple(
        sorted(
            {
                "resilience.store.layer": layer,
                "resilience.store.operation": operation,
                "resilience.vendor": "http",
                "resilience.pipeline": "billing",
            }.items()
        )
    )


async def test_fallbacks_are_counted_by_layer_and_step(redis_server: Any, reader: Any) -> None:
    """Redis killed: each call's slot, budget count and breaker outcome are
    answered from local state (the calls succeed), and each is counted once per
    call, by layer and step, with the pipeline's name; the store counts them too."""
    metrics, provider = reader
    store = RedisStore(url=redis_server.url, prefix="app", clock=VirtualClock())
    pipeline = Pipeline(
        [
            RateLimiter(rate=100, burst=100, store=store),
            Retry(max_attempts=2, budget=RetryBudget(store=store)),
            CircuitBreaker(store=store),
        ],
        name="billing",
        clock=VirtualClock(),
        meter_provider=provider,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(lambda r: reply(200)))
    redis_server.kill()
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(2):
                assert (await client.get(URL)).status_code == 200
    finally:
        await store.aclose()
    assert counted(metrics) == {
        labels("rate_limiter", "take_slot"): 2,
        labels("retry_budget", "update_budget"): 1,  # the budget counts once per 50 ms
        labels("circuit_breaker", "breaker_record"): 2,
    }
    assert store.fallback_calls == 5


async def test_nothing_is_counted_while_redis_answers(redis_server: Any, reader: Any) -> None:
    """With Redis up, the same pipeline records no fallback."""
    metrics, provider = reader
    store = RedisStore(url=redis_server.url, prefix="app")
    pipeline = Pipeline(
        [RateLimiter(rate=100, burst=100, store=store), CircuitBreaker(store=store)],
        name="billing",
        clock=VirtualClock(),
        meter_provider=provider,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(lambda r: reply(200)))
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(URL)
    finally:
        await store.aclose()
    assert counted(metrics) == {}
