"""The HTTP rules the core and the plugins share (resilience._http): one idempotency
rule, one hint cap, one default-port table, each used by every layer and plugin
that needs it."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilience_derapi import DerapiClassifier, type_uri

import resilience
from resilience import (
    IDEMPOTENT_METHODS,
    MAX_HINT_SECONDS,
    Action,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    _breaker,
    _http,
    _telemetry,
    is_idempotent,
    parse_retry_after,
)
from resilience.errors import RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

URL = "https://api.test/v1/things"
METHODS = st.sampled_from(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH"])
KEY_HEADERS = st.sampled_from(["Idempotency-Key", "X-Idempotency-Key", "idempotency-key"])
KEY_VALUES = st.sampled_from(["", " ", "\t", "k-1", " k ", "6f1c7a0e"])


def _internal_error() -> httpx.Response:
    body = {"type": type_uri("derapi-internal-error"), "title": "Derapi Internal Error"}
    return httpx.Response(
        500, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


@given(method=METHODS, headers=st.dictionaries(KEY_HEADERS, KEY_VALUES, max_size=2))
def test_is_idempotent_is_the_rfc_set_or_a_non_empty_key(
    method: str, headers: dict[str, str]
) -> None:
    """A request is idempotent when RFC 9110 says its method is, or when it carries
    an idempotency key with something in it; a blank key promises nothing."""
    request = httpx.Request(method, URL, headers=headers)
    keyed = any(value.strip() for value in request.headers.get_list("idempotency-key")) or any(
        value.strip() for value in request.headers.get_list("x-idempotency-key")
    )
    assert is_idempotent(request) is (method in IDEMPOTENT_METHODS or keyed)


def test_repeated_blank_keys_are_still_blank() -> None:
    """A key header sent twice, empty both times, is no key: httpx joins repeated
    values with ", ", which must not read as a value."""
    request = httpx.Request(
        "POST", URL, headers=[("Idempotency-Key", ""), ("Idempotency-Key", " ")], json={}
    )
    assert not is_idempotent(request)
    assert Retry().is_replayable(request) == "not_idempotent"
    keyed = httpx.Request("POST", URL, headers=[("Idempotency-Key", ""), ("Idempotency-Key", "k")])
    assert is_idempotent(keyed)


def test_is_idempotent_takes_a_method_set() -> None:
    """A layer with its own method set (``Retry(idempotent_methods=...)``) passes it."""
    post = httpx.Request("POST", URL)
    assert not is_idempotent(post)
    assert is_idempotent(post, frozenset({"POST"}))
    assert not is_idempotent(httpx.Request("GET", URL), frozenset({"POST"}))


@given(method=METHODS, headers=st.dictionaries(KEY_HEADERS, KEY_VALUES, max_size=2))
def test_retry_and_derapi_agree_on_what_may_be_replayed(
    method: str, headers: dict[str, str]
) -> None:
    """The Retry layer replays exactly the requests for which Derapi retries an
    internal error: one rule, in the core, for both."""
    request = httpx.Request(method, URL, headers=headers)
    retry_replays = Retry().is_replayable(request) is None
    derapi = DerapiClassifier().classify(request, _internal_error(), None)
    assert (derapi.action is Action.RETRY) is retry_replays


@pytest.mark.parametrize("blank", ["", "   "])
def test_derapi_does_not_retry_a_post_with_a_blank_key(blank: str) -> None:
    """A POST whose Idempotency-Key is empty is not made safe by it: Derapi's
    internal error is then FAIL, as the core's Retry layer would decide."""
    request = httpx.Request("POST", URL, headers={"Idempotency-Key": blank}, json={"a": 1})
    verdict = DerapiClassifier().classify(request, _internal_error(), None)
    assert verdict.action is Action.FAIL


@pytest.mark.anyio
async def test_retry_sends_a_post_with_a_blank_key_once() -> None:
    """End to end: a POST with a blank key gets one attempt, gave_up not_idempotent."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    backoff = ExponentialBackoff(initial=1.0, jitter="none")
    pipeline = Pipeline([Retry(backoff=backoff)], clock=VirtualClock(), telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.post(URL, json={"a": 1}, headers={"Idempotency-Key": " "})
    assert info.value.report.attempts == 1
    assert info.value.report.gave_up == "not_idempotent"
    assert inner.unclosed() == []


def test_every_hint_is_clamped_to_the_one_cap() -> None:
    """``Retry-After``, Tellus's ``retry_after_seconds`` and Turris's
    ``X-RateLimit-Reset`` all stop at ``resilience.MAX_HINT_SECONDS`` (a day)."""
    from resilience_tellus import TellusClassifier
    from resilience_turris import TurrisClassifier

    assert MAX_HINT_SECONDS == 86_400.0
    assert parse_retry_after("999999999") == MAX_HINT_SECONDS
    request = httpx.Request("GET", URL)
    tellus = httpx.Response(
        429, json={"code": 5001, "message": "slow", "details": {"retry_after_seconds": 1e12}}
    )
    assert TellusClassifier().classify(request, tellus, None).retry_after == MAX_HINT_SECONDS
    turris = httpx.Response(
        429,
        json={"statusCode": 429, "errorType": "rate_limit_exceeded", "requestId": "r"},
        headers={"X-RateLimit-Reset": "99999999999", "Date": "Tue, 14 Nov 2023 22:13:20 GMT"},
    )
    assert TurrisClassifier().classify(request, turris, None).retry_after == MAX_HINT_SECONDS


def test_one_default_port_table() -> None:
    """The breaker's keys and the telemetry's ``server.port`` read the same table,
    which cannot be changed in place by a caller."""
    assert _breaker._DEFAULT_PORTS is _http.DEFAULT_PORTS  # type: ignore[attr-defined]
    assert _telemetry.DEFAULT_PORTS is _http.DEFAULT_PORTS  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        _http.DEFAULT_PORTS["https"] = 8443  # type: ignore[index]


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://api.test/", 443),
        ("http://api.test/", 80),
        ("wss://api.test/", 443),
        ("ws://api.test/", 80),
        ("https://api.test:8443/", 8443),
        ("gopher://api.test/", None),
    ],
)
def test_default_port(url: str, port: int | None) -> None:
    """A URL's port, or its scheme's default; ``None`` for an unknown scheme."""
    assert _http.default_port(httpx.URL(url)) == port


def test_the_rules_are_public() -> None:
    """Plugins import the rules from ``resilience``, not from a private module."""
    assert resilience.is_idempotent is _http.is_idempotent
    assert resilience.IDEMPOTENT_METHODS is _http.IDEMPOTENT_METHODS
    assert resilience.MAX_HINT_SECONDS == _http.MAX_HINT_SECONDS
