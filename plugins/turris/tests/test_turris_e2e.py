"""End to end: a burst of calls through the Turris preset, against the simulator served
over real loopback HTTP with a fault plan, on a virtual clock."""

from __future__ import annotations

import collections
import json
import random
import uuid

import httpx
import pytest
from resilience_turris import TurrisToken
from resilience_turris.testing import simulator

import resilience
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    PermanentError,
    RetriesExhausted,
)
from resilience.testing import Fault, FaultPlan, Outage, Received, VirtualClock, serve

pytestmark = pytest.mark.anyio

ID, SECRET = "compliance-bot", "e2e-secret"
PERMANENT = {"forbidden", "invalid_input", "not_found"}
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _call_of(received: Received) -> str:
    for part in received.query.split("&"):
        if part.startswith("call="):
            return part[5:]
    if received.body:
        body = json.loads(received.body)
        if isinstance(body, dict):
            return str(body.get("firstName", ""))
    return ""


async def test_burst_through_the_preset() -> None:
    """Reads with internal errors and an outage, writes past the 60/min limit, with and
    without idempotency keys, and invalid input. Every call ends in a response or the
    typed error the page prescribes; writes without a key are never replayed; every
    Turris error message names its requestId."""
    clock = VirtualClock()
    plan = FaultPlan(
        errors=[Fault(code="internal_error", rate=0.2)],
        outages=[Outage(start=8.0, duration=3.0)],
        seed=77,
    )
    sim = simulator(plan=plan, clock=clock, client_id=ID, client_secret=SECRET, producers=5)
    outcomes: dict[str, str] = {}
    errors: list[resilience.errors.ResilienceError] = []
    keyed: set[str] = set()
    gave_up: dict[str, str | None] = {}
    async with serve(sim) as base_url:
        auth = TurrisToken(client_id=ID, client_secret=SECRET, base_url=base_url)
        # Seeded jitter: the same waits, hence the same story, on every run.
        backoff = resilience.ExponentialBackoff(max_delay=30.0, rng=random.Random(11))
        pipeline = resilience.standard_pipeline("turris", auth=auth, clock=clock, backoff=backoff)
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for n in range(110):
                call = f"c{n}"
                try:
                    if n % 11 == 0:
                        response = await client.get("/v1/producers", params={"call": call})
                    elif n % 13 == 0:
                        # Invalid input (no npn): permanent, never retried.
                        response = await client.post("/v1/producers", json={"firstName": call})
                    else:
                        headers = {}
                        if n % 2:
                            headers["Idempotency-Key"] = str(uuid.uuid4())
                            keyed.add(call)
                        body = {"npn": str(10**9 + n), "firstName": call}
                        response = await client.post("/v1/producers", json=body, headers=headers)
                except (PermanentError, RetriesExhausted, CircuitOpenError) as exc:
                    outcomes[call] = type(exc).__name__
                    gave_up[call] = exc.report.gave_up
                    errors.append(exc)
                except AuthenticationError as exc:  # pragma: no cover - must not happen
                    pytest.fail(f"token refresh failed: {exc}")
                else:
                    assert response.status_code in (200, 201)
                    outcomes[call] = "ok"
                clock.advance(0.1)

    per_call: dict[str, list[Received]] = collections.defaultdict(list)
    for received in sim.received:
        if not received.token_request:
            per_call[_call_of(received)].append(received)
    # A call the open breaker refused never reached the vendor; every other one did.
    unsent = set(outcomes) - set(per_call)
    assert all(outcomes[call].startswith("CircuitOpenError") for call in unsent), unsent
    assert set(per_call) <= set(outcomes)

    for call, attempts in per_call.items():
        codes = [a.code for a in attempts]
        for index, code in enumerate(codes):
            if code in PERMANENT:
                assert index == len(codes) - 1, (call, codes)
        assert len(attempts) <= 4, (call, codes)
        if attempts[0].method in WRITES and call not in keyed:
            assert len(attempts) == 1, (call, codes)
        if codes[-1] in PERMANENT:
            assert outcomes[call] == "PermanentError", (call, codes)

    assert sim.replayed(methods=WRITES) == []
    # Every Turris error names its request id; a load balancer's page has none.
    for error in errors:
        problem = error.problem
        assert problem is not None
        if problem.request_id is not None:
            assert f"request_id={problem.request_id}" in str(error)
        else:
            assert problem.code in {"503", "CircuitOpenError"} or isinstance(
                error, CircuitOpenError
            )
    kinds = collections.Counter(outcomes.values())
    assert kinds["ok"] >= 40, kinds
    # The write limit was reached; keyed writes waited for X-RateLimit-Reset and tried
    # again (until they got through, ran out of attempts, or met an open breaker);
    # unkeyed ones gave up at once.
    limited = [r for r in sim.received if r.code == "rate_limit_exceeded"]
    assert limited
    for record in limited:
        call = _call_of(record)
        if call in keyed:
            attempts = per_call[call]
            if attempts[-1] is record:
                assert gave_up.get(call) in {"max_attempts", "circuit_open"}, (call, attempts)
            else:
                assert attempts[attempts.index(record) + 1].at > record.at
        else:
            assert outcomes[call] == "RetriesExhausted"
            assert gave_up[call] == "not_idempotent"
    assert any(
        call in keyed and per_call[call][-1].status in (200, 201) for call in map(_call_of, limited)
    ), "no keyed write got through after waiting for the limit to reset"
    # The preset paces its writes, so the few 429s come from retries (the limiter
    # paces calls, not attempts); their X-RateLimit-Reset (whole seconds) was waited.
    assert any(s >= 1 and s.is_integer() for s in clock.sleeps), clock.sleeps
    assert sim.tokens_issued == 1


async def test_unkeyed_write_gives_up_at_once() -> None:
    """internal_error on a POST: without a key, one attempt; with one, retried."""
    clock = VirtualClock()
    plan = FaultPlan(errors=[Fault(code="internal_error", methods={"POST"})])
    sim = simulator(plan=plan, clock=clock, client_id=ID, client_secret=SECRET)
    auth = TurrisToken(client_id=ID, client_secret=SECRET, base_url="http://turris.test")
    transport = resilience.ResilientTransport(
        resilience.standard_pipeline("turris", auth=auth, clock=clock),
        inner=httpx.ASGITransport(app=sim),
    )
    async with httpx.AsyncClient(base_url="http://turris.test", transport=transport) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.post("/v1/producers", json={"npn": "1"})
        with pytest.raises(RetriesExhausted) as keyed:
            await client.post(
                "/v1/producers", json={"npn": "2"}, headers={"Idempotency-Key": "k-2"}
            )
    assert caught.value.report.gave_up == "not_idempotent"
    assert caught.value.problem is not None
    assert caught.value.problem.request_id is not None
    assert caught.value.problem.request_id in str(caught.value)
    assert caught.value.report.attempts == 1
    # The same failure with an idempotency key is retried, up to the preset's 4 attempts.
    assert keyed.value.report.attempts == 4
    assert keyed.value.report.gave_up == "max_attempts"
    assert len(sim.requests_to("POST", "/v1/producers")) == 5


async def test_expired_token_refreshes_once() -> None:
    """unauthorized on an expired token: one refresh, one replay, success."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    auth = TurrisToken(client_id=ID, client_secret=SECRET, base_url="http://turris.test")
    transport = resilience.ResilientTransport(
        resilience.standard_pipeline("turris", auth=auth, clock=clock),
        inner=httpx.ASGITransport(app=sim),
    )
    async with httpx.AsyncClient(base_url="http://turris.test", transport=transport) as client:
        await client.get("/v1/auth/test-oauth")
        sim.expire_tokens()
        clock.advance(1)
        response = await client.get("/v1/auth/test-oauth")
    assert response.status_code == 200
    statuses = [r.status for r in sim.requests_to("GET", "/v1/auth/test-oauth")]
    assert statuses == [200, 401, 200]
    assert sim.tokens_issued == 2
