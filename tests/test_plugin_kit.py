"""The plugin kit: code tables, defensive JSON, TableClassifier, token helpers."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import httpx
import pytest

import resilience
from resilience import (
    Action,
    CodeEntry,
    CodeTable,
    ParsedError,
    TableClassifier,
    TokenFetchError,
    VendorPlugin,
    Verdict,
    jwt_expires_in,
    parse_json_object,
    post_for_token,
)
from resilience._plugin import (
    int_field,
    mapping_field,
    normalize_code,
    number_field,
    str_field,
    str_list_field,
)
from resilience._tokens import jwt_claims
from resilience.errors import ConfigurationError

REQUEST = httpx.Request("GET", "https://vendor.test/x")


# ---- CodeTable ----------------------------------------------------------------------


def test_code_table_reads_like_the_vendor_page() -> None:
    """Integer keys become strings; bare actions become entries."""
    table = CodeTable(
        {0: Action.ACCEPT, 2002: CodeEntry(Action.REFRESH_AUTH, 401), "x": Action.FAIL}
    )
    assert list(table) == ["0", "2002", "x"]
    assert table["0"] == CodeEntry(Action.ACCEPT)
    assert table["2002"].status == 401
    assert len(table) == 3
    assert "CodeTable(" in repr(table)
    assert table.codes_for(Action.FAIL) == ["x"]


def test_code_table_lookup_normalises_body_values() -> None:
    """What a body holds (int, float, numeric string) finds the entry; junk does not."""
    table = CodeTable({2002: Action.REFRESH_AUTH})
    for value in (2002, 2002.0, "2002", " 2002 "):
        assert table.action_for(value) is Action.REFRESH_AUTH, value
    for value in (True, None, [2002], {"a": 1}, 2002.5, float("nan"), "", "2003"):
        assert table.action_for(value) is None, value


def test_code_table_rejects_duplicates_and_bad_keys() -> None:
    """A code listed twice (as int and str) or an unusable key is a mistake."""
    with pytest.raises(ConfigurationError, match="twice"):
        CodeTable({1: Action.FAIL, "1": Action.RETRY})
    with pytest.raises(ConfigurationError, match="not a usable code"):
        CodeTable({True: Action.FAIL})


def test_code_entry_validates() -> None:
    """Entries take an Action and real HTTP statuses."""
    entry = CodeEntry(Action.FAIL, 400, also=(422, 400), title="bad")
    assert entry.statuses == (400, 422)
    assert CodeEntry(Action.FAIL).statuses == ()
    with pytest.raises(ConfigurationError, match="CodeEntry: action must be an Action, got str"):
        CodeEntry("fail")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="CodeEntry: status must be an HTTP status"):
        CodeEntry(Action.FAIL, 99)
    with pytest.raises(ConfigurationError, match="HTTP status"):
        CodeEntry(Action.FAIL, 400, also=(True,))  # type: ignore[arg-type]


def test_normalize_code() -> None:
    """Only integers and short strings are codes."""
    assert normalize_code(7) == "7"
    assert normalize_code(-1) == "-1"
    assert normalize_code(7.0) == "7"
    assert normalize_code("abc") == "abc"
    assert normalize_code(10**30) is None
    assert normalize_code(1e300) is None
    assert normalize_code("x" * 500) is None
    assert normalize_code(False) is None


# ---- defensive JSON ----------------------------------------------------------------


def test_parse_json_object_accepts_objects_only() -> None:
    """An object parses; arrays, scalars, HTML and broken JSON give None."""
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    assert parse_json_object(' \n{"a": 1}') == {"a": 1}
    assert parse_json_object(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    for body in (b"[1]", b"1", b"null", b"<html>", b"{", b"", b"\xff\xfe{", "{\ud800}"):
        assert parse_json_object(body) is None, body
    assert parse_json_object(None) is None


def test_parse_json_object_from_responses() -> None:
    """A read response parses; an unread one is None rather than an exception."""
    assert parse_json_object(httpx.Response(400, json={"code": 1})) == {"code": 1}

    unread = httpx.Response(200, stream=httpx.AsyncByteStream())
    assert parse_json_object(unread) is None


def test_parse_json_object_is_fast_on_hostile_input() -> None:
    """Deep nesting, long numbers and megabytes: None, quickly, no exception."""
    depth = 100_000
    hostile = [
        b"{" + b'"a":[' * depth + b"]" * depth + b"}",
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"n": ' + b"9" * 100_000 + b"}",
        b'{"pad": "' + b"x" * 3_000_000 + b'"}',
    ]
    for body in hostile:
        started = time.perf_counter()
        assert parse_json_object(body) is None
        assert time.perf_counter() - started < 1.0
    assert parse_json_object(b'{"pad": "xx"}', max_bytes=5) is None


def test_field_readers() -> None:
    """Each reader returns its type or None, never raising."""
    data = {
        "s": "text",
        "empty": "",
        "long": "y" * 1000,
        "i": 3,
        "f": 3.0,
        "half": 3.5,
        "b": True,
        "n": "12.5",
        "inf": float("inf"),
        "m": {"k": 1},
        "l": ["a", 1, "", "b"],
    }
    assert str_field(data, "s") == "text"
    assert str_field(data, "empty") is None
    assert str_field(data, "i") is None
    long_value = str_field(data, "long", limit=10)
    assert long_value is not None
    assert len(long_value) == 10
    assert int_field(data, "i") == 3
    assert int_field(data, "f") == 3
    assert int_field(data, "half") is None
    assert int_field(data, "b") is None
    assert number_field(data, "n") == 12.5
    assert number_field(data, "inf") is None
    assert number_field(data, "b") is None
    assert mapping_field(data, "m") == {"k": 1}
    assert mapping_field(data, "l") is None
    assert str_list_field(data, "l") == ("a", "b")
    assert str_list_field(data, "s") == ("text",)
    assert str_list_field(data, "m") == ()
    assert str_field(None, "s") is None
    assert int_field(None, "s") is None
    assert number_field(None, "s") is None
    assert mapping_field(None, "s") is None
    assert str_list_field(None, "s") == ()


# ---- TableClassifier ---------------------------------------------------------------


class ToyClassifier(TableClassifier):
    """A vendor whose errors are ``{"err": <code>, "msg": ..., "wait": <s>}``."""

    vendor = "toy"
    codes = CodeTable(
        {
            "ok": CodeEntry(Action.ACCEPT, 200),
            "expired": CodeEntry(Action.REFRESH_AUTH, 401),
            "busy": CodeEntry(Action.RETRY, 429),
            "bad": CodeEntry(Action.FAIL, 400),
        }
    )

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        body = self.parse_json_object(response)
        if body is None or "err" not in body:
            return None
        if body.get("explode"):
            raise RuntimeError("parser bug")
        return ParsedError(
            code=self.str_field(body, "err"),
            title=self.str_field(body, "msg"),
            request_id=self.str_field(body, "rid"),
            retry_after=self.number_field(body, "wait"),
        )


def classify(response: httpx.Response) -> Verdict:
    return ToyClassifier().classify(REQUEST, response, None)


def test_known_code_wins_over_status() -> None:
    """The body's code decides, whatever the status says."""
    verdict = classify(httpx.Response(500, json={"err": "bad", "msg": "no", "rid": "r-1"}))
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.vendor == "toy"
    assert verdict.problem.code == "bad"
    assert verdict.problem.status == 500
    assert verdict.problem.title == "no"
    assert verdict.problem.request_id == "r-1"
    assert classify(httpx.Response(200, json={"err": "busy"})).action is Action.RETRY


def test_unknown_code_and_foreign_bodies_fall_back_to_status() -> None:
    """Unknown codes and non-vendor bodies are read by status (keeping what was parsed)."""
    unknown = classify(httpx.Response(503, json={"err": "weird", "rid": "r-2"}))
    assert unknown.action is Action.RETRY
    assert unknown.problem is not None
    assert unknown.problem.code == "weird"
    assert unknown.problem.request_id == "r-2"
    html = classify(httpx.Response(404, content=b"<html>nope</html>"))
    assert html.action is Action.FAIL
    assert html.problem is not None
    assert html.problem.code == "404"
    assert classify(httpx.Response(204)).action is Action.ACCEPT


def test_success_code_on_error_status_is_read_by_status() -> None:
    """A body saying "ok" on a 503 is contradictory: the status wins."""
    assert classify(httpx.Response(503, json={"err": "ok"})).action is Action.RETRY
    accepted = classify(httpx.Response(200, json={"err": "ok", "rid": "r-3"}))
    assert accepted.action is Action.ACCEPT
    assert accepted.problem is not None
    assert accepted.problem.request_id == "r-3"
    assert classify(httpx.Response(200, json={"err": "ok"})).problem is None


def test_retry_hint_from_parser_then_header() -> None:
    """The parser's hint comes first, then Retry-After."""
    both = httpx.Response(429, json={"err": "busy", "wait": 7}, headers={"Retry-After": "3"})
    assert classify(both).retry_after == 7
    header = httpx.Response(429, json={"err": "busy"}, headers={"Retry-After": "3"})
    assert classify(header).retry_after == 3
    unknown = httpx.Response(503, json={"err": "weird", "wait": 9})
    assert classify(unknown).retry_after == 9
    assert classify(httpx.Response(400, json={"err": "bad", "wait": 9})).retry_after is None


def test_parser_bug_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A broken parse() falls back to the status reading and logs the vendor."""
    with caplog.at_level(logging.WARNING, logger="resilience"):
        verdict = classify(httpx.Response(502, json={"err": "bad", "explode": True}))
    assert verdict.action is Action.RETRY
    assert "'toy'" in caplog.text


def test_errors_are_classified() -> None:
    """Transport errors retry; anything else fails."""
    classifier = ToyClassifier()
    error = httpx.ConnectError("refused", request=REQUEST)
    assert classifier.classify(REQUEST, None, error).action is Action.RETRY
    assert classifier.classify(REQUEST, None, KeyError("x")).action is Action.FAIL
    assert "ToyClassifier(vendor='toy'" in repr(classifier)


def test_base_parse_is_abstract() -> None:
    """A TableClassifier without parse() still never raises: the status is used."""
    verdict = TableClassifier().classify(REQUEST, httpx.Response(500), None)
    assert verdict.action is Action.RETRY


# ---- safe_classify: the one "never raise" wrapper ---------------------------------


def _raising(message: str) -> Any:
    def classify(request: Any, response: Any, error: Any) -> Verdict:
        raise ValueError(message)

    return classify


def _answering(answer: Any) -> Any:
    def classify(request: Any, response: Any, error: Any) -> Any:
        return answer

    return classify


def test_safe_classify_passes_a_sound_verdict_through(caplog: pytest.LogCaptureFixture) -> None:
    """A well-formed verdict comes back untouched, and nothing is logged."""
    sound = Verdict(Action.FAIL, retry_after=None)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        got = resilience.safe_classify(
            _answering(sound), REQUEST, httpx.Response(400), None, vendor="acme"
        )
    assert got is sound
    assert caplog.text == ""


def test_safe_classify_falls_back_to_the_status_reading(caplog: pytest.LogCaptureFixture) -> None:
    """A classifier that raises gets the generic reading of the status (Retry-After
    included) or of the error, under its vendor (or ``fallback_vendor``), and a
    warning naming the vendor, the exception class and its text."""
    busy = httpx.Response(503, headers={"Retry-After": "4"})
    with caplog.at_level(logging.WARNING, logger="resilience"):
        verdict = resilience.safe_classify(_raising("boom"), REQUEST, busy, None, vendor="acme")
    assert (verdict.action, verdict.retry_after) == (Action.RETRY, 4.0)
    assert verdict.problem is not None
    assert (verdict.problem.vendor, verdict.problem.status) == ("acme", 503)
    assert "'acme'" in caplog.text
    assert "ValueError: boom" in caplog.text
    assert "status-code reading" in caplog.text

    generic = resilience.safe_classify(
        _raising("boom"), REQUEST, busy, None, vendor="acme", fallback_vendor="http"
    )
    assert generic.problem is not None
    assert generic.problem.vendor == "http"
    refused = httpx.ConnectError("refused", request=REQUEST)
    verdict = resilience.safe_classify(_raising("boom"), REQUEST, None, refused, vendor="acme")
    assert verdict.action is Action.RETRY
    assert verdict.problem is not None
    assert verdict.problem.code == "ConnectError"


@pytest.mark.parametrize(
    ("answer", "fault"),
    [
        (None, "returned NoneType, not a Verdict"),
        (Verdict(Action.RETRY, problem="busy"), "malformed Verdict (problem is str)"),  # type: ignore[arg-type]
        (Verdict(Action.RETRY, breaker_failure=1), "malformed Verdict (breaker_failure is int)"),  # type: ignore[arg-type]
    ],
    ids=["none", "problem", "breaker_failure"],
)
def test_safe_classify_refuses_malformed_answers(
    answer: Any, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer the layers cannot read is logged by the type that is wrong (never
    its value) and replaced by the status reading."""
    with caplog.at_level(logging.WARNING, logger="resilience"):
        verdict = resilience.safe_classify(
            _answering(answer), REQUEST, httpx.Response(404), None, vendor="acme"
        )
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.code == "404"
    assert fault in caplog.text
    assert "busy" not in caplog.text


def test_safe_classify_log_line_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """An exception whose text is huge (a parser quoting a body) is cut in the log."""
    with caplog.at_level(logging.WARNING, logger="resilience"):
        resilience.safe_classify(
            _raising("x" * 100_000), REQUEST, httpx.Response(500), None, vendor="acme"
        )
    assert caplog.records
    assert all(len(record.getMessage()) < 400 for record in caplog.records)


class SloppyToy(ToyClassifier):
    """A vendor whose own verdict code builds a Verdict with a text problem."""

    def verdict_for(self, response: httpx.Response, action: Action, parsed: ParsedError) -> Verdict:
        return Verdict(action, problem="busy")  # type: ignore[arg-type]


def test_table_classifier_never_returns_a_malformed_verdict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TableClassifier whose subclass answers a malformed Verdict falls back to the
    status under its own vendor, like one that raised."""
    with caplog.at_level(logging.WARNING, logger="resilience"):
        verdict = SloppyToy().classify(REQUEST, httpx.Response(429, json={"err": "busy"}), None)
    assert verdict.action is Action.RETRY
    assert verdict.problem is not None
    assert (verdict.problem.vendor, verdict.problem.status) == ("toy", 429)
    assert "'toy'" in caplog.text
    assert "malformed Verdict" in caplog.text


# ---- VendorPlugin ------------------------------------------------------------------


def test_vendor_plugin_requires_a_classifier() -> None:
    """The only required parts are a name and an object with classify()."""
    plugin = VendorPlugin(name="toy", classifier=ToyClassifier())
    assert repr(plugin) == "<resilience plugin 'toy'>"
    assert plugin.codes == CodeTable({})
    assert plugin.preset is None
    with pytest.raises(ConfigurationError, match=r"VendorPlugin: classifier .*classify.*object"):
        VendorPlugin(name="toy", classifier=object())  # type: ignore[arg-type]


# ---- JWT ---------------------------------------------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(claims).encode())}.sig"


def test_jwt_expires_in_prefers_iat() -> None:
    """exp - iat needs no clock at all (no skew between us and the vendor)."""
    assert jwt_expires_in(_jwt({"iat": 1000, "exp": 4600})) == 3600
    assert jwt_claims(_jwt({"a": 1})) == {"a": 1}


def test_jwt_expires_in_uses_date_then_now() -> None:
    """Without iat: the response's Date, then ``now``, then the wall clock."""
    token = _jwt({"exp": 1_700_000_600})
    dated = httpx.Response(201, headers={"Date": "Tue, 14 Nov 2023 22:13:20 GMT"})
    assert jwt_expires_in(token, response=dated) == 600
    assert jwt_expires_in(token, now=1_700_000_000) == 600
    assert jwt_expires_in(token, now=1_800_000_000) == 0.0
    assert jwt_expires_in(_jwt({"exp": time.time() + 100})) == pytest.approx(100, abs=5)


def test_jwt_garbage() -> None:
    """Not a JWT, or no exp: None."""
    for token in ("opaque", "a.b", "a.!!!.c", "a.b.c", _jwt({"exp": "soon"}), "x" * 20_000):
        assert jwt_expires_in(token) is None, token[:20]


# ---- post_for_token ------------------------------------------------------------------


async def _post(handler: Any, **kwargs: Any) -> tuple[dict[str, Any], httpx.Response]:
    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, base_url="https://vendor.test") as http:
        return await post_for_token(
            http,
            "/token",
            json_body={"client_id": "id", "client_secret": "s3cr3t-value"},
            classifier=ToyClassifier(),
            **kwargs,
        )


@pytest.mark.anyio
async def test_post_for_token_success() -> None:
    """A JSON object in an expected status comes back, the body as JSON."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"token": "t"})

    data, response = await _post(handler, expect=(201,))
    assert data == {"token": "t"}
    assert response.status_code == 201
    assert json.loads(seen[0].content) == {"client_id": "id", "client_secret": "s3cr3t-value"}


@pytest.mark.anyio
async def test_post_for_token_refused() -> None:
    """A refusal is a permanent TokenFetchError naming the vendor's code."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"err": "bad", "msg": "bad secret s3cr3t-value"})

    with pytest.raises(TokenFetchError) as caught:
        await _post(handler)
    error = caught.value
    assert isinstance(error, resilience.errors.AuthenticationError)
    assert error.transient is False
    assert error.problem is not None
    assert error.problem.code == "bad"
    assert "s3cr3t-value" not in f"{error} {error.problem!r}"


@pytest.mark.anyio
async def test_post_for_token_transient() -> None:
    """A vendor rate limit is transient, with its hint."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"err": "busy", "wait": 12})

    with pytest.raises(TokenFetchError) as caught:
        await _post(handler)
    assert caught.value.transient is True
    assert caught.value.retry_after == 12


@pytest.mark.anyio
async def test_post_for_token_transport_error_and_garbage() -> None:
    """A connection failure is transient; a 200 that is not JSON is not."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TokenFetchError) as caught:
        await _post(refuse)
    assert caught.value.transient is True
    assert "ConnectError" in str(caught.value)

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>login</html>")

    with pytest.raises(TokenFetchError) as caught:
        await _post(html)
    assert caught.value.transient is False
    assert caught.value.problem is not None
    assert caught.value.problem.code == "invalid_token_response"
