"""The retry path's shortcuts (issue 14, a retry for free) change nothing a user sees:
hooks still get every RetryScheduled, an error body already in memory still reaches
``error.response`` bounded, and the generic verdicts shared between attempts still
carry each response's own ``Retry-After`` and reason phrase."""

from __future__ import annotations

import gzip

import httpx
import pytest

from resilience import (
    Action,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    RetryScheduled,
)
from resilience._classifier import _SHARED, _SHARED_MAX, classify_status
from resilience.errors import RetriesExhausted
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)
BODY_TRUNCATED = "resilience.body_truncated"


def in_memory(*responses: httpx.Response) -> httpx.MockTransport:
    """A MockTransport handing out copies of ``responses`` in turn (the last one
    repeats), each built with ``content=`` and so already read, as mock and ASGI
    transports give them."""
    sent = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        template = responses[min(sent, len(responses)) - 1]
        return httpx.Response(
            template.status_code,
            headers=template.headers,
            content=b"".join(template.stream),  # type: ignore[arg-type]
            extensions=template.extensions,
        )

    return httpx.MockTransport(handler)


def transport(
    inner: httpx.AsyncBaseTransport, retry: Retry, **options: object
) -> ResilientTransport:
    """``Retry`` over ``inner`` on a virtual clock, telemetry off unless asked."""
    options.setdefault("telemetry", False)
    pipeline = Pipeline([retry], clock=VirtualClock(), **options)  # type: ignore[arg-type]
    return ResilientTransport(pipeline, inner=inner)


@pytest.mark.parametrize("telemetry", [False, True], ids=["telemetry off", "no SDK"])
async def test_hooks_get_each_retry_with_the_failed_attempts_verdict(telemetry: bool) -> None:
    """With a hook, each retry is announced (whether telemetry is off or records
    nothing): method, host, attempt, delay and the very verdict of the attempt
    that failed, as the report holds it."""
    events: list[object] = []
    inner = in_memory(httpx.Response(503, content=b"busy"), httpx.Response(200, content=b"ok"))
    hooked = transport(
        inner,
        Retry(backoff=ExponentialBackoff(initial=0.5, jitter="none"), budget=None),
        hooks=[events.append],
        telemetry=telemetry,
    )
    async with httpx.AsyncClient(transport=hooked) as client:
        response = await client.get(URL)
    assert response.status_code == 200
    report = response.extensions["resilience"]
    (event,) = events
    assert isinstance(event, RetryScheduled)
    assert (event.method, event.host, event.attempt, event.delay) == ("GET", "api.test", 1, 0.5)
    assert event.verdict == report.verdicts[0]
    assert event.verdict.action is Action.RETRY
    assert event.verdict.problem is not None
    assert (event.verdict.problem.status, event.verdict.problem.title) == (
        503,
        "Service Unavailable",
    )
    assert report.delays == [0.5]


async def test_without_hooks_the_report_still_says_what_was_waited() -> None:
    """No hook and no telemetry: nothing is announced, and the call still retries,
    waits and reports its waits."""
    clock = VirtualClock()
    inner = in_memory(httpx.Response(503), httpx.Response(503), httpx.Response(200))
    backoff = ExponentialBackoff(initial=1.0, jitter="none")
    pipeline = Pipeline([Retry(backoff=backoff, budget=None)], clock=clock, telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        response = await client.get(URL)
    assert response.extensions["resilience"].delays == [1.0, 2.0]
    assert clock.sleeps == [1.0, 2.0]


async def test_an_error_body_in_memory_reaches_the_error_bounded() -> None:
    """A 503 whose body is already in memory and longer than the error-body cap:
    the error's response holds the first bytes and says it was cut."""
    body = b"x" * 5000
    inner = in_memory(httpx.Response(503, content=body))
    capped = transport(inner, Retry(max_attempts=2, backoff=ZERO), max_error_body_bytes=1000)
    async with httpx.AsyncClient(transport=capped) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    error_response = info.value.response
    assert error_response is not None
    assert error_response.content == body[:1000]
    assert error_response.extensions[BODY_TRUNCATED] is True
    assert error_response.request.url == URL


async def test_an_error_body_in_memory_under_the_cap_reaches_the_error_whole() -> None:
    """Under the cap, the error's response is the whole body, not marked cut, and
    a compressed body is there decoded (as httpx decoded it)."""
    page = b'{"error": "unavailable", "retry": true}'
    inner = in_memory(
        httpx.Response(503, content=gzip.compress(page), headers={"content-encoding": "gzip"})
    )
    async with httpx.AsyncClient(transport=transport(inner, Retry(backoff=ZERO))) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    error_response = info.value.response
    assert error_response is not None
    assert error_response.content == page
    assert error_response.json() == {"error": "unavailable", "retry": True}
    assert BODY_TRUNCATED not in error_response.extensions


async def test_a_failed_answer_in_memory_is_handed_back_whole() -> None:
    """With ``raise_on_failure=False`` the caller gets the last answer itself, its
    whole body (longer than the error-body cap) still readable."""
    body = b"y" * 3000
    inner = in_memory(httpx.Response(503, content=body))
    handing = transport(
        inner,
        Retry(max_attempts=2, backoff=ZERO),
        raise_on_failure=False,
        max_error_body_bytes=100,
    )
    async with httpx.AsyncClient(transport=handing) as client:
        response = await client.get(URL)
    assert response.status_code == 503
    assert response.content == body


async def test_each_retry_after_is_honoured_though_verdicts_are_shared() -> None:
    """Two 503s with different ``Retry-After`` hints, then one without: each wait
    is its own response's hint (or the backoff), not the first one's."""
    clock = VirtualClock()
    inner = in_memory(
        httpx.Response(503, headers={"retry-after": "3"}),
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(503),
        httpx.Response(200),
    )
    pipeline = Pipeline(
        [Retry(max_attempts=4, backoff=ZERO, budget=None)], clock=clock, telemetry=False
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        response = await client.get(URL)
    report = response.extensions["resilience"]
    assert report.delays == [3.0, 7.0, 0.0]
    assert [v.retry_after for v in report.verdicts[:3]] == [3.0, 7.0, None]


def test_the_servers_reason_phrase_is_the_problems_title() -> None:
    """A reason phrase the server sent is the title, whatever another response with
    the same status said before; equal answers give equal verdicts."""
    standard = classify_status("http", httpx.Response(503))
    own = classify_status("http", httpx.Response(503, extensions={"reason_phrase": b"Back Soon"}))
    again = classify_status("http", httpx.Response(503))
    assert standard.problem is not None
    assert own.problem is not None
    assert standard.problem.title == "Service Unavailable"
    assert own.problem.title == "Back Soon"
    assert again == standard
    assert (standard.action, standard.breaker_failure) == (Action.RETRY, True)
    limited = classify_status("http", httpx.Response(429))
    assert (limited.action, limited.breaker_failure) == (Action.RETRY, False)
    assert classify_status("http", httpx.Response(401)).action is Action.REFRESH_AUTH
    assert classify_status("http", httpx.Response(404)).action is Action.FAIL


def test_a_shared_problems_details_refuse_changes() -> None:
    """The problem of a shared generic verdict has empty details that cannot be
    changed (a change would show in every other attempt's problem); they still
    read, compare and serialise as an empty dict."""
    verdict = classify_status("http", httpx.Response(502))
    other = classify_status("http", httpx.Response(502))
    assert verdict.problem is not None
    assert other.problem is not None
    details = verdict.problem.details
    assert details == {}
    assert isinstance(details, dict)
    with pytest.raises(TypeError):
        details["seen"] = True
    with pytest.raises(TypeError):
        details.update(seen=True)
    assert other.problem.details == {}


def test_reason_phrases_a_server_invents_do_not_grow_the_cache() -> None:
    """A server sending a new reason phrase on every answer cannot grow the shared
    verdicts past their bound; each answer still gets its own title."""
    for index in range(_SHARED_MAX + 50):
        phrase = f"phrase {index}".encode()
        response = httpx.Response(500, extensions={"reason_phrase": phrase})
        verdict = classify_status("http", response)
        assert verdict.problem is not None
        assert verdict.problem.title == f"phrase {index}"
    assert len(_SHARED) <= _SHARED_MAX
