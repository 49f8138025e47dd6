"""A rate limit is a quota, not an outage: the vendor's 429 answers (and their
rate-limit codes under any status) never count against a circuit breaker, while
the server errors around them still do."""

from __future__ import annotations

import httpx
import pytest

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    Pipeline,
    Problem,
    ResilientTransport,
)
from resilience.errors import ResilienceError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

TELLUS_LIMIT = {"code": 5001, "message": "Too many requests", "details": {}}
TURRIS_LIMIT = {
    "statusCode": 429,
    "requestId": "r-1",
    "errorType": "rate_limit_exceeded",
    "errorMessage": ["slow down"],
    "timestamp": "2026-12-03T00:00:00Z",
}


async def _state_after(classifier: str, status: int, body: object | None, calls: int) -> str:
    clock = VirtualClock()

    def answer(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    pipeline = Pipeline(
        [CircuitBreaker(consecutive_failures=3, minimum_calls=3, failure_ratio=0.5)],
        classifier=classifier,
        clock=clock,
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(answer))
    for _ in range(calls):
        try:
            response = await transport.handle_async_request(
                httpx.Request("GET", "https://api.test/v1/things")
            )
            await response.aclose()
        except ResilienceError:
            pass
    registry = CircuitRegistry.of(pipeline)
    return registry.get("https://api.test:443").state.value


@pytest.mark.parametrize(
    ("classifier", "status", "body"),
    [
        ("http", 429, None),
        ("tellus", 429, TELLUS_LIMIT),
        ("tellus", 200, TELLUS_LIMIT),
        ("turris", 429, TURRIS_LIMIT),
    ],
)
async def test_rate_limit_answers_never_open_the_circuit(
    classifier: str, status: int, body: object | None
) -> None:
    """Ten rate-limit answers in a row leave the circuit closed."""
    assert await _state_after(classifier, status, body, 10) == "closed"


@pytest.mark.parametrize("classifier", ["http", "tellus", "turris"])
async def test_server_errors_still_open_the_circuit(classifier: str) -> None:
    """The same breaker opens on three 503s: only the quota is exempt."""
    assert await _state_after(classifier, 503, None, 10) == "open"


def test_the_default_breaker_reading_of_a_verdict() -> None:
    """A RETRY counts unless its problem is an HTTP 429; a caller's flag always wins."""
    from resilience import Verdict

    assert Verdict(Action.RETRY).breaker_failure
    assert Verdict(Action.RETRY, problem=Problem(vendor="v", status=503)).breaker_failure
    assert not Verdict(Action.RETRY, problem=Problem(vendor="v", status=429)).breaker_failure
    assert Verdict(
        Action.RETRY, problem=Problem(vendor="v", status=429), breaker_failure=True
    ).breaker_failure
    assert not Verdict(Action.FAIL).breaker_failure
