"""PartialFailureSplitter: a part's circuit closes again after recovery, a SPLIT
that cannot be split is never passed off as complete, malformed part verdicts
are dropped.

A tiny generic splitter ("mesh") answers ``GET /items``: ``state[part]`` is
``None`` while the part works, else the code of its failure; ``?part=x`` asks
part ``x`` alone.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import httpx
import pytest

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    ExponentialBackoff,
    PartialFailureSplitter,
    Problem,
    Retry,
    Split,
    Verdict,
)
from resilience.errors import PartialFailureError
from resilience.testing import ScriptedTransport, VirtualClock, reply, through

pytestmark = pytest.mark.anyio

URL = "https://mesh.test/items"


@attrs.define
class Mesh:
    """A classifier that splits ``{"items": [...], "failed": {part: code}}``."""

    vendor = "mesh"
    needs_body = True
    unsplittable: bool = False
    with_covers: bool = True
    covered: list[tuple[str, ...]] = attrs.field(factory=list)

    def classify(self, request: httpx.Request, response: httpx.Response | None, error: Any) -> Any:
        if response is None:
            return Verdict(Action.RETRY)
        failed = response.json().get("failed")
        return Verdict(Action.SPLIT if failed else Action.ACCEPT, breaker_failure=False)

    def split(self, request: httpx.Request, response: httpx.Response, verdict: Any) -> Any:
        if self.unsplittable:
            return None
        body = response.json()
        failures = {
            part: Verdict(Action.RETRY, problem=Problem(vendor="mesh", code=code))
            for part, code in body["failed"].items()
        }
        return Split(payload={"items": body["items"]}, failures=failures)

    def narrow(self, request: httpx.Request, parts: tuple[str, ...]) -> httpx.Request:
        return httpx.Request("GET", request.url.copy_set_param("part", ",".join(parts)))

    def __getattr__(self, name: str) -> Any:
        if name == "covers" and self.with_covers:

            def covers(request: httpx.Request, parts: tuple[str, ...]) -> tuple[str, ...]:
                self.covered.append(parts)
                return parts

            return covers
        raise AttributeError(name)


@attrs.define
class Server:
    state: dict[str, str | None]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("part")
        names = wanted.split(",") if wanted else list(self.state)
        items = [{"id": name} for name in names if self.state[name] is None]
        failed = {name: self.state[name] for name in names if self.state[name] is not None}
        return reply(200, json={"items": items, "failed": failed})


def build(mesh: Mesh, server: Server, **splitter: Any) -> tuple[Any, ScriptedTransport, Any]:
    clock = VirtualClock()
    inner = ScriptedTransport.of(server)
    breaker = CircuitBreaker(minimum_calls=2, failure_ratio=0.5, window=60.0, break_duration=30.0)
    splitter.setdefault("max_rounds", 1)
    layers = [
        PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none"), **splitter),
        Retry(max_attempts=1, budget=None),
        breaker,
    ]
    transport = through(inner, *layers, classifier=mesh, clock=clock)
    return transport, inner, clock


@pytest.mark.parametrize("with_covers", [True, False], ids=["covers()", "default"])
async def test_a_part_circuit_closes_once_full_answers_return(with_covers: bool) -> None:
    """Part "b" fails until its circuit opens; after the break, full answers on the
    same path (nothing failed) count as its successes and close the circuit, with
    the splitter's covers() or, without one, for every part the path reported."""
    mesh = Mesh(with_covers=with_covers)
    server = Server({"a": None, "b": "down"})
    transport, _, clock = build(mesh, server)
    registry = CircuitRegistry.of(transport.pipeline)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            await client.get(URL)
        assert registry.get("mesh:b").state.value == "open"
        clock.advance(31.0)
        server.state["b"] = None
        response = await client.get(URL)
        assert [item["id"] for item in response.json()["items"]] == ["a", "b"]
        assert registry.get("mesh:b").state.value == "closed"
        server.state["b"] = "blip"
        response = await client.get(URL)
    # The next failure is re-asked (and fails again): not skipped as an open circuit.
    failures = response.extensions["resilience"].partial.failures
    assert failures["b"].problem.code == "blip"
    assert mesh.covered == ([("b",)] if with_covers else [])


async def test_another_path_does_not_vouch_for_a_part() -> None:
    """A full answer on another path says nothing of the parts a path reported."""
    mesh = Mesh()
    server = Server({"a": None, "b": "down"})
    transport, _, clock = build(mesh, server)
    registry = CircuitRegistry.of(transport.pipeline)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            await client.get(URL)
        clock.advance(31.0)
        server.state["b"] = None
        await client.get("https://mesh.test/other")
    assert registry.get("mesh:b").state.value == "half_open"
    assert mesh.covered == []


async def test_covers_that_raises_counts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A covers() that raises is logged and no part is counted; the call succeeds."""

    class Broken(Mesh):
        def covers(self, request: httpx.Request, parts: tuple[str, ...]) -> Any:
            raise RuntimeError("boom")

    mesh = Broken()
    server = Server({"a": None, "b": "down"})
    transport, _, clock = build(mesh, server)
    registry = CircuitRegistry.of(transport.pipeline)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(2):
                await client.get(URL)
            clock.advance(31.0)
            server.state["b"] = None
            response = await client.get(URL)
    assert response.status_code == 200
    assert "covers() raised RuntimeError" in caplog.text
    assert registry.get("mesh:b").state.value == "half_open"


@pytest.mark.parametrize("strict", [False, True])
async def test_a_split_that_cannot_be_split_is_not_passed_off_as_complete(
    strict: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """split() returning None for a SPLIT: logged as a warning; with ``strict=True``
    it raises PartialFailureError (the caller asked never to get a partial answer
    silently); without, the response is passed up as it came."""
    mesh = Mesh(unsplittable=True)
    server = Server({"a": None, "b": "down"})
    transport, inner, _ = build(mesh, server, strict=strict)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            if strict:
                with pytest.raises(PartialFailureError) as info:
                    await client.get(URL)
                assert info.value.response is not None
                assert info.value.response.json()["failed"] == {"b": "down"}
            else:
                response = await client.get(URL)
                assert response.json()["failed"] == {"b": "down"}
    assert "could not be split" in caplog.text
    assert inner.unclosed() == []


async def test_a_malformed_part_verdict_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """A part whose Verdict carries a problem that is no Problem is dropped (logged)
    rather than crashing the call when it is reported."""

    class Sloppy(Mesh):
        def split(self, request: httpx.Request, response: httpx.Response, verdict: Any) -> Any:
            body = response.json()
            failures = {
                "b": Verdict(Action.RETRY, problem="down"),  # type: ignore[arg-type]
                "c": Verdict(Action.FAIL, problem=Problem(vendor="mesh", code="gone")),
            }
            return Split(payload={"items": body["items"]}, failures=failures)

    server = Server({"a": None, "b": "down"})
    transport, _, _ = build(Sloppy(), server)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(URL)
    partial = response.extensions["resilience"].partial
    assert list(partial.failures) == ["c"]
    assert "malformed parts" in caplog.text
