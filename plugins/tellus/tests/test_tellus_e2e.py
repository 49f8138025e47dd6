"""End to end: a burst of calls through the Tellus preset, against the simulator served
over real loopback HTTP with a fault plan, on a virtual clock."""

from __future__ import annotations

import collections
import json
import random
import uuid

import httpx
import pytest
from resilience_tellus import TellusToken
from resilience_tellus.testing import simulator

import resilience
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    PermanentError,
    ResilienceError,
    RetriesExhausted,
)
from resilience.testing import Fault, FaultPlan, Received, Slowness, VirtualClock, serve

pytestmark = pytest.mark.anyio

ID, SECRET = "fleet-operator", "e2e-secret"
#: Codes the page says never to retry (2001 only after its one refresh).
PERMANENT = {"1001", "1002", "2003", "3001", "4001"}
#: Codes AuthRefresh answers with one refresh and one replay.
REFRESH = {"2001", "2002"}


def _call_of(received: Received) -> str:
    """The id a test put on each logical call (query ``call=`` or body ``transaction_id``)."""
    for part in received.query.split("&"):
        if part.startswith("call="):
            return part[5:]
    if received.body:
        body = json.loads(received.body)
        if isinstance(body, dict) and "transaction_id" in body:
            return str(body["transaction_id"])
    return ""


async def test_burst_through_the_preset() -> None:
    """120 calls: queries past the 60/min limit, control calls, permanent errors and
    injected faults. Every call ends in a response or the typed error the page
    prescribes, and nothing is retried that must not be."""
    clock = VirtualClock()
    plan = FaultPlan(
        errors=[
            Fault(code="9001", rate=0.15),
            Fault(code="2002", rate=0.03, methods={"GET"}),
        ],
        slow=[Slowness(delay=1.5, rate=0.1)],
        token_ttl=900,
        seed=2024,
    )
    sim = simulator(plan=plan, clock=clock, client_id=ID, client_secret=SECRET)
    device_ids = list(sim.devices)
    outcomes: dict[str, str] = {}
    messages: list[str] = []
    async with serve(sim) as base_url:
        auth = TellusToken(client_id=ID, client_secret=SECRET, base_url=base_url, clock=clock)
        # Seeded jitter: the same waits, hence the same story, on every run.
        backoff = resilience.ExponentialBackoff(
            max_delay=30.0, jitter="proportional", jitter_ratio=0.3, rng=random.Random(11)
        )
        pipeline = resilience.standard_pipeline("tellus", auth=auth, clock=clock, backoff=backoff)
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for n in range(120):
                call = f"c{n}"
                kind = n % 6
                try:
                    if kind == 5:
                        # Control: POST without an idempotency key (Tellus has none).
                        device = device_ids[n % len(device_ids)]
                        body = {"charge_power": 7.4 if n % 4 else -1, "transaction_id": call}
                        response = await client.post(
                            f"/v1/operator/devices/{device}/connectors/1/start", json=body
                        )
                    elif kind == 4:
                        response = await client.get(
                            f"/v1/operator/devices/dvc_missing_{n}", params={"call": call}
                        )
                    else:
                        response = await client.get(
                            "/v1/operator/sites", params={"page": 1, "size": 5, "call": call}
                        )
                except (PermanentError, RetriesExhausted, CircuitOpenError) as exc:
                    outcomes[call] = f"{type(exc).__name__}:{exc.problem and exc.problem.code}"
                    messages.append(str(exc))
                except AuthenticationError as exc:  # pragma: no cover - must not happen
                    pytest.fail(f"token refresh failed: {exc}")
                else:
                    assert response.status_code == 200
                    assert response.json()["code"] == 0
                    outcomes[call] = "ok"
                clock.advance(0.2)

    per_call: dict[str, list[Received]] = collections.defaultdict(list)
    for received in sim.received:
        if received.path != "/v1/operator/oauth/token":
            per_call[_call_of(received)].append(received)
    # A call the open breaker refused never reached the vendor; every other one did.
    unsent = set(outcomes) - set(per_call)
    assert all(outcomes[call].startswith("CircuitOpenError") for call in unsent), unsent
    assert set(per_call) <= set(outcomes)

    for call, attempts in per_call.items():
        codes = [a.code for a in attempts]
        # A permanent code ends the call: nothing is sent after it.
        for index, code in enumerate(codes):
            if code in PERMANENT:
                assert index == len(codes) - 1, (call, codes)
        # One refresh per call at most, so at most one replay after 2001/2002.
        assert sum(code in REFRESH for code in codes) <= 2, (call, codes)
        # The page's retry loop: at most 5 attempts (plus the auth replay).
        assert len(attempts) <= 6, (call, codes)
        outcome = outcomes[call]
        if codes[-1] in PERMANENT:
            assert outcome == f"PermanentError:{codes[-1]}", (call, codes, outcome)
        elif codes[-1] == "0":
            assert outcome == "ok"
        else:
            assert outcome.startswith(("RetriesExhausted", "CircuitOpenError")), (call, outcome)

    # Control calls (POST, no idempotency key) are never replayed.
    assert sim.replayed() == []
    kinds = collections.Counter(o.split(":")[0] for o in outcomes.values())
    assert kinds["ok"] >= 60, kinds
    assert kinds["PermanentError"] >= 20, kinds  # the 3001s and the 1001s at least
    # The preset paces its queries to the documented limit, so the server's limit is
    # met only by a retry (the limiter, outside Retry, paces calls, not attempts),
    # and that 5001's hint (whole seconds, not the backoff) was waited out.
    limited = [r for r in sim.received if r.code == "5001"]
    assert len(limited) <= 1
    assert any(s >= 1 and s.is_integer() for s in clock.sleeps), clock.sleeps
    # Every error names the vendor, status and code.
    assert all(m.split(": ", 1)[1].startswith("tellus HTTP ") for m in messages), messages
    # The 900-s tokens were renewed ahead of expiry as virtual time went by.
    assert sim.tokens_issued >= 2


async def test_the_preset_waits_for_its_slot_instead_of_a_5001() -> None:
    """61 queries at once through the default preset: the 61st waits for its slot
    on the client and is sent once, with no 5001 from the server."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    async with serve(sim) as base_url:
        auth = TellusToken(client_id=ID, client_secret=SECRET, base_url=base_url)
        pipeline = resilience.standard_pipeline("tellus", auth=auth, clock=clock)
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for _ in range(60):
                await client.get("/v1/operator/sites", params={"id": str(uuid.uuid4())})
            response = await client.get("/v1/operator/sites")
    assert response.status_code == 200
    assert response.extensions["resilience"].attempts == 1
    assert not [r for r in sim.received if r.code == "5001"]
    assert clock.now() >= 60.0


async def test_report_of_a_rate_limited_call() -> None:
    """One call past the server's limit (the client's limits off): its report shows
    the 5001, the hint-sized delay, success."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    async with serve(sim) as base_url:
        auth = TellusToken(client_id=ID, client_secret=SECRET, base_url=base_url)
        pipeline = resilience.standard_pipeline("tellus", auth=auth, clock=clock, rate_limits=())
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for _ in range(60):
                await client.get("/v1/operator/sites", params={"id": str(uuid.uuid4())})
            response = await client.get("/v1/operator/sites")
    report = response.extensions["resilience"]
    assert report.attempts == 2
    assert [v.reason for v in report.verdicts] == ["5001", "accept"]
    assert report.verdicts[0].retry_after == 60
    assert report.delays == [60.0]


async def test_errors_are_typed_and_carry_the_problem() -> None:
    """A 3001 is a PermanentError (an httpx.HTTPStatusError) with the Tellus problem."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    transport = resilience.ResilientTransport(
        resilience.standard_pipeline(
            "tellus",
            auth=TellusToken(client_id=ID, client_secret=SECRET, base_url="http://tellus.test"),
            clock=clock,
        ),
        inner=httpx.ASGITransport(app=sim),
    )
    async with httpx.AsyncClient(base_url="http://tellus.test", transport=transport) as client:
        with pytest.raises(ResilienceError) as caught:
            await client.get("/v1/operator/devices/dvc_unknown")
    error = caught.value
    assert isinstance(error, PermanentError)
    assert isinstance(error, httpx.HTTPStatusError)
    assert error.response is not None
    assert error.response.status_code == 404
    assert error.problem is not None
    assert (error.problem.vendor, error.problem.code) == ("tellus", "3001")
    assert ": tellus HTTP 404 code=3001" in str(error)
    assert str(error).startswith("GET http")
