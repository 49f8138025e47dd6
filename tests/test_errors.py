"""Errors: their tree, their fields, their messages, and ``raise_on_failure=False``."""

from __future__ import annotations

import pickle
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilience
from resilience import (
    Action,
    ExponentialBackoff,
    FieldError,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    Verdict,
)
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    ConfigurationError,
    PartialFailureError,
    PermanentError,
    ResilienceError,
    RetriesExhausted,
    redact_url,
)
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/devices"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
WRAPPING = (PermanentError, RetriesExhausted, AuthenticationError, PartialFailureError)


class Vendor:
    """A vendor classifier reading a Turris-like JSON error body."""

    vendor = "acme"

    def classify(self, request: Any, response: Any, error: Any) -> Verdict:
        if response is None or response.status_code < 400:
            return Verdict(Action.ACCEPT)
        body = response.json()
        problem = Problem(
            vendor="acme",
            status=response.status_code,
            code=body["errorType"],
            title=body["errorMessage"][0],
            request_id=body["requestId"],
            errors=[FieldError(field="name", detail="required")],
            details={"raw": body},
        )
        action = {
            "rate_limit_exceeded": Action.RETRY,
            "unauthorized": Action.REFRESH_AUTH,
        }.get(body["errorType"], Action.FAIL)
        return Verdict(action, problem=problem)


def body(status: int, kind: str, secret: str = "s3cr3t-token") -> httpx.Response:
    """A Turris-like error body (whose message mentions a secret)."""
    return reply(
        status,
        json={
            "statusCode": status,
            "requestId": "req-42",
            "errorType": kind,
            "errorMessage": [f"{kind} happened"],
            "echo": secret,
        },
    )


async def call(
    *steps: Any, classifier: Any = None, max_attempts: int = 3, **kwargs: Any
) -> httpx.Response:
    """One GET through Retry with the given script; returns the response or raises."""
    inner = ScriptedTransport(list(steps))
    pipeline = Pipeline(
        [Retry(max_attempts=max_attempts, backoff=ONE)],
        classifier=classifier or Vendor(),
        clock=VirtualClock(),
        telemetry=False,
        **kwargs,
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        try:
            return await client.get(URL)
        finally:
            assert inner.unclosed() == []


# -- the tree ------------------------------------------------------------------------


def test_exception_tree() -> None:
    """Every error is a ResilienceError and an httpx.HTTPError; ConfigurationError is
    also a ValueError."""
    for kind in (*WRAPPING, CircuitOpenError, ConfigurationError):
        assert issubclass(kind, ResilienceError)
        assert issubclass(kind, httpx.HTTPError)
    assert issubclass(ConfigurationError, ValueError)
    for kind in (*WRAPPING, CircuitOpenError, ConfigurationError):
        assert not issubclass(kind, httpx.HTTPStatusError)


@pytest.mark.parametrize("kind", WRAPPING)
def test_http_status_error_only_with_a_response(kind: type[ResilienceError]) -> None:
    """With ``response=`` the error is an httpx.HTTPStatusError (same name, module and
    class family); without it, it is not."""
    request = httpx.Request("GET", URL)
    response = httpx.Response(503, request=request, json={"a": 1})
    with_response = kind("boom", request=request, response=response)
    assert isinstance(with_response, kind)
    assert isinstance(with_response, httpx.HTTPStatusError)
    assert type(with_response).__name__ == kind.__name__
    assert type(with_response).__module__ == "resilience.errors"
    assert with_response.response is response
    assert with_response.request is request
    bare = kind("boom", request=request)
    assert not isinstance(bare, httpx.HTTPStatusError)
    assert bare.response is None
    assert bare.problem is None
    assert bare.report.attempts == 0


def test_vendor_subclass_is_an_http_status_error_with_a_response() -> None:
    """A plugin's own subclass of PermanentError behaves like PermanentError."""

    class AcmeError(PermanentError):
        """Acme's own permanent error."""

    request = httpx.Request("GET", URL)
    response = httpx.Response(409, request=request)
    err = AcmeError("conflict", request=request, response=response)
    assert isinstance(err, AcmeError)
    assert isinstance(err, PermanentError)
    assert isinstance(err, httpx.HTTPStatusError)
    assert type(err).__name__ == "AcmeError"
    assert not isinstance(AcmeError("conflict"), httpx.HTTPStatusError)


def test_circuit_open_error_fields() -> None:
    """CircuitOpenError carries its key and the seconds until it half-opens."""
    err = CircuitOpenError("open", key="https://api.test:443", retry_after=12.5)
    assert (err.key, err.retry_after, err.response) == ("https://api.test:443", 12.5, None)
    with pytest.raises(RuntimeError):
        err.request  # noqa: B018 - no request attached yet
    assert (str(err), err.args) == ("open", ("open",))
    by_name = CircuitOpenError(message="open", key="k", retry_after=1.0)
    assert (str(by_name), by_name.args) == ("open", ("open",))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CircuitOpenError
    assert (str(back), back.key, back.retry_after) == ("open", "https://api.test:443", 12.5)

    class MineOpen(CircuitOpenError):
        pass

    mine = MineOpen("mine", key="k", retry_after=2.0)
    assert (type(mine), str(mine), mine.key) == (MineOpen, "mine", "k")
    with pytest.raises(TypeError):
        CircuitOpenError("open", retry_after=1.0)  # type: ignore[call-arg]


def test_errors_pickle() -> None:
    """Errors survive pickling (for process pools and task queues)."""
    err = RetriesExhausted("x", problem=Problem(vendor="http", status=503))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RetriesExhausted
    assert back.problem == err.problem
    assert not isinstance(back, httpx.HTTPStatusError)


async def test_raised_errors_with_a_response_pickle() -> None:
    """An error raised with a response pickles, and stays an HTTPStatusError."""
    with pytest.raises(PermanentError) as info:
        await call(body(404, "not_found"))
    back = pickle.loads(pickle.dumps(info.value))
    assert isinstance(back, PermanentError)
    assert isinstance(back, httpx.HTTPStatusError)
    assert back.response.json()["requestId"] == "req-42"
    assert back.request.url == URL
    assert str(back) == str(info.value)
    assert back.report.attempts == 1


# -- raised by the pipeline ----------------------------------------------------------


async def test_permanent_error_fields_and_message() -> None:
    """A FAIL verdict raises PermanentError: an HTTPStatusError whose .response is
    read, .problem normalised, .report complete, and a message naming vendor,
    status, code and request id, but no body or secret."""
    with pytest.raises(httpx.HTTPStatusError) as info:
        await call(body(404, "not_found"))
    err = info.value
    assert isinstance(err, PermanentError)
    assert err.response.status_code == 404
    assert err.response.json()["requestId"] == "req-42"
    assert err.request.url == URL
    assert err.problem is not None
    assert (err.problem.vendor, err.problem.status, err.problem.code) == ("acme", 404, "not_found")
    assert err.problem.request_id == "req-42"
    assert err.problem.errors == (FieldError(field="name", detail="required"),)
    assert err.report.attempts == 1
    assert err.report.delays == []
    assert [v.action for v in err.report.verdicts] == [Action.FAIL]
    message = str(err)
    assert message == (
        f"GET {URL}: acme HTTP 404 code=not_found 'not_found happened' request_id=req-42; 1 attempt"
    )
    assert "s3cr3t" not in message
    assert "s3cr3t" not in repr(err)
    assert err.response.extensions["resilience"] is err.report


async def test_retries_exhausted_fields_and_message() -> None:
    """RETRY verdicts until max_attempts: RetriesExhausted with every verdict and delay."""
    with pytest.raises(RetriesExhausted) as info:
        await call(body(429, "rate_limit_exceeded"))
    err = info.value
    assert isinstance(err, httpx.HTTPStatusError)
    assert err.response.status_code == 429
    assert err.response.json()["errorType"] == "rate_limit_exceeded"
    assert err.report.attempts == 3
    assert err.report.delays == [1.0, 2.0]
    assert len(err.verdicts) == 3
    assert all(v.action is Action.RETRY for v in err.verdicts)
    assert err.verdicts is err.report.verdicts
    assert str(err) == (
        f"GET {URL}: acme HTTP 429 code=rate_limit_exceeded 'rate_limit_exceeded happened' "
        "request_id=req-42; 3 attempts, gave up: max_attempts (every allowed attempt was used)"
    )


async def test_retries_exhausted_without_a_response() -> None:
    """Transport errors only: RetriesExhausted is not an HTTPStatusError, has no
    response, and chains the last transport error."""
    with pytest.raises(RetriesExhausted) as info:
        await call(httpx.ConnectError("connection refused"), classifier="http")
    err = info.value
    assert not isinstance(err, httpx.HTTPStatusError)
    assert err.response is None
    assert isinstance(err.__cause__, httpx.ConnectError)
    assert err.problem is not None
    assert err.problem.code == "ConnectError"
    assert err.report.attempts == 3


async def test_authentication_error_on_an_unhandled_refresh_verdict() -> None:
    """A REFRESH_AUTH verdict that no layer handled: AuthenticationError, with the
    response, saying the credentials were rejected."""
    with pytest.raises(AuthenticationError) as info:
        await call(body(401, "unauthorized"))
    err = info.value
    assert isinstance(err, httpx.HTTPStatusError)
    assert err.response.status_code == 401
    assert "credentials rejected" in str(err)
    assert "request_id=req-42" in str(err)
    assert err.report.attempts == 1


async def test_existing_http_status_error_handlers_keep_working() -> None:
    """``except httpx.HTTPStatusError`` as with ``raise_for_status`` catches them."""
    caught: list[int] = []
    for step in (body(400, "invalid_input"), body(429, "rate_limit_exceeded")):
        try:
            await call(step)
        except httpx.HTTPStatusError as exc:
            caught.append(exc.response.status_code)
    assert caught == [400, 429]


async def test_message_for_the_generic_classifier() -> None:
    """The "http" classifier's messages name the status and its reason phrase."""
    with pytest.raises(PermanentError) as info:
        await call(reply(403), classifier="http")
    assert str(info.value) == f"GET {URL}: HTTP 403 'Forbidden'; 1 attempt"


# -- raise_on_failure=False ----------------------------------------------------------


async def test_raise_on_failure_false_returns_the_final_response() -> None:
    """FAIL and exhausted RETRY return the last response with the report instead."""
    r = await call(body(404, "not_found"), raise_on_failure=False)
    assert r.status_code == 404
    assert r.json()["errorType"] == "not_found"
    assert r.extensions["resilience"].attempts == 1
    assert r.extensions["resilience"].verdicts[0].action is Action.FAIL

    r = await call(body(429, "rate_limit_exceeded"), raise_on_failure=False)
    report = r.extensions["resilience"]
    assert r.status_code == 429
    assert (report.attempts, report.delays, report.gave_up) == (3, [1.0, 2.0], "max_attempts")


async def test_raise_on_failure_false_still_raises_without_a_response() -> None:
    """With no response to return (transport errors), the error is raised anyway."""
    with pytest.raises(RetriesExhausted):
        await call(httpx.ConnectError("down"), classifier="http", raise_on_failure=False)


def test_configuration_error_is_a_value_error_naming_the_argument() -> None:
    """Bad configuration is a ConfigurationError, also a ValueError."""
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)
    assert resilience.errors.ConfigurationError is ConfigurationError


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: resilience.ResilientTransport("http"), "ResilientTransport: pipeline"),
        (lambda: resilience.AsyncClient([Retry()]), "AsyncClient: pipeline"),
        (lambda: resilience.Secret(b"hunter2"), "Secret: value must be a str, got bytes"),
    ],
    ids=["transport", "client", "secret"],
)
def test_a_wrong_type_of_argument_is_a_configuration_error(build: Any, named: str) -> None:
    """A constructor given an argument of the wrong type fails with the same error
    as any bad argument, naming the class and the argument (never the value)."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        build()
    assert "hunter2" not in str(caught.value)


def test_a_plugin_preset_returning_no_pipeline_stays_a_type_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preset that returns something else is the plugin's bug, not the caller's bad
    argument: a TypeError naming the plugin, not a ConfigurationError."""
    from resilience import _loader

    broken = type("Broken", (), {"preset": staticmethod(lambda **_: "not a pipeline")})()
    monkeypatch.setitem(_loader._cache, "broken", broken)
    with pytest.raises(TypeError, match="plugin 'broken': its preset returned str") as caught:
        resilience.standard_pipeline("broken")
    assert not isinstance(caught.value, ConfigurationError)


class RejectsSuccess:
    """Fails every 200 without reading its body (like a classifier that dislikes a
    header)."""

    vendor = "picky"
    needs_body = False

    def classify(self, request: Any, response: Any, error: Any) -> Verdict:
        problem = Problem(vendor="picky", status=200, code="unexpected")
        return Verdict(Action.FAIL, problem=problem)


async def test_fail_on_an_unread_success_body_reads_it_for_the_error() -> None:
    """A FAIL on a 2xx whose body was not read: the error's response is read (.json()
    works) and the stream is closed."""
    with pytest.raises(PermanentError) as info:
        await call(reply(200, json={"data": [1]}), classifier=RejectsSuccess())
    assert info.value.response.json() == {"data": [1]}
    assert "code=unexpected" in str(info.value)


async def test_fail_on_an_unread_success_body_returned_when_not_raising() -> None:
    """With ``raise_on_failure=False`` the caller gets that 2xx, readable as usual."""
    r = await call(
        reply(200, json={"data": [1]}), classifier=RejectsSuccess(), raise_on_failure=False
    )
    assert r.json() == {"data": [1]}
    assert r.extensions["resilience"].verdicts[0].action is Action.FAIL


# -- how the message reads -----------------------------------------------------------


async def test_the_class_name_appears_once_in_the_traceback_line() -> None:
    """The traceback's last line names the class once, then the method and URL."""
    import traceback

    with pytest.raises(RetriesExhausted) as info:
        await call(reply(503), classifier="http")
    line = traceback.format_exception_only(type(info.value), info.value)[-1]
    assert line.count("RetriesExhausted") == 1
    assert line == (
        f"resilience.errors.RetriesExhausted: GET {URL}: HTTP 503 'Service Unavailable'; "
        "3 attempts, gave up: max_attempts (every allowed attempt was used)\n"
    )


async def test_the_url_has_no_query_values_and_no_userinfo() -> None:
    """Query values are redacted (their names stay) and a user and password never
    show; the method is the caller's."""
    inner = ScriptedTransport([reply(404)])
    pipeline = Pipeline([Retry(backoff=ONE)], clock=VirtualClock(), telemetry=False)
    url = "https://alice:pa55word@api.test/v1/items?token=s3cr3t&page=2&flag#frag"
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(PermanentError) as info:
            await client.delete(url)
    message = str(info.value)
    assert message.startswith(
        "DELETE https://api.test/v1/items?token=[redacted]&page=[redacted]&[redacted]: HTTP 404"
    )
    for secret in ("alice", "pa55word", "s3cr3t", "frag"):
        assert secret not in message


async def test_transport_failures_name_the_error_and_why_it_gave_up() -> None:
    """No response at all: the message names the transport error, the attempts and
    why retrying stopped."""
    with pytest.raises(RetriesExhausted) as info:
        await call(httpx.ConnectError("connection refused"), classifier="http")
    assert str(info.value) == (
        f"GET {URL}: code=ConnectError 'connection refused'; 3 attempts, "
        "gave up: max_attempts (every allowed attempt was used)"
    )


async def test_a_write_that_is_not_retried_says_why() -> None:
    """A POST is never sent twice without an idempotency key, and the message says so."""
    inner = ScriptedTransport([reply(503)])
    pipeline = Pipeline([Retry(backoff=ONE)], clock=VirtualClock(), telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.post(URL, json={"a": 1})
    assert str(info.value).endswith(
        "; 1 attempt, gave up: not_idempotent "
        "(the method is not idempotent, so it is never sent twice)"
    )
    assert str(info.value).startswith(f"POST {URL}: HTTP 503")


async def test_an_open_circuit_names_the_request() -> None:
    """A call the breaker rejects says which request, that nothing was sent, and why."""
    inner = ScriptedTransport([reply(503)])
    pipeline = Pipeline(
        [resilience.CircuitBreaker(minimum_calls=1, failure_ratio=0.5)],
        classifier="http",
        clock=VirtualClock(),
        telemetry=False,
        raise_on_failure=False,
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        await client.get(URL)
        with pytest.raises(CircuitOpenError) as info:
            await client.get(URL + "?key=abc")
    message = str(info.value)
    assert message.startswith(f"GET {URL}?key=[redacted]: circuit breaker ")
    assert "is open" in message
    assert "abc" not in message


def test_a_bare_error_is_its_message() -> None:
    """Built by hand, with no request and no attempts, an error reads as given."""
    assert str(PermanentError("no such widget")) == "no such widget"
    assert str(ConfigurationError("max_attempts must be at least 1")) == (
        "max_attempts must be at least 1"
    )


@given(
    names=st.lists(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), min_size=1, max_size=4),
    values=st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,20}", fullmatch=True), min_size=4),
)
def test_redact_url_never_shows_a_query_value(names: list[str], values: list[str]) -> None:
    """Whatever the query holds, the redacted URL keeps each name and no value."""
    query = "&".join(f"{n}=SECRET{v}" for n, v in zip(names, values, strict=False))
    text = redact_url(f"https://u:SECRETpw@api.test/p?{query}")
    assert "SECRET" not in text
    assert text == "https://api.test/p?" + "&".join(f"{n}=[redacted]" for n in names)


def test_redact_url_bounds_its_length() -> None:
    """A very long URL is cut, never quoted whole."""
    text = redact_url("https://api.test/" + "a" * 5000)
    assert len(text) == 300
    assert text.endswith("…")
