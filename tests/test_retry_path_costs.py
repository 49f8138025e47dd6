"""What the retry path's shortcuts must keep: a refreshed token is still withheld,
and a zero wait under a real-time deadline still waits and retries.

The shortcuts themselves (the token's forms made once per token, no cancel scope
for a real-clock wait that ends before the deadline) are measured by
``benchmarks/overhead.py``; these tests pin what a user sees through them.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from resilience import (
    Action,
    AuthRefresh,
    ExponentialBackoff,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    Timeout,
    Token,
    Verdict,
)
from resilience.errors import RetriesExhausted
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


class Rotating:
    """A token provider that hands out tok-1, tok-2, ... one per fetch."""

    token_endpoint = None

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        self.fetches += 1
        return Token(f"tok-{self.fetches}-secretvalue")


class EchoClassifier:
    """Reads an error body into the problem's detail, as vendor classifiers do."""

    vendor = "echo"
    needs_body = False

    def classify(
        self, request: httpx.Request, response: httpx.Response | None, error: Any
    ) -> Verdict:
        assert response is not None
        if response.status_code < 400:
            return Verdict(Action.ACCEPT)
        action = Action.REFRESH_AUTH if response.status_code == 401 else Action.RETRY
        problem = Problem(vendor="echo", status=response.status_code, detail=response.text)
        return Verdict(action, problem=problem)


async def exhausted_with_rotating_tokens(app: Any, classifier: Any) -> RetriesExhausted:
    """One call of 3 attempts (zero waits) through ``AuthRefresh(Rotating())`` over
    ``app``: the error it ends with, after checking that two tokens were fetched."""
    provider = Rotating()
    pipeline = Pipeline(
        [Retry(backoff=ZERO, budget=None, max_attempts=3), AuthRefresh(provider)],
        classifier=classifier,
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(app))
    with pytest.raises(RetriesExhausted) as caught:
        await transport.handle_async_request(httpx.Request("GET", URL))
    assert provider.fetches == 2
    return caught.value


async def test_a_refreshed_token_echoed_back_is_withheld_too() -> None:
    # The first token is refused (401) and echoed; the second one is echoed in
    # every 503 after. Each attempt's problem must hold neither token, whichever
    # token it was sent with: the forms searched follow the token.
    def app(request: httpx.Request) -> httpx.Response:
        sent = request.headers["authorization"]
        if "tok-1" in sent:
            return httpx.Response(401, text=f"bad token: {sent}")
        return httpx.Response(503, text=f"busy, you sent {sent}")

    caught = await exhausted_with_rotating_tokens(app, EchoClassifier())
    report = caught.report
    assert report.attempts == 4  # tok-1 refused, replayed with tok-2, then two retries
    details = [verdict.problem.detail for verdict in report.verdicts if verdict.problem]
    assert len(details) == 4
    for detail in details:
        assert "secretvalue" not in (detail or "")
    assert "secretvalue" not in repr(caught.problem)


async def test_a_zero_wait_under_a_real_time_deadline_still_retries() -> None:
    # The real clock and a Timeout(total=...): the wait is the clock's own, with no
    # scope around it. It still happens: the report says what was waited, and the
    # retries go out within the deadline.
    statuses = iter([503, 503, 200])
    seen: list[str] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(next(statuses))

    pipeline = Pipeline([Timeout(total=30.0), Retry(backoff=ZERO, budget=None)], telemetry=False)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(app))
    with anyio.fail_after(5):
        response = await transport.handle_async_request(httpx.Request("GET", URL))
    report = response.extensions["resilience"]
    assert response.status_code == 200
    assert report.attempts == 3 == len(seen)
    assert report.delays == [0.0, 0.0]
    assert report.gave_up is None


async def test_a_zero_wait_under_a_real_time_deadline_is_a_checkpoint() -> None:
    # The caller's cancellation, asked for while the first attempt runs (the mock
    # answers without a checkpoint of its own), is taken at the zero wait: the
    # second attempt never goes out.
    seen: list[str] = []

    pipeline = Pipeline([Timeout(total=30.0), Retry(backoff=ZERO, budget=None)], telemetry=False)
    with anyio.CancelScope() as scope:

        def app(request: httpx.Request) -> httpx.Response:
            seen.append(request.method)
            scope.cancel()
            return httpx.Response(503)

        transport = ResilientTransport(pipeline, inner=httpx.MockTransport(app))
        await transport.handle_async_request(httpx.Request("GET", URL))
    assert scope.cancelled_caught
    assert seen == ["GET"]


async def test_a_real_clock_wait_past_the_deadline_is_not_started() -> None:
    # A 503 asking for 60 s in a call with 30 s left ends at once (the decision,
    # not a cut wait), as before the shortcut.
    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "60"})

    pipeline = Pipeline([Timeout(total=30.0), Retry(budget=None)], telemetry=False)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(app))
    with anyio.fail_after(5), pytest.raises(RetriesExhausted) as caught:
        await transport.handle_async_request(httpx.Request("GET", URL))
    report = caught.value.report
    assert report.attempts == 1
    assert report.delays == []
    assert report.gave_up == "deadline"


async def test_a_shared_problem_clean_for_one_token_is_searched_again_for_the_next() -> None:
    # One frozen problem object answers every attempt (as the generic classifier
    # shares one per status). It does not quote the first token, so it is found
    # clean once; it quotes the second, which must still be withheld after the
    # refresh.
    shared = Problem(vendor="echo", status=503, detail="you sent tok-2-secretvalue")

    class Shared:
        vendor = "echo"
        needs_body = False

        def classify(self, request: httpx.Request, response: Any, error: Any) -> Verdict:
            assert response is not None
            if response.status_code == 401:
                return Verdict(Action.REFRESH_AUTH, problem=shared)
            return Verdict(Action.RETRY, problem=shared)

    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401 if "tok-1" in request.headers["authorization"] else 503)

    caught = await exhausted_with_rotating_tokens(app, Shared())
    report = caught.report
    problems = [verdict.problem for verdict in report.verdicts]
    assert problems[0] is shared  # clean for tok-1: left as it is
    assert all("secretvalue" not in (p.detail or "") for p in problems[1:] if p)
    assert "secretvalue" not in (caught.problem.detail or "")
