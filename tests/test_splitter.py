"""PartialFailureSplitter: split, narrow, merge, report, strict mode, limits.

The tests use a tiny made-up vendor, "mesh": one list endpoint gathers items from
several parts; a failed part is named in ``failed`` (``"retry"`` or ``"fail"``),
and ``?part=a`` asks one part alone (``?part=a,b`` several, when the classifier
allows it). Each part plays its own script, so a test says exactly how each part
behaves on each request that reaches it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio
import attrs
import httpx
import pytest

import resilience
from resilience import (
    Action,
    ExponentialBackoff,
    PartialFailureReported,
    PartialFailureSplitter,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    RetryBudget,
    RetryScheduled,
    Split,
    SplittingClassifier,
    Timeout,
    Verdict,
    merge_json,
    render_json,
)
from resilience.errors import PartialFailureError
from resilience.testing import ScriptedTransport, VirtualClock, reply, through

pytestmark = pytest.mark.anyio

BASE = "https://mesh.test"


# --------------------------------------------------------------------------------------
# The "mesh" vendor


class MeshClassifier:
    """Classifies and splits mesh lists; narrows with ``?part=``."""

    vendor = "mesh"
    needs_body = True

    def __init__(self, *, group: bool = False, narrows: bool = True) -> None:
        self.group = group
        self.narrows = narrows
        self.narrowed: list[tuple[str, ...]] = []

    def classify(
        self, request: httpx.Request, response: httpx.Response | None, error: BaseException | None
    ) -> Verdict:
        if response is None:
            return Verdict(Action.RETRY, problem=Problem(vendor="mesh", code="transport"))
        if response.status_code >= 500:
            return Verdict(Action.RETRY, problem=Problem(vendor="mesh", status=503, code="503"))
        if response.status_code == 401:
            return Verdict(Action.REFRESH_AUTH, problem=Problem(vendor="mesh", status=401))
        if response.status_code >= 400:
            return Verdict(Action.FAIL, problem=Problem(vendor="mesh", status=400, code="400"))
        try:
            body = response.json()
        except ValueError:
            return Verdict(Action.ACCEPT)
        if isinstance(body, dict) and body.get("failed"):
            return Verdict(Action.SPLIT, breaker_failure=False)
        return Verdict(Action.ACCEPT)

    def split(self, request: httpx.Request, response: httpx.Response, verdict: Verdict) -> Split:
        body = response.json()
        failures = {
            part: Verdict(
                Action.RETRY if kind == "retry" else Action.FAIL,
                problem=Problem(vendor="mesh", code=f"part-{kind}", detail=f"{part} said {kind}"),
            )
            for part, kind in body.get("failed", {}).items()
        }
        payload = {k: v for k, v in body.items() if k != "failed"}
        succeeded = {item["part"] for item in body.get("items", [])}
        return Split(payload=payload, failures=failures, succeeded=succeeded)

    def narrow(self, request: httpx.Request, parts: tuple[str, ...]) -> httpx.Request | None:
        if not self.narrows or (len(parts) > 1 and not self.group):
            return None
        self.narrowed.append(parts)
        return httpx.Request(
            request.method,
            request.url.copy_set_param("part", ",".join(parts)),
            headers=request.headers,
        )


@attrs.define
class Mesh:
    """The server side: each part plays its script (the last step repeats)."""

    scripts: dict[str, list[str]]
    items: int = 2
    pages: int = 1
    asked: list[tuple[str, str | None]] = attrs.field(factory=list)
    played: dict[str, int] = attrs.field(factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("part")
        page = int(request.url.params.get("page", "0"))
        parts = wanted.split(",") if wanted else list(self.scripts)
        items: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        for part in parts:
            self.asked.append((part, request.url.params.get("page")))
            step = self.played.get(part, 0)
            self.played[part] = step + 1
            script = self.scripts[part]
            outcome = script[min(step, len(script) - 1)]
            if outcome == "ok":
                items += [
                    {"id": f"{part}{page}-{i}", "part": part, "page": page}
                    for i in range(self.items)
                ]
            else:
                failed[part] = outcome
        body: dict[str, Any] = {"items": items, "failed": failed}
        if page + 1 < self.pages:
            body["next"] = page + 1
        return reply(200, json=body, headers={"x-mesh": "1"})

    def times_asked(self, part: str) -> int:
        return sum(1 for p, _ in self.asked if p == part)


def build(
    mesh: Mesh | ScriptedTransport,
    *,
    classifier: Any = None,
    splitter: PartialFailureSplitter | None = None,
    retry: Retry | None = None,
    below: Sequence[Any] = (),
    above: Sequence[Any] = (),
    clock: VirtualClock | None = None,
    hooks: Sequence[Any] = (),
) -> tuple[ResilientTransport, ScriptedTransport, VirtualClock]:
    clock = clock or VirtualClock()
    inner = mesh if isinstance(mesh, ScriptedTransport) else ScriptedTransport.of(mesh)
    layers: list[Any] = [
        *above,
        splitter or PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none")),
        retry or Retry(max_attempts=1, budget=None),
        *below,
    ]
    transport = through(
        inner, *layers, classifier=classifier or MeshClassifier(), clock=clock, hooks=hooks
    )
    return transport, inner, clock


async def get(transport: ResilientTransport, path: str = "/things") -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        return await client.get(path)


def ids(response: httpx.Response) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


@attrs.define
class FakeRegistry:
    """The breaker registry API (``allow``/``record``/``release``), scripted."""

    open_for: dict[str, float] = attrs.field(factory=dict)
    calls: list[tuple[str, str, Any]] = attrs.field(factory=list)
    held: dict[str, int] = attrs.field(factory=dict)

    def allow(self, key: str) -> float | None:
        self.calls.append(("allow", key, None))
        if key in self.open_for:
            return self.open_for[key]
        self.held[key] = self.held.get(key, 0) + 1
        return None

    def record(self, key: str, verdict: Verdict, *, duration: float | None = None) -> None:
        self.calls.append(("record", key, verdict.action))
        self.held[key] -= 1

    def release(self, key: str) -> None:
        self.calls.append(("release", key, None))
        self.held[key] -= 1

    def recorded(self, key: str) -> list[Action]:
        return [arg for kind, k, arg in self.calls if kind == "record" and k == key]


@attrs.frozen
class ShareRegistry:
    """A layer below the splitter that shares a registry, as CircuitBreaker does."""

    registry: Any

    def bind(self, env: resilience.PipelineEnv) -> resilience.Handler:
        env.breakers.append(self.registry)

        async def handler(
            request: httpx.Request, call: resilience.Call, call_next: resilience.CallNext
        ) -> resilience.Outcome:
            return await call_next(request, call)

        return handler


# --------------------------------------------------------------------------------------
# Split, narrow, merge, report


async def test_split_delivers_what_worked_and_reports_failures() -> None:
    """A FAIL part is reported, never re-asked; the caller gets the rest."""
    mesh = Mesh({"a": ["ok"], "b": ["fail"]})
    transport, inner, clock = build(mesh)
    response = await get(transport)
    assert response.status_code == 200
    assert ids(response) == ["a0-0", "a0-1"]
    assert "failed" not in response.json()
    partial = response.extensions["resilience"].partial
    assert list(partial.failures) == ["b"]
    assert partial.failures["b"].action is Action.FAIL
    assert partial.recovered == ()
    assert mesh.times_asked("b") == 1
    assert clock.sleeps == []
    assert inner.unclosed() == []


async def test_retry_part_is_narrowed_and_merged() -> None:
    """A RETRY part is re-asked alone after a backoff wait, and merged back."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    classifier = MeshClassifier()
    transport, inner, clock = build(mesh, classifier=classifier)
    response = await get(transport)
    assert ids(response) == ["a0-0", "a0-1", "b0-0", "b0-1"]
    report = response.extensions["resilience"]
    assert report.attempts == 2
    assert [v.action for v in report.verdicts] == [Action.SPLIT, Action.ACCEPT]
    assert report.partial.failures == {}
    assert report.partial.recovered == ("b",)
    assert report.delays == [1.0]
    assert clock.sleeps == [1.0]
    assert classifier.narrowed == [("b",)]
    assert [r.url.params.get("part") for r in inner.requests] == [None, "b"]
    assert inner.unclosed() == []


async def test_merge_keeps_order_and_drops_duplicates() -> None:
    """Items a narrowed answer repeats are not added twice; base order comes first."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("part") == "b":
            items = [{"id": "a-1", "part": "a"}, {"id": "b-1", "part": "b"}]
            return reply(200, json={"items": items, "failed": {}})
        return reply(200, json={"items": [{"id": "a-1", "part": "a"}], "failed": {"b": "retry"}})

    transport, inner, _ = build(ScriptedTransport.of(answer))
    response = await get(transport)
    assert ids(response) == ["a-1", "b-1"]
    assert inner.unclosed() == []


async def test_flapping_part_recovers_through_narrowing() -> None:
    """A part that fails three times recovers on the third narrowed round."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "retry", "retry", "ok"]})
    transport, inner, clock = build(mesh)
    response = await get(transport)
    assert ids(response) == ["a0-0", "a0-1", "b0-0", "b0-1"]
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("b",)
    assert report.attempts == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert mesh.times_asked("a") == 1
    assert inner.unclosed() == []


async def test_rounds_run_out_and_failure_is_reported() -> None:
    """After max_rounds the part's last verdict is reported, and an event emitted."""
    events: list[Any] = []
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})
    splitter = PartialFailureSplitter(max_rounds=2, backoff=ExponentialBackoff(jitter="none"))
    transport, inner, clock = build(mesh, splitter=splitter, hooks=[events.append])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.failures["b"].action is Action.RETRY
    assert report.gave_up == "max_rounds"
    assert mesh.times_asked("b") == 3
    assert clock.sleeps == [1.0, 2.0]
    reported = [e for e in events if isinstance(e, PartialFailureReported)]
    assert len(reported) == 1
    assert list(reported[0].failures) == ["b"]
    rounds = [e for e in events if isinstance(e, RetryScheduled)]
    assert [(e.attempt, e.delay, e.verdict.action) for e in rounds] == [
        (1, 1.0, Action.RETRY),
        (2, 2.0, Action.RETRY),
    ]
    assert inner.unclosed() == []


async def test_fail_part_is_never_asked_again() -> None:
    """With one RETRY and one FAIL part, only the RETRY part is re-asked."""
    mesh = Mesh({"a": ["ok"], "b": ["fail"], "c": ["retry", "ok"]})
    transport, _, _ = build(mesh)
    response = await get(transport)
    partial = response.extensions["resilience"].partial
    assert list(partial.failures) == ["b"]
    assert partial.recovered == ("c",)
    assert mesh.times_asked("b") == 1
    assert mesh.times_asked("c") == 2


async def test_retry_part_that_turns_fail_stops() -> None:
    """A narrowed answer that says FAIL for the part ends its re-requests."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "fail"]})
    transport, _, _ = build(mesh)
    response = await get(transport)
    failures = response.extensions["resilience"].partial.failures
    assert failures["b"].action is Action.FAIL
    assert mesh.times_asked("b") == 2


async def test_parts_narrow_together_when_the_classifier_allows() -> None:
    """A classifier that can narrow several parts at once gets one request for them."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["retry", "ok"]})
    classifier = MeshClassifier(group=True)
    transport, inner, _ = build(mesh, classifier=classifier)
    response = await get(transport)
    assert classifier.narrowed == [("b", "c")]
    assert [r.url.params.get("part") for r in inner.requests] == [None, "b,c"]
    assert response.extensions["resilience"].partial.recovered == ("b", "c")


async def test_parts_narrow_one_by_one_otherwise() -> None:
    """Without group narrowing, each failed part gets its own request, in order."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["retry", "ok"]})
    transport, inner, _ = build(mesh)
    response = await get(transport)
    assert [r.url.params.get("part") for r in inner.requests] == [None, "b", "c"]
    assert ids(response) == ["a0-0", "a0-1", "b0-0", "b0-1", "c0-0", "c0-1"]


async def test_no_narrow_means_report_only() -> None:
    """A classifier that cannot narrow: failures are reported, nothing re-asked,
    and no wait is spent on a round that could send nothing."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    transport, inner, clock = build(mesh, classifier=MeshClassifier(narrows=False))
    response = await get(transport)
    assert response.extensions["resilience"].partial.failures["b"].action is Action.RETRY
    assert len(inner.requests) == 1
    assert clock.sleeps == []
    assert response.extensions["resilience"].delays == []


async def test_narrowed_request_goes_through_retry_below() -> None:
    """A narrowed request that meets a 503 is retried by the Retry layer below it."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    plays: Iterator[Callable[[httpx.Request], httpx.Response]] = iter(
        [mesh, lambda r: reply(503), mesh]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        return next(plays)(request)

    retry = Retry(max_attempts=3, backoff=ExponentialBackoff(initial=0.5, jitter="none"))
    transport, inner, clock = build(ScriptedTransport.of(answer), retry=retry)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("b",)
    assert report.attempts == 3
    assert [v.action for v in report.verdicts] == [Action.SPLIT, Action.RETRY, Action.ACCEPT]
    assert report.delays == [1.0, 0.5]
    assert clock.sleeps == [1.0, 0.5]
    assert inner.unclosed() == []


async def test_all_recovered_is_accept_with_empty_failures() -> None:
    """When every part recovered the call is a plain success: no event is emitted."""
    events: list[Any] = []
    mesh = Mesh({"a": ["retry", "ok"]})
    transport, _, _ = build(mesh, hooks=[events.append])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.failures == {}
    assert report.gave_up is None
    assert not [e for e in events if isinstance(e, PartialFailureReported)]


async def test_split_without_failures_passes_the_response_through() -> None:
    """A SPLIT whose body names no failed part is delivered unchanged."""
    body = {"items": [{"id": "x", "part": "a"}], "failed": {}}

    class Always(MeshClassifier):
        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            return Verdict(Action.SPLIT)

    transport, inner, _ = build(ScriptedTransport.of(reply(200, json=body)), classifier=Always())
    response = await get(transport)
    assert response.json() == body
    assert response.extensions["resilience"].partial.failures == {}
    assert inner.unclosed() == []


# --------------------------------------------------------------------------------------
# The rendered response


async def test_rendered_response_headers_and_length() -> None:
    """Headers are copied but the body's own (length, encoding) are replaced."""
    mesh = Mesh({"a": ["ok"], "b": ["fail"]})
    transport, _, _ = build(mesh)
    response = await get(transport)
    assert response.headers["x-mesh"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert "content-encoding" not in response.headers


def test_render_json_replaces_body_headers() -> None:
    """render_json drops Content-Encoding/Transfer-Encoding and sets Content-Length."""
    request = httpx.Request("GET", BASE)
    original = httpx.Response(
        200,
        headers={
            "content-encoding": "gzip",
            "transfer-encoding": "chunked",
            "content-length": "3",
            "x-keep": "yes",
        },
        request=request,
    )
    rendered = render_json(request, original, {"k": "é"})
    rendered.read()
    assert rendered.json() == {"k": "é"}
    assert rendered.headers["content-length"] == str(len(rendered.content))
    assert rendered.headers["x-keep"] == "yes"
    assert rendered.headers["content-type"] == "application/json"
    assert "content-encoding" not in rendered.headers
    assert "transfer-encoding" not in rendered.headers


def test_merge_json() -> None:
    """Lists merge by id (or equality), in order; other keys keep the base's value."""
    base = {"items": [{"id": 1}, {"id": 2}], "next": "p2", "tags": ["x"]}
    part = {"items": [{"id": 2}, {"id": 3}], "next": "other", "tags": ["x", "y"], "new": [1]}
    merged = merge_json(base, part)
    assert merged == {
        "items": [{"id": 1}, {"id": 2}, {"id": 3}],
        "next": "p2",
        "tags": ["x", "y"],
        "new": [1],
    }
    assert base["items"] == [{"id": 1}, {"id": 2}]
    assert merge_json([1], {"a": []}) == [1]


def test_mesh_classifier_is_a_splitting_classifier() -> None:
    """The protocol is runtime-checkable."""
    assert isinstance(MeshClassifier(), SplittingClassifier)
    assert not isinstance(resilience.HttpClassifier(), SplittingClassifier)


# --------------------------------------------------------------------------------------
# Strict mode


async def test_strict_raises_with_the_partial_payload() -> None:
    """strict=True: PartialFailureError carrying the merged response and report."""
    mesh = Mesh({"a": ["ok"], "b": ["fail"], "c": ["retry", "ok"]})
    splitter = PartialFailureSplitter(strict=True, backoff=ExponentialBackoff(jitter="none"))
    transport, inner, _ = build(mesh, splitter=splitter)
    with pytest.raises(PartialFailureError) as caught:
        await get(transport)
    error = caught.value
    assert isinstance(error, httpx.HTTPStatusError)
    assert error.response is not None
    assert ids(error.response) == ["a0-0", "a0-1", "c0-0", "c0-1"]
    assert list(error.report.partial.failures) == ["b"]
    assert error.report.partial.recovered == ("c",)
    assert error.problem is not None
    assert error.problem.code == "partial_failure"
    assert "b (part-fail)" in str(error)
    assert inner.unclosed() == []


async def test_strict_returns_when_everything_recovered() -> None:
    """strict=True does not raise when every failed part was recovered."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    splitter = PartialFailureSplitter(strict=True, backoff=ExponentialBackoff(jitter="none"))
    transport, _, _ = build(mesh, splitter=splitter)
    response = await get(transport)
    assert ids(response) == ["a0-0", "a0-1", "b0-0", "b0-1"]


# --------------------------------------------------------------------------------------
# Deadline and budget


async def test_deadline_stops_rounds() -> None:
    """A backoff wait that cannot fit before the deadline is not taken."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    splitter = PartialFailureSplitter(backoff=ExponentialBackoff(initial=5.0, jitter="none"))
    transport, inner, clock = build(mesh, splitter=splitter, above=[Timeout(total=3.0)])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.failures["b"].action is Action.RETRY
    assert report.gave_up == "deadline"
    assert clock.sleeps == []
    assert len(inner.requests) == 1


async def test_deadline_allows_rounds_that_fit() -> None:
    """Rounds continue while their waits fit, then stop before the deadline."""
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})
    transport, _, clock = build(
        mesh,
        splitter=PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none"), reserve=0.5),
        above=[Timeout(total=4.0)],
    )
    response = await get(transport)
    assert clock.sleeps == [1.0, 2.0]  # 1 + 2 + 0.5 fits in 4; 1 + 2 + 4 does not
    assert response.extensions["resilience"].gave_up == "deadline"


async def test_retry_budget_limits_re_requests() -> None:
    """Each narrowed re-request withdraws from the retry budget."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["retry", "ok"]})
    budget = RetryBudget(initial=1.0, ratio=0.0, min_per_second=0.0)
    transport, _, _ = build(mesh, retry=Retry(max_attempts=1, budget=budget))
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("b",)
    assert list(report.partial.failures) == ["c"]
    assert report.gave_up == "budget"
    assert mesh.times_asked("c") == 1


async def test_server_hint_of_a_part_sets_the_wait() -> None:
    """A part verdict carrying retry_after makes the round wait at least that long."""

    class Hinting(MeshClassifier):
        def split(self, request: Any, response: Any, verdict: Verdict) -> Split:
            result = super().split(request, response, verdict)
            hinted = {k: attrs.evolve(v, retry_after=7.0) for k, v in result.failures.items()}
            return attrs.evolve(result, failures=hinted)

    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    transport, _, clock = build(mesh, classifier=Hinting())
    await get(transport)
    assert clock.sleeps == [7.0]


# --------------------------------------------------------------------------------------
# Per-part breakers (the registry API)


async def test_parts_are_recorded_in_their_own_breakers() -> None:
    """Each part's outcome is recorded under "<vendor>:<part>"; slots are all freed."""
    registry = FakeRegistry()
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["fail"]})
    transport, _, _ = build(mesh, below=[ShareRegistry(registry)])
    await get(transport)
    assert registry.recorded("mesh:a") == [Action.ACCEPT]
    assert registry.recorded("mesh:b") == [Action.RETRY, Action.ACCEPT]
    assert registry.recorded("mesh:c") == [Action.FAIL]
    assert all(count == 0 for count in registry.held.values())


async def test_open_part_breaker_skips_the_part() -> None:
    """A part whose breaker is open is not re-asked; its failure is the open circuit."""
    registry = FakeRegistry(open_for={"mesh:b": 12.0})
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["retry", "ok"]})
    transport, _, _ = build(mesh, below=[ShareRegistry(registry)])
    response = await get(transport)
    partial = response.extensions["resilience"].partial
    assert partial.recovered == ("c",)
    failure = partial.failures["b"]
    assert failure.action is Action.FAIL
    assert failure.problem is not None
    assert failure.problem.code == "circuit_open"
    assert failure.problem.details["key"] == "mesh:b"
    assert failure.retry_after == 12.0
    assert mesh.times_asked("b") == 1
    assert registry.recorded("mesh:b") == []
    assert all(count == 0 for count in registry.held.values())


async def test_breaker_opening_mid_call_skips_later_rounds() -> None:
    """A breaker that opens after a round keeps the part from the next round."""

    class Opening(FakeRegistry):
        def record(self, key: str, verdict: Verdict, *, duration: float | None = None) -> None:
            super().record(key, verdict, duration=duration)
            if key == "mesh:b" and len(self.recorded(key)) >= 2:
                self.open_for[key] = 30.0

    registry = Opening()
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})
    transport, _, _ = build(mesh, below=[ShareRegistry(registry)])
    response = await get(transport)
    failure = response.extensions["resilience"].partial.failures["b"]
    assert failure.problem is not None
    assert failure.problem.code == "circuit_open"
    assert mesh.times_asked("b") == 2


async def test_refresh_auth_on_a_narrowed_request_is_not_the_parts_fault() -> None:
    """Our own token refused on a re-request (AuthRefresh below already had its
    go) frees the part's slot, records nothing, and ends the part's rounds."""
    registry = FakeRegistry()
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"]})
    plays: Iterator[Callable[[httpx.Request], httpx.Response]] = iter([mesh, lambda r: reply(401)])

    def answer(request: httpx.Request) -> httpx.Response:
        return next(plays, mesh)(request)

    transport, _, _ = build(ScriptedTransport.of(answer), below=[ShareRegistry(registry)])
    response = await get(transport)
    partial = response.extensions["resilience"].partial
    assert partial.failures["b"].action is Action.REFRESH_AUTH
    assert registry.recorded("mesh:b") == [Action.RETRY]
    assert ("release", "mesh:b", None) in registry.calls
    assert all(count == 0 for count in registry.held.values())


async def test_real_circuit_breaker_opens_per_part() -> None:
    """With the real CircuitBreaker below, a part that keeps failing gets its own open
    circuit while the host's stays closed, and later calls skip it."""
    breaker = resilience.CircuitBreaker(
        minimum_calls=4, failure_ratio=0.5, window=60.0, break_duration=30.0
    )
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})
    splitter = PartialFailureSplitter(max_rounds=1, backoff=ExponentialBackoff(jitter="none"))
    transport, _, _ = build(mesh, splitter=splitter, below=[breaker])
    codes = []
    for _ in range(4):
        response = await get(transport)
        problem = response.extensions["resilience"].partial.failures["b"].problem
        codes.append(problem.code if problem else None)
        assert ids(response)[:2] == ["a0-0", "a0-1"]
    assert codes[0] == "part-retry"
    assert codes[-1] == "circuit_open"
    registry = transport.pipeline.env.breakers[0]
    assert registry.get("mesh:b").state.value == "open"
    assert registry.get("mesh:a").state.value == "closed"
    asked_b = mesh.times_asked("b")
    await get(transport)
    assert mesh.times_asked("b") == asked_b + 1  # only in the full list, never alone


# --------------------------------------------------------------------------------------
# Pagination


async def test_pages_stay_straight() -> None:
    """Each page is its own call; a page's re-request keeps that page's token."""
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok", "retry", "ok"]}, pages=2)
    transport, inner, _ = build(mesh)
    first = await get(transport, "/things?page=0")
    second = await get(transport, "/things?page=1")
    assert ids(first) == ["a0-0", "a0-1", "b0-0", "b0-1"]
    assert ids(second) == ["a1-0", "a1-1", "b1-0", "b1-1"]
    assert first.json()["next"] == 1
    assert "next" not in second.json()
    assert first.extensions["resilience"] is not second.extensions["resilience"]
    assert first.extensions["resilience"].partial.recovered == ("b",)
    assert second.extensions["resilience"].partial.recovered == ("b",)
    pages = [(r.url.params.get("part"), r.url.params.get("page")) for r in inner.requests]
    assert pages == [(None, "0"), ("b", "0"), (None, "1"), ("b", "1")]


# --------------------------------------------------------------------------------------
# Garbage, misbehaving plugins, cancellation


async def test_split_that_raises_passes_the_response_up() -> None:
    """A split() that raises: the response is returned as it came (a SPLIT)."""

    class Broken(MeshClassifier):
        def split(self, request: Any, response: Any, verdict: Verdict) -> Split:
            raise RuntimeError("boom")

    mesh = Mesh({"a": ["ok"], "b": ["retry"]})
    transport, inner, _ = build(mesh, classifier=Broken())
    response = await get(transport)
    assert response.json()["failed"] == {"b": "retry"}
    assert response.extensions["resilience"].partial is None
    assert len(inner.requests) == 1


async def test_split_returning_junk_is_ignored() -> None:
    """split() returning something else than a Split is treated as unsplittable."""

    class Junk(MeshClassifier):
        def split(self, request: Any, response: Any, verdict: Verdict) -> Any:
            return {"not": "a split"}

    transport, _, _ = build(Mesh({"a": ["ok"], "b": ["retry"]}), classifier=Junk())
    response = await get(transport)
    assert response.json()["failed"] == {"b": "retry"}


async def test_malformed_parts_are_dropped() -> None:
    """Non-string part keys and non-Verdict values in a Split are ignored."""

    class Sloppy(MeshClassifier):
        def split(self, request: Any, response: Any, verdict: Verdict) -> Split:
            result = super().split(request, response, verdict)
            bad: dict[Any, Any] = {**result.failures, 7: result.failures["b"], "z": "nope"}
            return attrs.evolve(result, failures=bad)

    transport, _, _ = build(Mesh({"a": ["ok"], "b": ["fail"]}), classifier=Sloppy())
    response = await get(transport)
    assert list(response.extensions["resilience"].partial.failures) == ["b"]


async def test_unreadable_narrowed_answer_keeps_the_failure() -> None:
    """A narrowed answer that is not JSON adds nothing; the part stays failed."""
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("part"):
            return reply(200, content=b"<html>oops</html>")
        return mesh(request)

    splitter = PartialFailureSplitter(max_rounds=2, backoff=ExponentialBackoff(jitter="none"))
    transport, inner, _ = build(ScriptedTransport.of(answer), splitter=splitter)
    response = await get(transport)
    assert response.extensions["resilience"].partial.failures["b"].action is Action.RETRY
    assert len(inner.requests) == 3
    assert inner.unclosed() == []


async def test_narrow_and_render_that_raise_are_survived() -> None:
    """narrow() raising means no re-request; render() raising means plain JSON."""

    class Clumsy(MeshClassifier):
        def narrow(self, request: Any, parts: Any) -> Any:
            raise ValueError("no")

        def render(self, request: Any, response: Any, payload: Any, failures: Any) -> Any:
            raise ValueError("no")

    transport, inner, _ = build(Mesh({"a": ["ok"], "b": ["retry"]}), classifier=Clumsy())
    response = await get(transport)
    assert ids(response) == ["a0-0", "a0-1"]
    assert response.extensions["resilience"].partial.failures["b"].action is Action.RETRY
    assert len(inner.requests) == 1


async def test_custom_render_sees_the_failures() -> None:
    """render() gets the merged payload and the parts that still failed."""
    seen: list[Mapping[str, Verdict]] = []

    class Rendering(MeshClassifier):
        def render(
            self,
            request: httpx.Request,
            response: httpx.Response,
            payload: Any,
            failures: Mapping[str, Verdict],
        ) -> httpx.Response:
            seen.append(failures)
            return render_json(request, response, {**payload, "still": sorted(failures)})

    mesh = Mesh({"a": ["ok"], "b": ["fail"], "c": ["retry", "ok"]})
    transport, _, _ = build(mesh, classifier=Rendering())
    response = await get(transport)
    assert response.json()["still"] == ["b"]
    assert list(seen[0]) == ["b"]


async def test_classifier_without_split_returns_split_as_is() -> None:
    """No split() anywhere: the SPLIT response reaches the caller unchanged."""

    class NoSplit:
        vendor = "nosplit"

        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            return Verdict(Action.SPLIT)

    transport, _, _ = build(Mesh({"a": ["ok"], "b": ["retry"]}), classifier=NoSplit())
    response = await get(transport)
    assert response.json()["failed"] == {"b": "retry"}


async def test_explicit_splitter_object() -> None:
    """splitter= overrides the classifier as the object that splits."""

    class Plain:
        vendor = "mesh"

        def classify(self, request: Any, response: Any, error: Any) -> Verdict:
            return MeshClassifier().classify(request, response, error)

    helper = MeshClassifier()
    splitter = PartialFailureSplitter(splitter=helper, backoff=ExponentialBackoff(jitter="none"))
    transport, _, _ = build(
        Mesh({"a": ["ok"], "b": ["retry", "ok"]}), classifier=Plain(), splitter=splitter
    )
    response = await get(transport)
    assert response.extensions["resilience"].partial.recovered == ("b",)
    assert helper.narrowed == [("b",)]


def test_configuration_is_validated() -> None:
    """Bad settings fail at construction with a ConfigurationError."""
    with pytest.raises(resilience.errors.ConfigurationError):
        PartialFailureSplitter(max_rounds=-1)
    with pytest.raises(resilience.errors.ConfigurationError):
        PartialFailureSplitter(max_parts=0)
    with pytest.raises(resilience.errors.ConfigurationError):
        PartialFailureSplitter(backoff=object())  # type: ignore[arg-type]
    with pytest.raises(resilience.errors.ConfigurationError):
        PartialFailureSplitter(splitter=object())


async def test_cancellation_releases_everything() -> None:
    """A call cancelled during a narrowed re-request closes the base response and
    frees the breaker slots of that part and of the parts planned after it."""
    registry = FakeRegistry()
    mesh = Mesh({"a": ["ok"], "b": ["retry", "ok"], "c": ["retry", "ok"]})
    started = anyio.Event()

    class Hanging(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.streams: list[Any] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.params.get("part"):
                started.set()
                await anyio.sleep_forever()
            response = mesh(request)
            self.streams.append(response.stream)  # buffering swaps the stream: keep it
            return response

    hanging = Hanging()
    pipeline = Pipeline(
        [
            PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none")),
            ShareRegistry(registry),
        ],
        classifier=MeshClassifier(),
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=hanging)
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            await get(transport)

        tg.start_soon(call)
        await started.wait()
        tg.cancel_scope.cancel()
    assert hanging.streams
    assert all(stream.closed for stream in hanging.streams)
    assert ("release", "mesh:b", None) in registry.calls
    assert ("release", "mesh:c", None) in registry.calls  # planned, never sent
    assert all(count == 0 for count in registry.held.values())


async def test_real_time_deadline_abandons_a_hanging_re_request() -> None:
    """A re-request still hanging near the deadline is abandoned; what worked is
    delivered instead of a timeout."""
    mesh = Mesh({"a": ["ok"], "b": ["retry"]})

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.params.get("part"):
                await anyio.sleep_forever()
            return mesh(request)

    pipeline = Pipeline(
        [
            # Real time: the re-request may hang for 0.4 s, leaving 0.6 s to deliver.
            Timeout(total=1.0),
            PartialFailureSplitter(backoff=ExponentialBackoff(initial=0.0), reserve=0.6),
        ],
        classifier=MeshClassifier(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=Slow())
    with anyio.fail_after(5):
        response = await get(transport)
    report = response.extensions["resilience"]
    assert ids(response) == ["a0-0", "a0-1"]
    assert report.gave_up == "deadline"
    assert report.partial.failures["b"].action is Action.RETRY


def test_open_circuit_verdict_json_roundtrip() -> None:
    """Open-circuit verdicts carry plain data (JSON-able details)."""
    verdict = resilience._splitter.open_circuit_verdict("mesh", "mesh:b", 3.0)
    assert verdict.problem is not None
    assert json.loads(json.dumps(dict(verdict.problem.details))) == {
        "key": "mesh:b",
        "retry_after": 3.0,
    }
    assert verdict.breaker_failure is False
