"""``standard_pipeline(vendor, store=RedisStore(...))`` shares the breaker too.

Against a real ``redis-server`` (the root conftest's ``redis_server``; asyncio
only: redis-py's asyncio client); skipped without one, failed under ``CI=true``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from resilience import (
    CircuitBreaker,
    CircuitStateChanged,
    RedisStore,
    ResilientTransport,
    standard_pipeline,
)
from resilience.errors import CircuitOpenError
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://vendor.test/v1/x"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client needs asyncio (trio's refusal is tested elsewhere)."""
    return "asyncio"


async def test_a_redis_store_shares_the_presets_breaker(redis_server: Any) -> None:
    """Two processes' ``standard_pipeline("http", store=RedisStore(...))``: A's
    outage opens the breaker of B, whose own calls all succeeded, and B then
    fails fast without sending."""
    stores = [RedisStore(url=redis_server.url, prefix="app") for _ in range(2)]
    changes: list[list[str]] = [[], []]
    sent = [0, 0]
    clients = []
    for i, (store, status) in enumerate(zip(stores, (503, 200), strict=True)):

        def handler(request: httpx.Request, i: int = i, status: int = status) -> httpx.Response:
            sent[i] += 1
            return reply(status)

        def hook(event: Any, i: int = i) -> None:
            if isinstance(event, CircuitStateChanged):
                changes[i].append(f"{event.old}->{event.new}")

        pipeline = standard_pipeline(
            "http",
            store=store,
            hold=None,
            max_attempts=1,
            clock=VirtualClock(),
            telemetry=False,
            hooks=[hook],
            raise_on_failure=False,
        )
        breaker = [layer for layer in pipeline.layers if isinstance(layer, CircuitBreaker)]
        assert breaker[0].store is store
        transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
        clients.append(httpx.AsyncClient(transport=transport))
    try:
        async with clients[0] as a, clients[1] as b:
            for _ in range(10):
                await a.get(URL)
            assert changes[0] == ["closed->open"]
            await b.get(URL)  # sent: B's circuit was closed; the answer says open
            assert changes[1] == ["closed->open"]
            with pytest.raises(CircuitOpenError):
                await b.get(URL)
        assert sent == [10, 1]
    finally:
        for store in stores:
            await store.aclose()


async def test_a_preset_with_a_shared_breaker_holds_as_without_one(
    redis_server: Any,
) -> None:
    """With a breaker shared through Redis the preset's Retry holds calls as it does
    without a store; ``hold=None`` turns it off."""
    from resilience import Retry

    def retry_of(pipeline: Any) -> Any:
        return next(layer for layer in pipeline.layers if isinstance(layer, Retry))

    store = RedisStore(url=redis_server.url, prefix="app")
    try:
        shared = standard_pipeline("http", store=store, telemetry=False)
        off = standard_pipeline("http", store=store, hold=None, telemetry=False)
        alone = standard_pipeline("http", telemetry=False)
    finally:
        await store.aclose()
    assert retry_of(shared).hold is not None
    assert retry_of(shared).hold == retry_of(alone).hold
    assert retry_of(off).hold is None
