"""Every preset honours a wait of 60 s that the server asks for, in its own dialect."""

from __future__ import annotations

import email.utils

import httpx
import pytest

import resilience
from resilience import ResilientTransport
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

DATE = 1_790_000_000
DATE_HEADER = email.utils.formatdate(DATE, usegmt=True)

ASKS_FOR_60_SECONDS = {
    "http": reply(503, headers={"Retry-After": "60"}),
    "tellus": reply(
        429,
        json={"code": 5001, "message": "Too many requests", "details": {"retry_after_seconds": 60}},
    ),
    "turris": reply(
        429,
        json={
            "statusCode": 429,
            "requestId": "dev-63c50377-1cfa-4d51-bce7-d187507853db",
            "errorType": "rate_limit_exceeded",
            "errorMessage": ["Rate limit exceeded. Please retry after 60 seconds."],
            "timestamp": "2026-09-21T12:53:20.000Z",
        },
        headers={"Date": DATE_HEADER, "X-RateLimit-Reset": str(DATE + 60)},
    ),
    "derapi": reply(
        429,
        json={
            "type": "https://docs.derapi.com/reference/errors#too-many-requests",
            "title": "Too Many Requests",
        },
        headers={"Retry-After": "60", "Content-Type": "application/problem+json"},
    ),
}

SUCCESS = {
    "http": reply(200, json={}),
    "tellus": reply(200, json={"code": 0, "message": "success", "data": {"items": []}}),
    "turris": reply(200, json={"statusCode": 200, "data": {}, "timestamp": "x"}),
    "derapi": reply(200, json={"sites": [], "errors": {}}),
}


@pytest.mark.parametrize("vendor", sorted(ASKS_FOR_60_SECONDS))
async def test_preset_waits_the_60_seconds_the_server_asked_for(vendor: str) -> None:
    """A rate-limit answer asking for 60 s: the preset sleeps exactly 60 s, then succeeds."""
    clock = VirtualClock()
    pipeline = resilience.standard_pipeline(vendor, clock=clock, telemetry=False)
    inner = ScriptedTransport.of(ASKS_FOR_60_SECONDS[vendor], SUCCESS[vendor])
    transport = ResilientTransport(pipeline, inner=inner)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        r = await client.get("/sites")
    assert r.status_code == 200
    assert clock.sleeps == pytest.approx([60.0])
    assert r.extensions["resilience"].attempts == 2
    assert inner.unclosed() == []
