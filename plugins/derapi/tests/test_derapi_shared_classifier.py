"""One DerapiClassifier shared by several pipelines and concurrent calls.

The cap on ``derapi-internal-error`` retries is per logical request: calls running
at the same time through one classifier object (and through two pipelines built
on it) must each get their own count, whatever order their attempts interleave in.
"""

from __future__ import annotations

from collections import Counter

import anyio
import httpx
import pytest
from resilience_derapi import DerapiClassifier, type_uri

from resilience import Action, ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience.errors import PermanentError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

BASE = "http://derapi.test"
INTERNAL = type_uri("derapi-internal-error")
#: Internal errors each site answers before it succeeds.
FAILURES = {"a": 1, "b": 2, "c": 5, "d": 2}


def _server() -> tuple[httpx.MockTransport, Counter[str]]:
    seen: Counter[str] = Counter()

    async def handle(request: httpx.Request) -> httpx.Response:
        site = request.url.path.rsplit("/", 1)[-1]
        seen[site] += 1
        # Let the other calls run between two attempts of this one.
        await anyio.lowlevel.checkpoint()
        if seen[site] <= FAILURES[site]:
            return httpx.Response(
                500,
                json={"type": INTERNAL, "title": "Derapi Internal Error"},
                headers={"content-type": "application/problem+json"},
            )
        return httpx.Response(200, json={"id": site})

    return httpx.MockTransport(handle), seen


async def test_concurrent_calls_through_one_classifier_count_apart() -> None:
    """Four concurrent GETs over two pipelines sharing one classifier: each call may
    retry its own internal errors twice; none is charged another call's errors."""
    classifier = DerapiClassifier()
    clock = VirtualClock()
    backoff = ExponentialBackoff(initial=1.0, jitter="none")
    mock, seen = _server()
    pipelines = [
        Pipeline(
            [Retry(max_attempts=8, backoff=backoff)],
            classifier=classifier,
            clock=clock,
            telemetry=False,
        )
        for _ in range(2)
    ]
    clients = [
        httpx.AsyncClient(base_url=BASE, transport=ResilientTransport(p, inner=mock))
        for p in pipelines
    ]
    outcomes: dict[str, list[Action] | str] = {}

    async def call(site: str, client: httpx.AsyncClient) -> None:
        try:
            response = await client.get(f"/sites/{site}")
        except PermanentError as exc:
            outcomes[site] = [v.action for v in exc.report.verdicts]
        else:
            outcomes[site] = [v.action for v in response.extensions["resilience"].verdicts]

    async with clients[0], clients[1], anyio.create_task_group() as group:
        for index, site in enumerate(FAILURES):
            group.start_soon(call, site, clients[index % 2])
    retry, accept, fail = Action.RETRY, Action.ACCEPT, Action.FAIL
    assert outcomes == {
        "a": [retry, accept],
        "b": [retry, retry, accept],
        "c": [retry, retry, fail],
        "d": [retry, retry, accept],
    }
    assert dict(seen) == {"a": 2, "b": 3, "c": 3, "d": 3}
    # The counts lived in each call's report: the classifier kept nothing.
    assert vars(classifier) == {"internal_error_retries": 2}


async def test_the_same_request_sent_again_gets_its_own_retries() -> None:
    """A request object sent a second time is a new call: its internal errors are
    retried twice again, not failed at once for the first call's errors."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(
            500, json={"type": INTERNAL}, headers={"content-type": "application/problem+json"}
        )

    pipeline = Pipeline(
        [Retry(max_attempts=8, backoff=ExponentialBackoff(jitter="none"))],
        classifier=DerapiClassifier(),
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handle))
    async with httpx.AsyncClient(base_url=BASE, transport=transport) as client:
        request = client.build_request("GET", "/sites/x")
        for _ in range(2):
            with pytest.raises(PermanentError) as caught:
                await client.send(request)
            actions = [v.action for v in caught.value.report.verdicts]
            assert actions == [Action.RETRY, Action.RETRY, Action.FAIL]
    assert len(seen) == 6
