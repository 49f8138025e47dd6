"""The Derapi classifier: every type's action, our token vs vendor credentials,
partial-success lists, backend error names, garbage, and the splitting protocol."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx
import pytest
from resilience_derapi import DERAPI_CODES, DerapiClassifier, backend_verdict, type_uri
from resilience_derapi._classifier import INTERNAL_ERRORS_EXTENSION, canonical_type

from resilience import Action, CallReport, FieldError, Split, SplittingClassifier, Verdict
from resilience.errors import ConfigurationError

BASE = "https://api.derapi.com"
CLASSIFIER = DerapiClassifier()


def problem(
    slug_or_uri: str,
    status: int,
    /,
    *,
    content_type: str = "application/problem+json",
    headers: dict[str, str] | None = None,
    **members: Any,
) -> httpx.Response:
    uri = slug_or_uri if "#" in slug_or_uri else type_uri(slug_or_uri)
    body = {"type": uri, "title": "Some title", **members}
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": content_type, **(headers or {})},
    )


def classify(
    response: httpx.Response, method: str = "GET", path: str = "/sites/site-x", **kw: Any
) -> Verdict:
    request = httpx.Request(method, BASE + path, **kw)
    return CLASSIFIER.classify(request, response, None)


# --------------------------------------------------------------------------------------
# Problem types


EXPECTED = {
    "validation-error": Action.FAIL,
    "vcm-not-configured": Action.FAIL,
    "unauthorized": Action.FAIL,
    "not-found": Action.FAIL,
    "exists": Action.FAIL,
    "derapi-internal-error": Action.RETRY,
    "backend-data-assertion-error": Action.FAIL,
    "backend-server-error": Action.RETRY,
    "network-timeout": Action.RETRY,
    "too-many-requests": Action.RETRY,
}


def test_table_covers_every_documented_type() -> None:
    """The table holds exactly Derapi's ten documented types, with their actions."""
    assert {uri: entry.action for uri, entry in DERAPI_CODES.items()} == {
        type_uri(slug): action for slug, action in EXPECTED.items()
    }


@pytest.mark.parametrize(
    ("slug", "status"),
    [(slug, status) for slug in EXPECTED for status in DERAPI_CODES[type_uri(slug)].statuses],
)
@pytest.mark.parametrize("content_type", ["application/problem+json", "application/json"])
def test_every_type_gives_its_action(slug: str, status: int, content_type: str) -> None:
    """Each type, at each documented status and either content type, gets its action;
    the problem carries the full type URI as its code."""
    verdict = classify(problem(slug, status, content_type=content_type, detail="why"))
    assert verdict.action is EXPECTED[slug]
    assert verdict.problem is not None
    assert verdict.problem.vendor == "derapi"
    assert verdict.problem.code == type_uri(slug)
    assert verdict.problem.status == status
    assert verdict.problem.title == "Some title"
    assert verdict.problem.detail == "why"


@pytest.mark.parametrize("status", [401, 403])
def test_vendor_unauthorized_is_never_a_refresh(status: int) -> None:
    """``#unauthorized`` is the vendor backend rejecting the vendor credentials:
    FAIL, not a breaker failure, and never REFRESH_AUTH, whatever the status."""
    verdict = classify(problem("unauthorized", status))
    assert verdict.action is Action.FAIL
    assert verdict.breaker_failure is False


def test_validation_errors_become_field_errors() -> None:
    """``errors[{detail, pointer}]`` become FieldErrors; the pointer names the field."""
    verdict = classify(
        problem(
            "validation-error",
            400,
            detail="body: bad (and 1 others)",
            errors=[
                {"detail": "Additional properties are not allowed", "pointer": "#"},
                {"detail": "-1 is less than the minimum of 0", "pointer": "#/duration"},
                {"detail": "bad", "pointer": "#/a~1b/c~0d"},
                "junk",
                {"pointer": 5, "detail": None},
            ],
        )
    )
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.errors == (
        FieldError(pointer="#", field=None, detail="Additional properties are not allowed"),
        FieldError(
            pointer="#/duration", field="duration", detail="-1 is less than the minimum of 0"
        ),
        FieldError(pointer="#/a~1b/c~0d", field="c~d", detail="bad"),
    )


def test_extension_members_are_kept_as_details() -> None:
    """status and instance (and other extensions) are tolerated and kept in details."""
    members: dict[str, Any] = {"status": 404, "instance": "/x/1", "extra": {"k": 1}}
    verdict = classify(problem("not-found", 404, **members))
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert dict(verdict.problem.details) == {"status": 404, "instance": "/x/1", "extra": {"k": 1}}


def test_request_id_header_is_kept() -> None:
    """An X-Request-Id header (if Derapi sends one) is the problem's request id."""
    verdict = classify(problem("backend-server-error", 502, headers={"x-request-id": "r-1"}))
    assert verdict.problem is not None
    assert verdict.problem.request_id == "r-1"


@pytest.mark.parametrize(
    "spelling",
    [
        "http://docs.derapi.com/reference/errors#network-timeout",
        "https://docs.derapi.com/reference/errors/#network-timeout",
        "#network-timeout",
        "https://docs.derapi.com/reference/errors#Network-Timeout",
    ],
)
def test_type_spelling_variants(spelling: str) -> None:
    """Harmless variants of a type URI are read as the documented type."""
    assert canonical_type(spelling) == type_uri("network-timeout")
    verdict = classify(problem(spelling, 504))
    assert verdict.action is Action.RETRY
    assert verdict.problem is not None
    assert verdict.problem.code == type_uri("network-timeout")


def test_too_many_requests_honours_retry_after() -> None:
    """Retry-After in seconds and as an HTTP-date are both honoured."""
    assert (
        classify(problem("too-many-requests", 429, headers={"retry-after": "7"})).retry_after == 7
    )
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    verdict = classify(
        problem(
            "too-many-requests",
            429,
            headers={"retry-after": date, "date": email.utils.formatdate(now, usegmt=True)},
        )
    )
    assert verdict.retry_after is not None
    assert 28 <= verdict.retry_after <= 31


def test_permanent_types_ignore_retry_after() -> None:
    """A FAIL carries no wait hint even if the response has Retry-After."""
    assert classify(problem("not-found", 404, headers={"retry-after": "5"})).retry_after is None


# --------------------------------------------------------------------------------------
# Derapi Internal Error: idempotent requests only, a few times


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_internal_error_retries_idempotent_requests_twice(method: str) -> None:
    """One call (the request replayed as is, or copied as AuthRefresh does, all
    carrying the call's report): RETRY, RETRY, then FAIL, always a breaker failure;
    the next call starts from zero, even with the same request object."""
    original = httpx.Request(method, BASE + "/sites/site-x")
    report = CallReport()
    original.extensions["resilience"] = report
    copies = [
        original,
        httpx.Request(method, original.url, extensions=dict(original.extensions)),
        httpx.Request(method, original.url, extensions=dict(original.extensions)),
    ]
    response = problem("derapi-internal-error", 500)
    actions = []
    for request in copies:
        verdict = CLASSIFIER.classify(request, response, None)
        report.verdicts.append(verdict)  # as the pipeline does after each attempt
        actions.append(verdict)
    assert [v.action for v in actions] == [Action.RETRY, Action.RETRY, Action.FAIL]
    assert all(v.breaker_failure for v in actions)
    original.extensions["resilience"] = CallReport()  # the next call of the same request
    assert CLASSIFIER.classify(original, response, None).action is Action.RETRY


def test_internal_error_count_outside_a_pipeline() -> None:
    """A request classified outside a pipeline (no call report) is counted in its
    own extensions, and the classifier keeps nothing."""
    classifier = DerapiClassifier()
    request = httpx.Request("PUT", BASE + "/sites/site-x", content=b"{}")
    response = problem("derapi-internal-error", 500)
    actions = [classifier.classify(request, response, None).action for _ in range(3)]
    assert actions == [Action.RETRY, Action.RETRY, Action.FAIL]
    assert request.extensions[INTERNAL_ERRORS_EXTENSION] == 3
    assert vars(classifier) == {"internal_error_retries": 2}


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_internal_error_fails_non_idempotent_requests(method: str) -> None:
    """POST and PATCH are never retried on an internal error."""
    verdict = classify(problem("derapi-internal-error", 500), method=method)
    assert verdict.action is Action.FAIL
    assert verdict.breaker_failure is True


def test_internal_error_with_idempotency_key_retries() -> None:
    """A POST with an Idempotency-Key may be retried."""
    verdict = classify(
        problem("derapi-internal-error", 500), method="POST", headers={"Idempotency-Key": "k"}
    )
    assert verdict.action is Action.RETRY


def test_internal_error_cap_is_configurable() -> None:
    """internal_error_retries=0 never retries; negative values are refused."""
    request = httpx.Request("GET", BASE + "/sites")
    verdict = DerapiClassifier(internal_error_retries=0).classify(
        request, problem("derapi-internal-error", 500), None
    )
    assert verdict.action is Action.FAIL
    with pytest.raises(ConfigurationError, match="DerapiClassifier: internal_error_retries"):
        DerapiClassifier(internal_error_retries=-1)


# --------------------------------------------------------------------------------------
# Our own bearer token


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(401),
        httpx.Response(401, json={"message": "Unauthorized"}),
        httpx.Response(401, content=b"<html>401</html>", headers={"content-type": "text/html"}),
        httpx.Response(401, json={"type": "about:blank", "title": "Unauthorized"}),
        httpx.Response(401, json={"message": "The incoming token has expired"}),
        httpx.Response(403, json={"message": "Token expired"}),
        httpx.Response(403, headers={"www-authenticate": 'Bearer error="invalid_token"'}),
    ],
    ids=["bare", "gateway", "html", "about-blank", "expired-401", "expired-403", "challenge"],
)
def test_our_token_rejected_refreshes(response: httpx.Response) -> None:
    """A 401 that is no Derapi problem, or a body saying the token expired: refresh."""
    verdict = classify(response)
    assert verdict.action is Action.REFRESH_AUTH
    assert verdict.problem is not None
    assert verdict.problem.vendor == "derapi"


def test_bare_403_is_permanent() -> None:
    """A 403 that says nothing about a token is a permission problem: FAIL."""
    assert classify(httpx.Response(403, json={"message": "Forbidden"})).action is Action.FAIL


# --------------------------------------------------------------------------------------
# Unknown types and garbage


def test_unknown_type_falls_back_to_the_status() -> None:
    """An undocumented type keeps its URI as the code; the status decides."""
    unknown = "https://docs.derapi.com/reference/errors#brand-new"
    retry = classify(problem(unknown, 503))
    assert retry.action is Action.RETRY
    assert retry.problem is not None
    assert retry.problem.code == unknown
    assert classify(problem(unknown, 418)).action is Action.FAIL
    assert classify(problem(unknown, 401)).action is Action.REFRESH_AUTH


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"type": 5, "title": [], "detail": {}}',
        b'{"type": null}',
        b'{"errors": "x"}',
        b"\xff\xfe",
        b"[" * 50_000 + b"]" * 50_000,
    ],
)
@pytest.mark.parametrize(("status", "action"), [(500, Action.RETRY), (404, Action.FAIL)])
def test_garbage_bodies_fall_back_to_the_status(body: bytes, status: int, action: Action) -> None:
    """Bodies that are no problem document never raise; the status decides."""
    verdict = classify(httpx.Response(status, content=body))
    assert verdict.action is action


def test_transport_errors_retry() -> None:
    """A connection error is RETRY; an odd exception is FAIL."""
    request = httpx.Request("GET", BASE)
    assert CLASSIFIER.classify(request, None, httpx.ConnectError("x")).action is Action.RETRY
    assert CLASSIFIER.classify(request, None, ValueError("x")).action is Action.FAIL


def test_a_broken_response_never_raises() -> None:
    """Even a response object that raises is classified (by status, or RETRY)."""

    class Broken(httpx.Response):
        @property
        def content(self) -> bytes:
            raise RuntimeError("boom")

    verdict = CLASSIFIER.classify(httpx.Request("GET", BASE), Broken(502), None)
    assert verdict.action is Action.RETRY


# --------------------------------------------------------------------------------------
# Partial-success lists


def test_list_with_failed_backends_is_split() -> None:
    """A 200 with a non-empty errors object is SPLIT (not a host breaker failure)."""
    body = {"sites": [{"id": "site-1", "vendor": "sma"}], "errors": {"solis": "Unauthorized: x"}}
    verdict = classify(httpx.Response(200, json=body), path="/sites")
    assert verdict.action is Action.SPLIT
    assert verdict.breaker_failure is False
    assert verdict.problem is not None
    assert verdict.problem.details["backends"] == ["solis"]


@pytest.mark.parametrize(
    "body",
    [
        {"sites": [], "errors": {}},
        {"sites": []},
        {"solar-inverters": ["https://api.derapi.com/solar-inverters/sma:1"], "errors": {}},
        {"sites": [], "errors": ["not", "an", "object"]},
    ],
)
def test_list_without_failures_is_accept(body: dict[str, Any]) -> None:
    """An empty or missing errors object (or one of the wrong type) is ACCEPT."""
    assert classify(httpx.Response(200, json=body), path="/sites").action is Action.ACCEPT


@pytest.mark.parametrize(
    ("message", "action", "slug"),
    [
        (
            "Unauthorized: https://www.soliscloud.com:13333/v1/api/inverterList",
            Action.FAIL,
            "unauthorized",
        ),
        ("unauthorized", Action.FAIL, "unauthorized"),
        ("VCM Not Configured: account", Action.FAIL, "vcm-not-configured"),
        ("Not Found: https://x", Action.FAIL, "not-found"),
        ("Exists: https://x", Action.FAIL, "exists"),
        ("Invalid request: https://x", Action.FAIL, "validation-error"),
        ("Backend Data Assertion Error: bad json", Action.FAIL, "backend-data-assertion-error"),
        ("Timeout: https://x", Action.RETRY, "network-timeout"),
        ("Network Timeout after 30s", Action.RETRY, "network-timeout"),
        ("network-timeout: https://x", Action.RETRY, "network-timeout"),
        ("Too Many Requests (slow down)", Action.RETRY, "too-many-requests"),
        ("Backend Server Error: 503 from https://x", Action.RETRY, "backend-server-error"),
        ("Derapi Internal Error", Action.RETRY, "derapi-internal-error"),
    ],
)
def test_backend_error_names(message: str, action: Action, slug: str) -> None:
    """A backend error string is classified by its leading error name."""
    verdict = backend_verdict("solis", message)
    assert verdict.action is action
    assert verdict.problem is not None
    assert verdict.problem.code == type_uri(slug)
    assert verdict.problem.detail == message
    assert verdict.problem.details["backend"] == "solis"


@pytest.mark.parametrize(
    "message",
    [
        "Timeout: Unauthorized",
        "Connection reset by peer",
        "Timeouts everywhere",
        "",
        None,
        42,
        {"nested": "Unauthorized"},
    ],
)
def test_backend_error_names_read_only_the_start(message: Any) -> None:
    """Only the leading name counts (never the rest); an unknown one is RETRY."""
    verdict = backend_verdict("sma", message)
    assert verdict.action is Action.RETRY


def test_backend_error_name_wins_over_the_rest() -> None:
    """ "Unauthorized: Timeout" is Unauthorized: the rest of the string is never read."""
    assert backend_verdict("x", "Unauthorized: Timeout").action is Action.FAIL


def test_unknown_backend_error_keeps_its_name_as_title() -> None:
    """A "Name: rest" message with no known name: RETRY, titled by the name."""
    verdict = backend_verdict("sma", "Gateway Hiccup: https://x")
    assert verdict.action is Action.RETRY
    assert verdict.problem is not None
    assert verdict.problem.code is None
    assert verdict.problem.title == "Gateway Hiccup"


# --------------------------------------------------------------------------------------
# The splitting protocol


def _list(body: dict[str, Any], path: str = "/sites") -> tuple[httpx.Request, httpx.Response]:
    request = httpx.Request("GET", BASE + path)
    return request, httpx.Response(200, json=body, request=request)


def test_classifier_is_a_splitting_classifier() -> None:
    """DerapiClassifier implements the splitting protocol."""
    assert isinstance(CLASSIFIER, SplittingClassifier)


def test_split_separates_items_and_failed_backends() -> None:
    """The payload keeps the items, and in its errors object only what is not
    tracked (a blank backend key, kept as Derapi gave it); failures per backend."""
    request, response = _list(
        {
            "sites": [{"id": "site-1", "vendor": "sma"}, {"id": "site-2", "vendor": "tesla"}],
            "errors": {"solis": "Unauthorized: x", "solaredge": "Timeout: y", "": "z", "n": 1},
            "nextPageToken": "abc",
        }
    )
    result = CLASSIFIER.split(request, response, Verdict(Action.SPLIT))
    assert isinstance(result, Split)
    assert result.payload == {
        "sites": [{"id": "site-1", "vendor": "sma"}, {"id": "site-2", "vendor": "tesla"}],
        "errors": {"": "z"},
        "nextPageToken": "abc",
    }
    assert list(result.failures) == ["solis", "solaredge", "n"]
    assert result.failures["solis"].action is Action.FAIL
    assert result.failures["solaredge"].action is Action.RETRY
    assert result.succeeded == {"sma", "tesla"}


def test_split_of_garbage_is_none() -> None:
    """A body that is no JSON object cannot be split."""
    request = httpx.Request("GET", BASE + "/sites")
    assert (
        CLASSIFIER.split(request, httpx.Response(200, content=b"[]"), Verdict(Action.SPLIT)) is None
    )


def test_split_of_a_narrowed_answer_counts_its_vendor_as_succeeded() -> None:
    """A clean answer to ``vendor=solis`` says solis worked, even with no items."""
    request = httpx.Request("GET", BASE + "/sites?vendor=solis")
    response = httpx.Response(200, json={"sites": [], "errors": {}}, request=request)
    result = CLASSIFIER.split(request, response, Verdict(Action.ACCEPT))
    assert result is not None
    assert result.succeeded == {"solis"}
    assert result.failures == {}


def test_narrow_sets_the_vendor_filter_and_keeps_the_page() -> None:
    """One backend per narrowed request; pageToken and pageSize are kept."""
    request = httpx.Request(
        "GET",
        BASE + "/sites?pageSize=2&pageToken=tok&vendor=sma",
        headers={"api-version": "v2024-09-01"},
        extensions={INTERNAL_ERRORS_EXTENSION: 2, "timeout": {"read": 1.0}},
    )
    narrowed = CLASSIFIER.narrow(request, ("solis",))
    assert narrowed is not None
    assert narrowed.url.params["vendor"] == "solis"
    assert narrowed.url.params["pageToken"] == "tok"
    assert narrowed.url.params["pageSize"] == "2"
    assert narrowed.headers["api-version"] == "v2024-09-01"
    assert INTERNAL_ERRORS_EXTENSION not in narrowed.extensions
    assert narrowed.extensions["timeout"] == {"read": 1.0}


@pytest.mark.parametrize(
    ("method", "parts"),
    [("GET", ("a", "b")), ("POST", ("a",)), ("GET", ("bad key!",)), ("GET", ("x" * 100,))],
)
def test_narrow_refuses_what_it_cannot_express(method: str, parts: tuple[str, ...]) -> None:
    """Several vendors at once, non-GET requests and odd keys are not narrowed."""
    assert CLASSIFIER.narrow(httpx.Request(method, BASE + "/sites"), parts) is None


def test_render_lists_only_the_backends_that_still_failed() -> None:
    """The rendered body's errors hold Derapi's message for each remaining failure."""
    request, response = _list({"sites": [], "errors": {}})
    failures = {
        "solis": backend_verdict("solis", "Unauthorized: https://x"),
        "tesla": Verdict(Action.FAIL),
    }
    rendered = CLASSIFIER.render(
        request, response, {"sites": [{"id": "s"}], "errors": {}}, failures
    )
    rendered.read()
    assert rendered.json() == {
        "sites": [{"id": "s"}],
        "errors": {"solis": "Unauthorized: https://x", "tesla": "fail"},
    }


@pytest.mark.parametrize("status", [401, 403])
def test_vendor_unauthorized_wins_over_token_hints(status: int) -> None:
    """An ``#unauthorized`` problem stays FAIL even when the response also looks like
    a token problem (``WWW-Authenticate: invalid_token``, a detail saying "token
    expired"): the type decides, never a refresh of our token."""
    response = problem(
        "unauthorized",
        status,
        detail="Vendor token expired: https://www.soliscloud.com:13333/v1/api/inverterList",
        headers={"www-authenticate": 'Bearer error="invalid_token"'},
    )
    verdict = classify(response)
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.code == type_uri("unauthorized")
