"""Every Turris error type and status, classified as the Turris pages prescribe."""

from __future__ import annotations

import email.utils
import logging

import httpx
import pytest
from resilience_turris import TURRIS_CODES, TurrisClassifier, rate_limit_reset

import resilience
from resilience import (
    MAX_HINT_SECONDS,
    Action,
    AuthRefresh,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Verdict,
)
from resilience.errors import AuthenticationError, PermanentError, RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

REQUEST = httpx.Request("GET", "https://public.api.live.turrisfi.com/v1/producers")
CLASSIFIER = TurrisClassifier()
RID = "dev-63c50377-1cfa-4d51-bce7-d187507853db"

#: errorType, status, action: the page's types plus rate_limit_exceeded.
DOCUMENTED = [
    ("unauthorized", 401, Action.REFRESH_AUTH),
    ("forbidden", 403, Action.FAIL),
    ("invalid_input", 400, Action.FAIL),
    ("invalid_input", 422, Action.FAIL),
    ("not_found", 404, Action.FAIL),
    ("internal_error", 500, Action.RETRY),
    ("rate_limit_exceeded", 429, Action.RETRY),
]


def body(error_type: str, status: int, *messages: str) -> dict[str, object]:
    return {
        "statusCode": status,
        "requestId": RID,
        "errorType": error_type,
        "errorMessage": list(messages) or ["something"],
        "timestamp": "2025-01-30T09:58:12.488Z",
    }


def classify(response: httpx.Response) -> Verdict:
    return CLASSIFIER.classify(REQUEST, response, None)


def test_table_is_the_documented_one() -> None:
    """The table holds each documented type with its statuses and action."""
    rows = {
        (code, status, entry.action)
        for code, entry in TURRIS_CODES.items()
        for status in entry.statuses
    }
    assert rows == set(DOCUMENTED)


@pytest.mark.parametrize(("error_type", "status", "action"), DOCUMENTED)
def test_every_documented_type(error_type: str, status: int, action: Action) -> None:
    """Each type gives its action; the request id and messages are on the problem."""
    verdict = classify(httpx.Response(status, json=body(error_type, status, "first", "second")))
    assert verdict.action is action
    problem = verdict.problem
    assert problem is not None
    assert (problem.vendor, problem.code, problem.status) == ("turris", error_type, status)
    assert problem.request_id == RID
    assert problem.title == "first"
    assert problem.detail == "first; second"
    assert problem.details["errorMessage"] == ["first", "second"]
    assert problem.details["timestamp"] == "2025-01-30T09:58:12.488Z"
    assert RID in problem.describe()


def test_page_example() -> None:
    """The page's own invalid_input example."""
    example = body("invalid_input", 400, "Field 'npn' is required")
    verdict = classify(httpx.Response(400, json=example))
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.title == "Field 'npn' is required"
    assert verdict.problem.detail is None


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_statuses_without_a_turris_body(status: int) -> None:
    """429, 500 and 503 retry whatever the body (a load balancer's page, nothing)."""
    assert classify(httpx.Response(status, content=b"<html>oops</html>")).action is Action.RETRY
    assert classify(httpx.Response(status)).action is Action.RETRY
    unknown = classify(httpx.Response(status, json=body("service_unavailable", status)))
    assert unknown.action is Action.RETRY
    assert unknown.problem is not None
    assert unknown.problem.request_id == RID


def test_unknown_types_read_the_status() -> None:
    """An errorType Turris may add later: the status decides, the request id stays."""
    verdict = classify(httpx.Response(409, json=body("conflict", 409)))
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert (verdict.problem.code, verdict.problem.request_id) == ("conflict", RID)
    assert classify(httpx.Response(401, json={"requestId": RID})).action is Action.REFRESH_AUTH


def test_success_bodies_are_not_needed() -> None:
    """2xx bodies stream unread; a read success body keeps its request id."""
    assert CLASSIFIER.needs_body is False
    ok = classify(httpx.Response(200, json={"statusCode": 200, "requestId": RID, "data": {}}))
    assert ok.action is Action.ACCEPT
    assert ok.problem is not None
    assert ok.problem.request_id == RID
    assert classify(httpx.Response(201, json={"statusCode": 201, "data": {}})).problem is None


# ---- X-RateLimit-Reset -------------------------------------------------------------


def _limited(reset: str, date: float | None = None) -> httpx.Response:
    headers = {"X-RateLimit-Reset": reset, "X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0"}
    if date is not None:
        headers["Date"] = email.utils.formatdate(date, usegmt=True)
    return httpx.Response(429, json=body("rate_limit_exceeded", 429), headers=headers)


def test_reset_is_measured_from_the_date_header() -> None:
    """The hint is Reset minus the response's Date: a skewed local clock is harmless."""
    assert classify(_limited("1700000042", date=1_700_000_000)).retry_after == 42
    assert classify(_limited("1700000042.5", date=1_700_000_000)).retry_after == 42.5


def test_reset_without_date_uses_now() -> None:
    """Without a Date header the hint is Reset minus the local time."""
    assert rate_limit_reset(_limited("1700000030"), now=1_700_000_000) == 30


def test_reset_clamping_and_garbage() -> None:
    """A past reset waits 0; a far one is clamped; garbage is ignored."""
    assert classify(_limited("1600000000", date=1_700_000_000)).retry_after == 0
    assert classify(_limited("99999999999", date=1_700_000_000)).retry_after == MAX_HINT_SECONDS
    for junk in ("soon", "", "nan", "inf", "-5", "1e400", "x" * 100):
        assert classify(_limited(junk, date=1_700_000_000)).retry_after is None, junk
    # A small number is a delta in seconds, as some gateways send it.
    assert classify(_limited("30")).retry_after == 30


def test_reset_only_on_429() -> None:
    """Write responses carry the headers too; they are a hint only for a 429."""
    headers = {"X-RateLimit-Reset": "1700000042", "Date": "Tue, 14 Nov 2023 22:13:20 GMT"}
    error = httpx.Response(500, json=body("internal_error", 500), headers=headers)
    assert classify(error).retry_after is None
    bare = httpx.Response(429, content=b"", headers=headers)
    assert classify(bare).retry_after == 42
    with_retry_after = httpx.Response(
        429, json=body("rate_limit_exceeded", 429), headers={"Retry-After": "7"}
    )
    assert classify(with_retry_after).retry_after == 7


# ---- through a pipeline: the request id reaches errors and logs --------------------


@pytest.mark.anyio
async def test_request_id_in_errors_and_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Retries log the request id; the final error message names it."""
    failures = [
        reply(500, json=body("internal_error", 500) | {"requestId": f"dev-{n}"}) for n in range(3)
    ]
    inner = ScriptedTransport.of(*failures)
    pipeline = Pipeline(
        [Retry(max_attempts=3, backoff=ExponentialBackoff(jitter="none"))],
        classifier="turris",
        clock=VirtualClock(),
    )
    transport = ResilientTransport(pipeline, inner=inner)
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(RetriesExhausted) as caught:
                await client.get("https://turris.test/v1/producers")
    assert "request_id=dev-2" in str(caught.value)
    retry_lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retry_lines
    assert all("request_id=dev-" in line for line in retry_lines), retry_lines
    assert inner.unclosed() == []


@pytest.mark.anyio
async def test_422_is_permanent() -> None:
    """422 invalid_input: one attempt, a PermanentError naming the request id."""
    inner = ScriptedTransport.of(reply(422, json=body("invalid_input", 422)))
    pipeline = Pipeline([Retry(max_attempts=4)], classifier="turris", clock=VirtualClock())
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(PermanentError, match=RID):
            await client.get("https://turris.test/v1/producers")
    assert len(inner.requests) == 1


@pytest.mark.anyio
async def test_request_id_in_the_second_rejection_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """unauthorized again after the one refresh: the warning AuthRefresh logs, and the
    AuthenticationError, both name Turris's requestId."""
    inner = ScriptedTransport.of(reply(401, json=body("unauthorized", 401)))
    pipeline = Pipeline(
        [Retry(max_attempts=4), AuthRefresh(StaticToken("jwt"))],
        classifier="turris",
        clock=VirtualClock(),
    )
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as c:
            with pytest.raises(AuthenticationError) as caught:
                await c.get("https://turris.test/v1/producers")
    assert f"request_id={RID}" in str(caught.value)
    lines = [r.getMessage() for r in caplog.records if "rejected again" in r.getMessage()]
    assert lines
    assert all(f"request_id={RID}" in line for line in lines), lines
    assert len(inner.requests) == 2
    assert inner.unclosed() == []


WRITE_OK = {"statusCode": 200, "requestId": RID, "data": {}, "timestamp": "2025-01-30T09:58Z"}


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("key", [None, "idempotency-key", "x-idempotency-key"])
async def test_writes_are_retried_only_with_an_idempotency_key(
    method: str, key: str | None
) -> None:
    """The preset replays POST, PUT, PATCH and DELETE only when the request carries
    ``idempotency-key`` or ``x-idempotency-key`` (Turris accepts both); GET always."""
    inner = ScriptedTransport.of(
        reply(500, json=body("internal_error", 500)), reply(200, json=WRITE_OK)
    )
    pipeline = resilience.standard_pipeline("turris", clock=VirtualClock(), breaker=None)
    headers = {key: "6f1c7a0e-2d4b-4c1e-9a7d-0c2f3e4b5a69"} if key else {}
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        request = client.build_request(
            method, "https://turris.test/v1/producers/p1", json={"npn": "1"}, headers=headers
        )
        if key is None:
            with pytest.raises(RetriesExhausted) as caught:
                await client.send(request)
            assert caught.value.report.gave_up == "not_idempotent"
            assert caught.value.report.attempts == 1
            assert len(inner.requests) == 1
        else:
            response = await client.send(request)
            assert response.status_code == 200
            assert response.extensions["resilience"].attempts == 2
            assert len(inner.requests) == 2
    assert inner.unclosed() == []
