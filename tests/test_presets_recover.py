"""Every preset trips fast on a total outage and comes back soon after it (issue 14):
a run of 10 failures opens the breaker whatever the window holds, the first break
is 1 s and each next one a tenth of the outage's age (1 s to 30 s), and a call that
meets the open breaker is held until a probe succeeds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import resilience
from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    CircuitStateChanged,
    Hold,
    ResilientTransport,
    Verdict,
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
    """Healthy (the vendor's success) or down (HTTP 500), by hand or until a clock
    time; counts what it receives."""

    def __init__(self, vendor: str, clock: VirtualClock | None = None) -> None:
        self.vendor = vendor
        self.clock = clock
        self.down = False
        self.down_until = 0.0
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.received += 1
        down = self.down or (self.clock is not None and self.clock.now() < self.down_until)
        return reply(500) if down else SUCCESS[self.vendor]()


def transport_for(vendor: str, pipeline: resilience.Pipeline, server: Server) -> Any:
    """A call through ``pipeline``: the status, or the error it raised."""
    transport = ResilientTransport(pipeline, inner=server)

    async def call() -> int | ResilienceError:
        try:
            response = await transport.handle_async_request(
                httpx.Request("GET", "https://api.test" + PATH[vendor])
            )
        except ResilienceError as exc:
            return exc
        await response.aclose()
        return response.status_code

    return call


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_preset_breaker_trips_on_a_run_and_recovers_fast(vendor: str) -> None:
    """The preset's breaker: 10 failures in a row, a 1 s first break, then a tenth
    of the outage's age up to 30 s; the preset holds calls (Hold())."""
    installed(vendor)
    pipeline = resilience.standard_pipeline(vendor, clock=VirtualClock(), telemetry=False)
    breaker = next(layer for layer in pipeline.layers if isinstance(layer, CircuitBreaker))
    assert breaker.consecutive_failures == 10
    assert breaker.minimum_calls == 20
    assert breaker.break_growth == 0.1
    ages = [0, 1, 9, 10, 60, 299, 300, 3600]
    assert [breaker.break_for(n, age) for n, age in enumerate(ages)] == pytest.approx(
        [1, 1, 1, 1, 6, 29.9, 30, 30]
    )
    retry = next(layer for layer in pipeline.layers if isinstance(layer, resilience.Retry))
    assert retry.hold == Hold()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_total_outage_costs_ten_requests_and_a_probe_a_second_at_first(
    vendor: str,
) -> None:
    """After a healthy minute, the server fails every request: the preset sends 10
    of them, then fails fast (holding off); one probe per break while it lasts, a
    break a second for the outage's first ten seconds, growing with its age to 30 s
    once it is five minutes old; once the server is back, the call after the
    current break succeeds."""
    installed(vendor)
    clock = VirtualClock()
    server = Server(vendor)
    opened_at: list[int] = []
    probes = 0

    breaks: list[tuple[float, float]] = []  # (clock time, break) at each opening

    def watch(event: object) -> None:
        nonlocal probes
        if isinstance(event, CircuitStateChanged):
            if event.old == "closed":
                opened_at.append(server.received)
            if event.new == "half_open":
                probes += 1
            if event.new == "open":
                breaks.append((clock.now(), circuit.retry_after))

    pipeline = resilience.standard_pipeline(
        vendor, clock=clock, telemetry=False, hooks=[watch], hold=None
    )
    call = transport_for(vendor, pipeline, server)
    circuit = CircuitRegistry.of(pipeline).get("https://api.test:443")

    for _ in range(60):
        assert await call() == 200
        clock.advance(1.0)
    server.down = True
    server.received = 0
    while not opened_at:
        await call()
    tripped = breaks[0][0]
    assert opened_at == [10]
    # The call that tripped it may itself wait out the 1 s break and probe, as any
    # retry does; every request since the trip is one probe per break.
    assert server.received - 10 == probes
    assert circuit.state is CircuitState.OPEN
    assert 0 < circuit.retry_after <= 30.0
    sent = server.received
    assert isinstance(await call(), CircuitOpenError)
    assert server.received == sent

    # A long outage: one probe per break (a call's retry may probe the next break),
    # each break a tenth of the outage's age.
    while clock.now() - tripped < 400:
        clock.advance(circuit.retry_after)
        before = server.received
        await call()
        assert server.received > before
        assert circuit.state is CircuitState.OPEN
    ages = [(at - tripped, brk) for at, brk in breaks]
    for age, brk in ages:
        assert brk == pytest.approx(min(max(0.1 * age, 1.0), 30.0))
    early = [brk for age, brk in ages if age < 10]
    assert len(early) >= 5
    assert early == pytest.approx([1.0] * len(early))
    late = [brk for age, brk in ages if age > 300]
    assert len(late) >= 3
    assert late == pytest.approx([30.0] * len(late))
    assert server.received - 10 == probes

    # The server is back: the probe after the current break closes the circuit.
    server.down = False
    clock.advance(circuit.retry_after)
    assert await call() == 200
    assert circuit.state is CircuitState.CLOSED


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_call_arriving_in_a_short_outage_is_held_and_succeeds(vendor: str) -> None:
    """With the preset as shipped, a call that meets the open breaker of a short
    outage is held (nothing sent while the break lasts) and succeeds about a
    second after the server is back, through the circuit's probe."""
    installed(vendor)
    clock = VirtualClock()
    server = Server(vendor, clock)
    pipeline = resilience.standard_pipeline(vendor, clock=clock, telemetry=False)
    call = transport_for(vendor, pipeline, server)
    circuit = CircuitRegistry.of(pipeline).get("https://api.test:443")
    # The outage starts now: ten failures in a row open the circuit.
    registry = CircuitRegistry.of(pipeline)
    for _ in range(10):
        assert registry.allow("https://api.test:443") is None
        registry.record("https://api.test:443", Verdict(Action.RETRY))
    assert circuit.state is CircuitState.OPEN
    # It goes on for 1.5 s more; then the server is back.
    server.down_until = clock.now() + 1.5
    back = server.down_until
    sent = server.received
    result = await call()
    assert result == 200
    # Two probes: one in the outage (it failed), one after it (it closed the circuit).
    assert server.received == sent + 2
    assert back <= clock.now() <= back + 1.0
    assert circuit.state is CircuitState.CLOSED
