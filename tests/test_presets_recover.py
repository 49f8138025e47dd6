"""Every preset trips fast on a total outage and comes back soon after it (issue 14):
a run of 10 failures opens the breaker whatever the window holds, the first break
is 1 s, and each failed probe doubles it up to 30 s."""

from __future__ import annotations

from itertools import pairwise

import httpx
import pytest

import resilience
from resilience import (
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    CircuitStateChanged,
    ResilientTransport,
)
from resilience.errors import CircuitOpenError, ResilienceError
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

VENDORS = ["http", "tellus", "turris", "derapi"]
PATH = {"http": "/things", "tellus": "/v1/devices", "turris": "/v2/sites", "derapi": "/sites"}
SUCCESS = {
    "http": lambda: reply(200, json={}),
    "tellus": lambda: reply(200, json={"code": 0, "message": "success", "data": {"items": []}}),
    "turris": lambda: reply(200, json={"statusCode": 200, "data": {}, "timestamp": "x"}),
    "derapi": lambda: reply(200, json={"sites": [], "errors": {}}),
}


def installed(vendor: str) -> None:
    if vendor != "http":
        pytest.importorskip(f"resilience_{vendor}")


class Server(httpx.AsyncBaseTransport):
    """Healthy (the vendor's success) or down (HTTP 500); counts what it receives."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.down = False
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.received += 1
        return reply(500) if self.down else SUCCESS[self.vendor]()


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_preset_breaker_trips_on_a_run_and_recovers_fast(vendor: str) -> None:
    """The preset's breaker: 10 failures in a row, a 1 s first break, doubling to 30 s."""
    installed(vendor)
    pipeline = resilience.standard_pipeline(vendor, clock=VirtualClock(), telemetry=False)
    breaker = next(layer for layer in pipeline.layers if isinstance(layer, CircuitBreaker))
    assert breaker.consecutive_failures == 10
    assert breaker.minimum_calls == 20
    assert [breaker.break_for(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_total_outage_costs_ten_requests_and_a_second_after_it(vendor: str) -> None:
    """After a healthy minute, the server fails every request: the preset sends 10
    of them, then fails fast; one probe per break while it lasts (breaks growing);
    once the server is back, the call after the current break succeeds."""
    installed(vendor)
    clock = VirtualClock()
    server = Server(vendor)
    opened_at: list[int] = []
    probes = 0

    def watch(event: object) -> None:
        nonlocal probes
        if isinstance(event, CircuitStateChanged):
            if event.old == "closed":
                opened_at.append(server.received)
            if event.new == "half_open":
                probes += 1

    pipeline = resilience.standard_pipeline(vendor, clock=clock, telemetry=False, hooks=[watch])
    transport = ResilientTransport(pipeline, inner=server)
    circuit = CircuitRegistry.of(pipeline).get("https://api.test:443")

    async def call() -> int | ResilienceError:
        try:
            response = await transport.handle_async_request(
                httpx.Request("GET", "https://api.test" + PATH[vendor])
            )
        except ResilienceError as exc:
            return exc
        await response.aclose()
        return response.status_code

    for _ in range(60):
        assert await call() == 200
        clock.advance(1.0)
    server.down = True
    server.received = 0
    while not opened_at:
        await call()
    assert opened_at == [10]
    # The call that tripped it may itself wait out the 1 s break and probe, as any
    # retry does; every request since the trip is one probe per break.
    assert server.received - 10 == probes
    assert circuit.state is CircuitState.OPEN
    assert 0 < circuit.retry_after <= 30.0
    sent = server.received
    assert isinstance(await call(), CircuitOpenError)
    assert server.received == sent

    # A long outage: one probe per break, each break twice the last, up to 30 s.
    breaks = []
    for _ in range(7):
        clock.advance(circuit.retry_after)
        before = server.received
        await call()
        assert server.received == before + 1
        assert circuit.state is CircuitState.OPEN
        breaks.append(circuit.retry_after)
    assert breaks[-3:] == pytest.approx([30, 30, 30])
    for shorter, longer in pairwise(breaks):
        assert longer == pytest.approx(min(2 * shorter, 30.0))
    assert server.received - 10 == probes

    # The server is back: the probe after the current break closes the circuit.
    server.down = False
    clock.advance(circuit.retry_after)
    assert await call() == 200
    assert circuit.state is CircuitState.CLOSED
