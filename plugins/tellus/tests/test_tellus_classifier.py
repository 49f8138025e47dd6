"""Every Tellus code, classified exactly as the Tellus error page prescribes."""

from __future__ import annotations

import httpx
import pytest
from resilience_tellus import TELLUS_CODES, TellusClassifier, TellusToken
from resilience_tellus.testing import simulator

import resilience
from resilience import (
    MAX_HINT_SECONDS,
    Action,
    AuthRefresh,
    ExponentialBackoff,
    FieldError,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Verdict,
)
from resilience.errors import AuthenticationError, PermanentError, RetriesExhausted
from resilience.testing import Fault, FaultPlan, ScriptedTransport, VirtualClock, reply

REQUEST = httpx.Request("GET", "https://api.tellus.test/v1/operator/sites")
CLASSIFIER = TellusClassifier()

#: The page's table: code, HTTP status, action.
DOCUMENTED = [
    (0, 200, Action.ACCEPT),
    (1001, 400, Action.FAIL),
    (1002, 400, Action.FAIL),
    (2001, 401, Action.REFRESH_AUTH),
    (2002, 401, Action.REFRESH_AUTH),
    (2003, 403, Action.FAIL),
    (3001, 404, Action.FAIL),
    (4001, 409, Action.FAIL),
    (5001, 429, Action.RETRY),
    (9001, 500, Action.RETRY),
]


def classify(status: int, body: object = None, **kwargs: object) -> Verdict:
    if body is None:
        response = httpx.Response(status, **kwargs)  # type: ignore[arg-type]
    else:
        response = httpx.Response(status, json=body, **kwargs)  # type: ignore[arg-type]
    return CLASSIFIER.classify(REQUEST, response, None)


def test_table_is_the_documented_one() -> None:
    """The plugin's table holds exactly the page's codes, statuses and actions."""
    table = {(int(code), entry.status, entry.action) for code, entry in TELLUS_CODES.items()}
    assert table == set(DOCUMENTED)


@pytest.mark.parametrize(("code", "status", "action"), DOCUMENTED)
def test_every_documented_code(code: int, status: int, action: Action) -> None:
    """Each code with its documented status gives the documented action and problem."""
    verdict = classify(status, {"code": code, "message": "whatever the text says"})
    assert verdict.action is action
    if action is Action.ACCEPT:
        assert verdict.problem is None
        return
    assert verdict.problem is not None
    assert verdict.problem.vendor == "tellus"
    assert verdict.problem.code == str(code)
    assert verdict.problem.status == status
    assert verdict.problem.title == "whatever the text says"


@pytest.mark.parametrize(("code", "status", "action"), DOCUMENTED[1:])
@pytest.mark.parametrize("other_status", [200, 400, 500, 503])
def test_code_wins_over_status(code: int, status: int, action: Action, other_status: int) -> None:
    """The body's code decides whatever the HTTP status (a 200 can carry an error)."""
    assert classify(other_status, {"code": code, "message": "m"}).action is action


def test_message_is_never_parsed() -> None:
    """Messages that sound like other errors change nothing."""
    for message in ("Token expired", "Too many requests", "internal error, retry", ""):
        assert classify(400, {"code": 1001, "message": message}).action is Action.FAIL
        assert classify(401, {"code": 2002, "message": message}).action is Action.REFRESH_AUTH


def test_page_example_body() -> None:
    """The page's own example: 1001 with details.field, kept as a field error."""
    body = {
        "code": 1001,
        "message": "Parameter 'power' must be positive",
        "details": {"field": "power", "value": -5},
    }
    verdict = classify(400, body)
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.details == {"field": "power", "value": -5}
    assert verdict.problem.errors == (
        FieldError(field="power", detail="Parameter 'power' must be positive"),
    )
    missing = classify(400, {"code": 1002, "message": "m", "details": {"field": "device_id"}})
    assert missing.problem is not None
    assert missing.problem.errors[0].field == "device_id"


def test_5001_wait_hint() -> None:
    """details.retry_after_seconds first, then Retry-After, else no hint."""
    body = {"code": 5001, "message": "Too many requests", "details": {"retry_after_seconds": 17}}
    assert classify(429, body).retry_after == 17
    assert classify(429, body, headers={"Retry-After": "3"}).retry_after == 17
    bare = {"code": 5001, "message": "Too many requests"}
    assert classify(429, bare, headers={"Retry-After": "3"}).retry_after == 3
    assert classify(429, bare).retry_after is None
    nan = b'{"code": 5001, "details": {"retry_after_seconds": NaN}}'
    assert classify(429, content=nan).retry_after is None
    for junk in (-5, "soon", None, True, [1]):
        garbage = {"code": 5001, "details": {"retry_after_seconds": junk}}
        assert classify(429, garbage).retry_after is None, junk
    huge = {"code": 5001, "details": {"retry_after_seconds": 10**12}}
    assert classify(429, huge).retry_after == MAX_HINT_SECONDS == 86_400
    assert classify(500, {"code": 9001}, headers={"Retry-After": "4"}).retry_after == 4


def test_non_envelope_bodies_fall_back_to_status() -> None:
    """A proxy's HTML page, garbage or a foreign JSON shape: the HTTP status decides."""
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    assert classify(502, content=html).action is Action.RETRY
    assert classify(503, content=b"upstream connect error").action is Action.RETRY
    assert classify(404, content=html).action is Action.FAIL
    assert classify(401, content=b"").action is Action.REFRESH_AUTH
    assert classify(500, {"error": "boom"}).action is Action.RETRY
    # A string code is not Tellus's numeric code: not an envelope.
    assert classify(400, {"code": "2002"}).action is Action.FAIL
    assert classify(200, content=b"plain text").action is Action.ACCEPT
    assert classify(200, content=b"[1, 2]").action is Action.ACCEPT


def test_unknown_codes() -> None:
    """An unknown code on an error status reads the status; on a 2xx it is a FAIL."""
    assert classify(503, {"code": 7777}).action is Action.RETRY
    assert classify(400, {"code": 7777}).action is Action.FAIL
    unknown_ok = classify(200, {"code": 7777, "message": "new error"})
    assert unknown_ok.action is Action.FAIL
    assert unknown_ok.problem is not None
    assert unknown_ok.problem.code == "7777"


def test_success_code_on_error_status() -> None:
    """code 0 on a 5xx is contradictory: the status wins."""
    assert classify(500, {"code": 0, "message": "success"}).action is Action.RETRY


def test_needs_success_bodies() -> None:
    """Tellus success bodies are envelopes too, so they are read."""
    assert CLASSIFIER.needs_body is True
    assert CLASSIFIER.vendor == "tellus"


# ---- refresh once, then fail: through a real pipeline with AuthRefresh -----------------


def _pipeline(clock: VirtualClock) -> Pipeline:
    auth = TellusToken(client_id="c", client_secret="s", base_url="http://tellus.test")
    backoff = ExponentialBackoff(jitter="none")
    return Pipeline(
        [Retry(max_attempts=5, backoff=backoff), AuthRefresh(auth)],
        classifier="tellus",
        clock=clock,
    )


@pytest.mark.anyio
async def test_2002_refreshes_and_replays_once() -> None:
    """An expired token (2002): one refresh, one replay, success."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id="c", client_secret="s")
    transport = ResilientTransport(_pipeline(clock), inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://tellus.test") as client:
        assert (await client.get("/v1/operator/sites")).status_code == 200
        sim.expire_tokens()
        clock.advance(1)
        response = await client.get("/v1/operator/sites")
    assert response.status_code == 200
    assert response.json()["code"] == 0
    codes = [r.code for r in sim.requests_to("GET", "/v1/operator/sites")]
    assert codes == ["0", "2002", "0"]
    assert sim.tokens_issued == 2


@pytest.mark.anyio
@pytest.mark.parametrize("code", ["2001", "2002"])
async def test_second_rejection_is_permanent(code: str) -> None:
    """2001 (or 2002) again after the one refresh: AuthenticationError, no more calls."""
    clock = VirtualClock()
    plan = FaultPlan(errors=[Fault(code=code, path="/v1/operator/sites")])
    sim = simulator(plan=plan, clock=clock, client_id="c", client_secret="s")
    transport = ResilientTransport(_pipeline(clock), inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://tellus.test") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get("/v1/operator/sites")
    assert caught.value.problem is not None
    assert caught.value.problem.code == code
    assert f"code={code}" in str(caught.value)
    assert [r.code for r in sim.requests_to("GET", "/v1/operator/sites")] == [code, code]
    assert sim.tokens_issued == 2


@pytest.mark.anyio
@pytest.mark.parametrize("code", ["1001", "1002", "2003", "3001", "4001"])
async def test_permanent_codes_are_not_retried(code: str) -> None:
    """1001, 1002, 2003, 3001, 4001: one attempt, a PermanentError."""
    clock = VirtualClock()
    plan = FaultPlan(errors=[Fault(code=code)])
    sim = simulator(plan=plan, clock=clock, client_id="c", client_secret="s")
    transport = ResilientTransport(_pipeline(clock), inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://tellus.test") as client:
        with pytest.raises(PermanentError) as caught:
            await client.get("/v1/operator/sites")
    assert isinstance(caught.value, httpx.HTTPStatusError)
    assert caught.value.report.attempts == 1
    assert len(sim.requests_to("GET", "/v1/operator/sites")) == 1
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_5001_waits_for_the_hint_then_succeeds() -> None:
    """A rate-limited call waits retry_after_seconds (not the backoff) and succeeds."""
    clock = VirtualClock()
    plan = FaultPlan(rate_limits=None)
    sim = simulator(plan=plan, clock=clock, client_id="c", client_secret="s")
    transport = ResilientTransport(_pipeline(clock), inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://tellus.test") as client:
        for _ in range(60):
            await client.get("/v1/operator/sites")
        clock.advance(15)
        response = await client.get("/v1/operator/sites")
    assert response.status_code == 200
    assert response.extensions["resilience"].delays == [45.0]


# ---- control POSTs: never replayed unless the user opts in ------------------------

CONTROL = "https://api.tellus.test/v1/operator/devices/dvc_1/connectors/1/start"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "headers", "replayed"),
    [
        ({}, {}, False),
        ({"retry_non_idempotent": True}, {}, True),
        ({"idempotent_methods": {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"}}, {}, True),
        ({}, {"Idempotency-Key": "k-1"}, True),
    ],
    ids=["default", "retry_non_idempotent", "idempotent_methods", "idempotency-key"],
)
async def test_control_post_is_replayed_only_when_opted_in(
    overrides: dict[str, object], headers: dict[str, str], replayed: bool
) -> None:
    """A 9001 on a control POST: the preset does not replay it (Tellus has no
    idempotency key); ``retry_non_idempotent=True``, ``idempotent_methods`` with POST,
    or a request's own ``Idempotency-Key`` header opt in, as the README says."""
    ok = {"code": 0, "message": "success", "data": {"command_id": "cmd_1", "status": "queued"}}
    inner = ScriptedTransport.of(
        reply(500, json={"code": 9001, "message": "Internal server error"}), reply(200, json=ok)
    )
    pipeline = resilience.standard_pipeline(
        "tellus", clock=VirtualClock(), breaker=None, **overrides
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        if replayed:
            response = await client.post(CONTROL, json={"charge_power": 7.4}, headers=headers)
            assert response.json()["code"] == 0
            assert response.extensions["resilience"].attempts == 2
        else:
            with pytest.raises(RetriesExhausted) as caught:
                await client.post(CONTROL, json={"charge_power": 7.4}, headers=headers)
            assert caught.value.report.gave_up == "not_idempotent"
            assert caught.value.report.attempts == 1
    assert len(inner.requests) == (2 if replayed else 1)
    assert inner.unclosed() == []


@pytest.mark.anyio
async def test_2002_on_a_control_post_is_refreshed_and_replayed() -> None:
    """2002 on a control POST: refresh and replay (a 401 was not carried out), even
    though the POST is never replayed for a 9001."""
    ok = {"code": 0, "message": "success", "data": {"command_id": "cmd_1", "status": "queued"}}
    inner = ScriptedTransport.of(
        reply(401, json={"code": 2002, "message": "Token expired"}), reply(200, json=ok)
    )
    pipeline = resilience.standard_pipeline(
        "tellus", auth=StaticToken("t"), clock=VirtualClock(), breaker=None
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        response = await client.post(CONTROL, json={"charge_power": 7.4})
    assert response.json()["code"] == 0
    assert len(inner.requests) == 2
    assert inner.unclosed() == []
