"""The generic "http" classifier and the verdict vocabulary."""

from __future__ import annotations

import math

import anyio
import httpx
import pytest

from resilience import Action, Classifier, FieldError, HttpClassifier, Problem, Verdict
from resilience._classifier import classify_error, classify_status
from resilience.errors import ConfigurationError

REQUEST = httpx.Request("GET", "https://api.test/x")
HTTP = HttpClassifier()


def verdict_for(status: int, **headers: str) -> Verdict:
    """The "http" verdict of a response with ``status`` and ``headers``."""
    return HTTP.classify(REQUEST, httpx.Response(status, headers=headers), None)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retry(status: int) -> None:
    """408, 425, 429, 500, 502, 503 and 504 are RETRY; all but the quota's 429 count
    as breaker failures."""
    verdict = verdict_for(status)
    assert verdict.action is Action.RETRY
    assert verdict.breaker_failure is (status != 429)
    assert verdict.problem is not None
    assert (verdict.problem.vendor, verdict.problem.status, verdict.problem.code) == (
        "http",
        status,
        str(status),
    )


def test_401_is_refresh_auth() -> None:
    """401 asks for a token refresh; it is not a breaker failure."""
    verdict = verdict_for(401)
    assert verdict.action is Action.REFRESH_AUTH
    assert verdict.breaker_failure is False


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 410, 422, 451, 501, 505, 599])
def test_other_errors_are_fail(status: int) -> None:
    """Every other 4xx (and 5xx such as 501) is FAIL and never trips a breaker."""
    verdict = verdict_for(status)
    assert verdict.action is Action.FAIL
    assert verdict.breaker_failure is False
    assert verdict.problem is not None
    assert verdict.problem.code == str(status)


@pytest.mark.parametrize("status", [200, 201, 204, 206, 301, 304, 399])
def test_success_and_redirects_accept(status: int) -> None:
    """Anything below 400 is ACCEPT, without a problem."""
    verdict = verdict_for(status)
    assert verdict.action is Action.ACCEPT
    assert verdict.problem is None
    assert verdict.reason == "accept"


def test_fail_ignores_retry_after() -> None:
    """A Retry-After on a 404 does not make it retryable."""
    verdict = verdict_for(404, **{"Retry-After": "5"})
    assert verdict.action is Action.FAIL
    assert verdict.retry_after is None


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow read"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.PoolTimeout("pool"),
        httpx.TimeoutException("generic"),
        TimeoutError(),
        ConnectionResetError(),
        anyio.BrokenResourceError(),
        anyio.EndOfStream(),
    ],
)
def test_transport_errors_are_retry(error: BaseException) -> None:
    """Connection and timeout errors are transient; the code is the class name."""
    verdict = HTTP.classify(REQUEST, None, error)
    assert verdict.action is Action.RETRY
    assert verdict.problem is not None
    assert verdict.problem.code == type(error).__name__
    assert verdict.problem.status is None
    assert verdict.problem.title


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad"),
        KeyError("x"),
        httpx.UnsupportedProtocol("ftp"),
        httpx.LocalProtocolError("bad header"),
    ],
)
def test_other_errors_are_fail_not_retried(error: BaseException) -> None:
    """A programming error, an unsupported URL scheme or a malformed request of
    ours will not change on a retry."""
    assert HTTP.classify(REQUEST, None, error).action is Action.FAIL


def test_unsupported_protocol_is_a_transport_error_but_fail() -> None:
    """httpx.UnsupportedProtocol is a TransportError; it must still be FAIL."""
    assert isinstance(httpx.UnsupportedProtocol("x"), httpx.TransportError)
    assert classify_error("http", httpx.UnsupportedProtocol("ftp://")).action is Action.FAIL


def test_long_error_text_is_truncated_in_the_problem() -> None:
    """The title of an exception's problem is bounded."""
    verdict = classify_error("http", httpx.ConnectError("x" * 10_000))
    assert verdict.problem is not None
    assert verdict.problem.title is not None
    assert len(verdict.problem.title) <= 200


def test_classify_status_extra_fields() -> None:
    """Vendor plugins pass their parsed fields; status and Retry-After stay generic."""
    response = httpx.Response(503, headers={"Retry-After": "4"})
    verdict = classify_status("acme", response, code="maintenance", request_id="r-1")
    assert verdict.action is Action.RETRY
    assert verdict.retry_after == 4.0
    assert verdict.problem == Problem(
        vendor="acme",
        status=503,
        code="maintenance",
        title="Service Unavailable",
        request_id="r-1",
    )
    ok = classify_status("acme", httpx.Response(200), code="0")
    assert ok.action is Action.ACCEPT
    assert ok.problem is not None
    assert ok.problem.code == "0"


def test_http_classifier_shape() -> None:
    """The "http" classifier satisfies the protocol and never reads success bodies."""
    assert isinstance(HTTP, Classifier)
    assert HTTP.needs_body is False
    assert HTTP.vendor == "http"
    assert repr(HTTP) == "HttpClassifier()"


# -- the vocabulary ------------------------------------------------------------------


def test_action_members() -> None:
    """Action has exactly the five members of the contract."""
    assert [a.name for a in Action] == ["ACCEPT", "RETRY", "REFRESH_AUTH", "SPLIT", "FAIL"]
    assert repr(Action.RETRY) == "Action.RETRY"


def test_verdict_defaults_and_reason() -> None:
    """breaker_failure defaults to RETRY only; reason is the code or the action."""
    assert Verdict(Action.RETRY).breaker_failure is True
    for action in (Action.ACCEPT, Action.FAIL, Action.REFRESH_AUTH, Action.SPLIT):
        assert Verdict(action).breaker_failure is False
    assert Verdict(Action.FAIL, breaker_failure=True).breaker_failure is True
    assert Verdict(Action.RETRY).reason == "retry"
    assert Verdict(Action.RETRY, problem=Problem(vendor="v", code="5001")).reason == "5001"


@pytest.mark.parametrize("bad", [-1.0, math.nan, "5"])
def test_verdict_rejects_bad_retry_after(bad: object) -> None:
    """retry_after must be a non-negative number or None."""
    with pytest.raises(ValueError, match="retry_after"):
        Verdict(Action.RETRY, retry_after=bad)  # type: ignore[arg-type]


def test_verdict_requires_an_action() -> None:
    """The action must be an Action member (a ConfigurationError naming it)."""
    with pytest.raises(ConfigurationError, match="action"):
        Verdict("retry")  # type: ignore[arg-type]


def test_problem_fields_and_describe() -> None:
    """Problem normalises errors and details; describe() names what support needs."""
    problem = Problem(
        vendor="turris",
        status=429,
        code="rate_limit_exceeded",
        title="Too many requests",
        request_id="abc-123",
        errors=[FieldError(pointer="/name", detail="required")],
        details={"limit": 10},
    )
    assert problem.errors == (FieldError(pointer="/name", detail="required"),)
    assert problem.details == {"limit": 10}
    assert problem.describe() == (
        "turris HTTP 429 code=rate_limit_exceeded 'Too many requests' request_id=abc-123"
    )
    long = Problem(vendor="v", title="t" * 500).describe()
    assert len(long) < 140
    assert long.endswith("…'")
    with pytest.raises(ConfigurationError, match="details"):
        Problem(vendor="v", details=[1, 2])  # type: ignore[arg-type]


def test_problem_details_are_copied() -> None:
    """Changing the mapping a Problem was built from does not change the Problem."""
    raw = {"a": 1}
    problem = Problem(vendor="v", details=raw)
    raw["a"] = 2
    assert problem.details == {"a": 1}
