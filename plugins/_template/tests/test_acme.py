"""Vendor-specific tests: add one per rule of the vendor's page (TODO(vendor))."""

from __future__ import annotations

import httpx
import pytest
import resilience_acme

from resilience import ResilientTransport
from resilience.testing import Fault, FaultPlan, VirtualClock

pytestmark = pytest.mark.anyio


async def test_rate_limit_hint_is_honoured() -> None:
    """A 429's ``retry_after`` is the wait before the retry."""
    clock = VirtualClock()
    plan = FaultPlan(errors=[Fault(code="rate_limited", end=0.5)])
    sim = resilience_acme.simulator(plan=plan, clock=clock)
    auth = resilience_acme.AcmeToken(
        client_id="sim-client", client_secret="sim-secret", base_url="http://acme.test"
    )
    pipeline = resilience_acme.preset(auth=auth, clock=clock)
    transport = ResilientTransport(pipeline, inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://acme.test") as client:
        response = await client.get("/v1/widgets")
    assert response.status_code == 200
    assert [r.status for r in sim.requests_to("GET", "/v1/widgets")] == [429, 200]
    assert response.extensions["resilience"].delays == [2.0]
