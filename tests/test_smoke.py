"""The quickstart's shape works end to end on a scripted transport."""

from __future__ import annotations

import httpx
import pytest

import resilience
from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio


async def test_retry_then_success() -> None:
    """A 503 then a 200: two attempts, one delay, the 200 returned."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503), reply(200, json={"ok": True}))
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=ExponentialBackoff(jitter="none"))], clock=clock
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        r = await client.get("https://example.test/x")
    assert r.json() == {"ok": True}
    report = r.extensions["resilience"]
    assert report.attempts == 2
    assert report.delays == [1.0]
    assert clock.sleeps == [1.0]
    assert [v.action for v in report.verdicts] == [
        resilience.Action.RETRY,
        resilience.Action.ACCEPT,
    ]
    assert inner.unclosed() == []
    r.elapsed  # noqa: B018 - the response is a normal, closed httpx response
