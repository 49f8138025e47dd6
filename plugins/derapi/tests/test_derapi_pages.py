"""Derapi list pages: large pages split like small ones, pages too large to check
fail loudly, and a backend's circuit closes again once full answers come back.

A scripted ``GET /sites`` (in-process): ``state[backend]`` is ``None`` while the
backend answers (its items come back, padded to make pages large) or the message
Derapi names it with in ``errors``; ``?vendor=x`` asks backend ``x`` alone.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx
import pytest
from resilience_derapi import DerapiClassifier

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    ExponentialBackoff,
    PartialFailureSplitter,
    Retry,
    Verdict,
)
from resilience.errors import PartialFailureError, PermanentError
from resilience.testing import ClosingStream, ScriptedTransport, VirtualClock, through

pytestmark = pytest.mark.anyio

BASE = "https://api.derapi.test"
KIB = 1024
MIB = 1024 * KIB
TIMEOUT = "Timeout: https://solis.backend.example/v1/api/sites"
#: The problem code of a page too large to check (resilience_derapi._classifier).
BODY_TOO_LARGE = "body_too_large"


@attrs.define
class Sites:
    """``GET /sites`` over backends whose state the test changes as it goes."""

    state: dict[str, str | None]
    items: int = 2
    padding: int = 0
    asked: list[str | None] = attrs.field(factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("vendor")
        self.asked.append(wanted)
        names = [wanted] if wanted else list(self.state)
        sites: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for name in names:
            failure = self.state[name]
            if failure is None:
                pad = "p" * self.padding
                sites += [
                    {"id": f"{name}-{i}", "vendor": name, "pad": pad} for i in range(self.items)
                ]
            else:
                errors[name] = failure
        body = json.dumps({"sites": sites, "errors": errors}).encode()
        # Streamed in chunks, as a connection hands it over.
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        return httpx.Response(200, headers=headers, stream=ClosingStream(body, chunks=16))

    def times_asked(self, name: str) -> int:
        return self.asked.count(name)


def build(
    server: Sites,
    *,
    splitter: PartialFailureSplitter | None = None,
    breaker: CircuitBreaker | None = None,
    clock: VirtualClock | None = None,
    **options: Any,
) -> tuple[httpx.AsyncClient, ScriptedTransport]:
    inner = ScriptedTransport.of(server)
    layers: list[Any] = [
        splitter or PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none")),
        Retry(max_attempts=1, budget=None),
    ]
    if breaker is not None:
        layers.append(breaker)
    transport = through(inner, *layers, classifier=DerapiClassifier(), clock=clock, **options)
    return httpx.AsyncClient(transport=transport, base_url=BASE), inner


def vendors(response: httpx.Response) -> list[str]:
    return [site["vendor"] for site in response.json()["sites"]]


# --------------------------------------------------------------------------------------
# Large pages


async def test_a_large_page_with_a_failed_backend_is_split() -> None:
    """A 3 MB page naming a failed backend is split like a small one: the backend is
    re-asked alone, recovered, and the report says so."""
    server = Sites({"sma": None, "solis": TIMEOUT}, items=30, padding=100 * KIB)

    def recover(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") == "solis":
            server.state["solis"] = None
        return server(request)

    client, inner = build(server)
    inner.script = [recover]
    async with client:
        response = await client.get("/sites")
    assert len(response.content) > 2 * MIB
    report = response.extensions["resilience"]
    assert report.partial is not None
    assert report.partial.recovered == ("solis",)
    assert vendors(response) == ["sma"] * 30 + ["solis"] * 30
    assert response.json()["errors"] == {}
    assert server.asked == [None, "solis"]
    assert inner.unclosed() == []


async def test_a_large_page_still_failing_raises_under_strict() -> None:
    """A 3 MB page whose failed backend stays down: ``report.partial`` names it, and
    ``strict=True`` raises PartialFailureError instead of a silent ACCEPT."""
    server = Sites({"sma": None, "solis": TIMEOUT}, items=30, padding=100 * KIB)
    splitter = PartialFailureSplitter(
        strict=True, max_rounds=1, backoff=ExponentialBackoff(jitter="none")
    )
    client, inner = build(server, splitter=splitter)
    async with client:
        with pytest.raises(PartialFailureError) as info:
            await client.get("/sites")
    partial = info.value.report.partial
    assert partial is not None
    assert partial.failures["solis"].action is Action.RETRY
    assert server.asked == [None, "solis"]
    assert inner.unclosed() == []


@pytest.mark.parametrize("errors", [True, False], ids=["with errors", "no errors"])
async def test_a_page_over_the_cap_fails_loudly(errors: bool) -> None:
    """A page larger than the pipeline reads (``max_body_bytes``) cannot be checked
    for failed backends: PermanentError ``body_too_large`` (not a breaker failure),
    whether or not it had failures; nothing is re-asked."""
    server = Sites({"sma": None, "solis": TIMEOUT if errors else None}, items=8, padding=64 * KIB)
    breaker = CircuitBreaker(minimum_calls=1, failure_ratio=0.1)
    client, inner = build(server, breaker=breaker, max_body_bytes=256 * KIB)
    async with client:
        with pytest.raises(PermanentError) as info:
            await client.get("/sites")
    problem = info.value.problem
    assert problem is not None
    assert problem.code == BODY_TOO_LARGE
    assert "max_body_bytes" in (problem.detail or "")
    assert not info.value.report.verdicts[0].breaker_failure
    assert server.asked == [None]
    assert inner.unclosed() == []


async def test_a_page_over_the_cap_reaches_the_caller_whole_without_raising() -> None:
    """With ``raise_on_failure=False`` the caller gets that page whole, and its
    report says why it was not accepted."""
    server = Sites({"sma": None, "solis": TIMEOUT}, items=8, padding=64 * KIB)
    client, inner = build(server, max_body_bytes=256 * KIB, raise_on_failure=False)
    async with client:
        response = await client.get("/sites")
    assert response.json()["errors"] == {"solis": TIMEOUT}
    assert vendors(response) == ["sma"] * 8
    assert response.extensions["resilience"].verdicts[0].reason == BODY_TOO_LARGE
    assert inner.unclosed() == []


def test_the_classifier_reads_large_pages_and_refuses_cut_ones() -> None:
    """The classifier alone: a 2 MB page with a failed backend is SPLIT; the same
    page marked as cut by the pipeline is FAIL ``body_too_large``; a cut body that
    is no JSON object is read by its status."""
    classifier = DerapiClassifier()
    request = httpx.Request("GET", f"{BASE}/sites")
    sites = [{"id": f"sma-{i}", "vendor": "sma", "pad": "p" * 1000} for i in range(2200)]
    body = json.dumps({"sites": sites, "errors": {"solis": TIMEOUT}}).encode()
    assert len(body) > 2 * MIB
    whole = httpx.Response(200, content=body, request=request)
    assert classifier.classify(request, whole, None).action is Action.SPLIT
    split = classifier.split(request, whole, Verdict(Action.SPLIT))
    assert split is not None
    assert list(split.failures) == ["solis"]
    cut = httpx.Response(
        200,
        content=body[: 64 * KIB],
        request=request,
        extensions={"resilience.body_truncated": True},
    )
    verdict = classifier.classify(request, cut, None)
    assert verdict.action is Action.FAIL
    assert verdict.problem is not None
    assert verdict.problem.code == BODY_TOO_LARGE
    assert classifier.split(request, cut, Verdict(Action.SPLIT)) is None
    csv = httpx.Response(
        200, content=b"id,vendor\n" * 1000, extensions={"resilience.body_truncated": True}
    )
    assert classifier.classify(request, csv, None).action is Action.ACCEPT


# --------------------------------------------------------------------------------------
# A backend's circuit after recovery


async def test_full_answers_close_a_backend_circuit_again() -> None:
    """``derapi:solis`` opens while solis fails; once its break is over, full answers
    (every backend answered) close it again, so the next single transient failure
    of solis is re-asked and recovered, not reported as an open circuit."""
    clock = VirtualClock()
    server = Sites({"sma": None, "solis": TIMEOUT})
    breaker = CircuitBreaker(minimum_calls=3, failure_ratio=0.5, window=60.0, break_duration=30.0)
    splitter = PartialFailureSplitter(max_rounds=1, backoff=ExponentialBackoff(jitter="none"))
    client, inner = build(server, splitter=splitter, breaker=breaker, clock=clock)
    registry = CircuitRegistry.of(client._transport.pipeline)  # type: ignore[attr-defined]
    async with client:
        for _ in range(3):
            await client.get("/sites")
        assert registry.get("derapi:solis").state.value == "open"
        clock.advance(31.0)
        server.state["solis"] = None
        for _ in range(3):  # hours of healthy answers, in short
            response = await client.get("/sites")
            assert vendors(response) == ["sma", "sma", "solis", "solis"]
        assert registry.get("derapi:solis").state.value == "closed"

        # One transient failure, once: re-asked alone, and recovered.
        def once(request: httpx.Request) -> httpx.Response:
            if request.url.params.get("vendor") == "solis":
                server.state["solis"] = None
            return server(request)

        server.state["solis"] = TIMEOUT
        inner.script = [once]
        response = await client.get("/sites")
    report = response.extensions["resilience"]
    assert report.partial.failures == {}
    assert report.partial.recovered == ("solis",)
    assert vendors(response) == ["sma", "sma", "solis", "solis"]
    assert server.asked[-2:] == [None, "solis"]


async def test_a_filtered_full_answer_covers_only_its_backend() -> None:
    """A full answer to ``?vendor=sma`` says nothing about solis: its circuit is not
    counted a success (after its break it waits, half-open, for solis to be asked)."""
    clock = VirtualClock()
    server = Sites({"sma": None, "solis": TIMEOUT})
    breaker = CircuitBreaker(minimum_calls=3, failure_ratio=0.5, window=60.0, break_duration=30.0)
    splitter = PartialFailureSplitter(max_rounds=1, backoff=ExponentialBackoff(jitter="none"))
    client, _ = build(server, splitter=splitter, breaker=breaker, clock=clock)
    registry = CircuitRegistry.of(client._transport.pipeline)  # type: ignore[attr-defined]
    async with client:
        for _ in range(3):
            await client.get("/sites")
        clock.advance(31.0)
        for _ in range(3):
            await client.get("/sites", params={"vendor": "sma"})
    assert registry.get("derapi:solis").state.value == "half_open"


def test_the_preset_takes_the_body_caps() -> None:
    """``standard_pipeline("derapi", max_body_bytes=...)`` sets the page cap."""
    import resilience

    pipeline = resilience.standard_pipeline(
        "derapi", max_body_bytes=64 * MIB, max_error_body_bytes=64 * KIB, telemetry=False
    )
    assert pipeline.env.max_body_bytes == 64 * MIB
    assert pipeline.env.max_error_body_bytes == 64 * KIB
