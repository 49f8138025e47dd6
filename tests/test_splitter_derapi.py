"""PartialFailureSplitter with Derapi's splitting protocol: rounds, merging, garbage
narrowed answers, Derapi problem types on re-requests, strict mode, part breakers and
cancellation.

Most tests run the real ``DerapiClassifier`` (it classifies, splits, narrows with the
``vendor`` filter and renders ``errors``) over a scripted Derapi list endpoint: each
backend plays its own script (``None``: its items come back; a string: it is named
in ``errors`` with that message), and ``?vendor=x`` asks backend ``x`` alone. A
few use a tiny generic splitter ("mesh") where Derapi cannot express the case.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs
import httpx
import pytest
from resilience_derapi import DerapiClassifier, type_uri

import resilience
from resilience import (
    Action,
    CircuitBreaker,
    ExponentialBackoff,
    PartialFailureSplitter,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    RetryBudget,
    RetryScheduled,
    Split,
    Verdict,
)
from resilience.errors import PartialFailureError
from resilience.testing import ClosingStream, ScriptedTransport, VirtualClock, reply, through

pytestmark = pytest.mark.anyio

BASE = "https://api.derapi.test"
Handler = Callable[[httpx.Request], httpx.Response]


# --------------------------------------------------------------------------------------
# A scripted Derapi list endpoint


@attrs.define
class Derapi:
    """``GET /sites``: each backend plays its script (the last step repeats)."""

    scripts: dict[str, list[str | None]]
    items: int = 2
    asked: list[str] = attrs.field(factory=list)
    played: dict[str, int] = attrs.field(factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("vendor")
        names = [wanted] if wanted else list(self.scripts)
        sites: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for name in names:
            self.asked.append(name)
            step = self.played.get(name, 0)
            self.played[name] = step + 1
            script = self.scripts[name]
            outcome = script[min(step, len(script) - 1)]
            if outcome is None:
                sites += [{"id": f"{name}-{i}", "vendor": name} for i in range(self.items)]
            else:
                errors[name] = outcome
        return reply(200, json={"sites": sites, "errors": errors})

    def times_asked(self, name: str) -> int:
        return self.asked.count(name)


def build(
    server: Handler | ScriptedTransport,
    *,
    splitter: PartialFailureSplitter | None = None,
    retry: Retry | None = None,
    below: Sequence[Any] = (),
    above: Sequence[Any] = (),
    clock: Any = None,
    hooks: Sequence[Any] = (),
    classifier: Any = None,
) -> tuple[ResilientTransport, ScriptedTransport, Any]:
    clock = clock if clock is not None else VirtualClock()
    inner = server if isinstance(server, ScriptedTransport) else ScriptedTransport.of(server)
    layers: list[Any] = [
        *above,
        splitter or PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none")),
        retry or Retry(max_attempts=1, budget=None),
        *below,
    ]
    transport = through(
        inner, *layers, classifier=classifier or DerapiClassifier(), clock=clock, hooks=hooks
    )
    return transport, inner, clock


async def get(transport: ResilientTransport, path: str = "/sites") -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        return await client.get(path)


def site_ids(response: httpx.Response) -> list[str]:
    return [site["id"] for site in response.json()["sites"]]


def vendors_asked(inner: ScriptedTransport) -> list[str | None]:
    return [r.url.params.get("vendor") for r in inner.requests]


def rounds(events: list[Any]) -> list[RetryScheduled]:
    return [e for e in events if isinstance(e, RetryScheduled)]


@attrs.define
class SlotRegistry:
    """The breaker registry API (allow/record/release), counting held slots."""

    open_after_failures: dict[str, int] = attrs.field(factory=dict)
    open_for: dict[str, float] = attrs.field(factory=dict)
    calls: list[tuple[str, str]] = attrs.field(factory=list)
    held: dict[str, int] = attrs.field(factory=dict)
    failures: dict[str, int] = attrs.field(factory=dict)

    def allow(self, key: str) -> float | None:
        self.calls.append(("allow", key))
        if key in self.open_for:
            return self.open_for[key]
        self.held[key] = self.held.get(key, 0) + 1
        return None

    def record(self, key: str, verdict: Verdict, *, duration: float | None = None) -> None:
        self.calls.append(("record", key))
        self.held[key] -= 1
        if verdict.breaker_failure:
            self.failures[key] = self.failures.get(key, 0) + 1
            limit = self.open_after_failures.get(key)
            if limit is not None and self.failures[key] >= limit:
                self.open_for[key] = 30.0

    def release(self, key: str) -> None:
        self.calls.append(("release", key))
        self.held[key] -= 1


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
# Rounds that can send nothing must not wait (or count as a retry)


async def test_empty_budget_gives_up_without_waiting() -> None:
    """Retry gives up at once when the budget is spent; a split round should too."""
    events: list[Any] = []
    server = Derapi({"sma": [None], "tesla": ["Timeout", None]})
    budget = RetryBudget(initial=0.0, ratio=0.0, min_per_second=0.0)
    transport, inner, clock = build(
        server, retry=Retry(max_attempts=1, budget=budget), hooks=[events.append]
    )
    response = await get(transport)
    report = response.extensions["resilience"]
    assert site_ids(response) == ["sma-0", "sma-1"]
    assert report.gave_up == "budget"
    assert vendors_asked(inner) == [None]
    assert clock.sleeps == []
    assert report.delays == []
    assert rounds(events) == []


async def test_backend_the_vendor_filter_cannot_name_is_reported_without_waiting() -> None:
    """A backend key the ``vendor`` filter cannot express is reported, not waited for."""
    events: list[Any] = []
    server = Derapi({"sma": [None], "Solar Edge!": ["Timeout", None]})
    transport, inner, clock = build(server, hooks=[events.append])
    response = await get(transport)
    failure = response.extensions["resilience"].partial.failures["Solar Edge!"]
    assert failure.action is Action.RETRY
    assert vendors_asked(inner) == [None]
    assert clock.sleeps == []
    assert rounds(events) == []


async def test_part_breaker_opened_by_the_first_answer_is_not_waited_for() -> None:
    """The first answer's failure opens the part's breaker: no round is worth waiting."""
    events: list[Any] = []
    registry = SlotRegistry(open_after_failures={"derapi:tesla": 1})
    server = Derapi({"sma": [None], "tesla": ["Timeout", None]})
    transport, inner, clock = build(server, below=[ShareRegistry(registry)], hooks=[events.append])
    response = await get(transport)
    failure = response.extensions["resilience"].partial.failures["tesla"]
    assert failure.problem is not None
    assert failure.problem.code == "circuit_open"
    assert vendors_asked(inner) == [None]
    assert all(count == 0 for count in registry.held.values())
    assert clock.sleeps == []
    assert rounds(events) == []


async def test_rounds_stop_once_nothing_is_left_to_ask() -> None:
    """Each round is one wait and one RetryScheduled; once every part recovered or
    turned final, no further round is waited for."""
    events: list[Any] = []
    server = Derapi(
        {
            "sma": [None],
            "solis": ["Unauthorized: https://solis.example/api"],
            "tesla": ["Timeout", "Too Many Requests", None],
            "enphase": ["Backend Server Error", "Unauthorized: https://x"],
        }
    )
    transport, inner, clock = build(server, hooks=[events.append])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert vendors_asked(inner) == [None, "tesla", "enphase", "tesla"]
    assert clock.sleeps == [1.0, 2.0]
    assert report.delays == [1.0, 2.0]
    assert [(e.attempt, e.delay) for e in rounds(events)] == [(1, 1.0), (2, 2.0)]
    assert report.attempts == 4
    assert report.partial.recovered == ("tesla",)
    assert {k: v.action for k, v in report.partial.failures.items()} == {
        "solis": Action.FAIL,
        "enphase": Action.FAIL,
    }
    assert report.gave_up is None
    assert server.times_asked("solis") == 1
    assert site_ids(response) == ["sma-0", "sma-1", "tesla-0", "tesla-1"]
    assert response.json()["errors"] == {
        "solis": "Unauthorized: https://solis.example/api",
        "enphase": "Unauthorized: https://x",
    }


async def test_max_parts_defers_the_rest_to_later_rounds() -> None:
    """At most max_parts backends are re-asked per round, in the order reported;
    the rest wait for a later round and are reported if the rounds run out."""
    server = Derapi(
        {
            "sma": [None],
            "tesla": ["Timeout", None],
            "enphase": ["Timeout", None],
            "solis": ["Timeout", None],
        }
    )
    splitter = PartialFailureSplitter(
        max_parts=2, max_rounds=1, backoff=ExponentialBackoff(jitter="none")
    )
    transport, inner, clock = build(server, splitter=splitter)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert vendors_asked(inner) == [None, "tesla", "enphase"]
    assert report.partial.recovered == ("tesla", "enphase")
    assert list(report.partial.failures) == ["solis"]
    assert report.gave_up == "max_rounds"
    assert response.json()["errors"] == {"solis": "Timeout"}
    assert clock.sleeps == [1.0]


async def test_max_rounds_zero_only_splits_and_reports() -> None:
    """max_rounds=0: what worked is delivered at once, nothing is waited for or
    re-asked, and the report says why."""
    events: list[Any] = []
    server = Derapi({"sma": [None], "tesla": ["Timeout", None]})
    splitter = PartialFailureSplitter(max_rounds=0)
    transport, inner, clock = build(server, splitter=splitter, hooks=[events.append])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert site_ids(response) == ["sma-0", "sma-1"]
    assert report.partial.failures["tesla"].action is Action.RETRY
    assert report.gave_up == "max_rounds"
    assert vendors_asked(inner) == [None]
    assert clock.sleeps == []
    assert rounds(events) == []


async def test_no_re_request_is_sent_inside_the_reserve() -> None:
    """``reserve``: no re-request runs past ``deadline - reserve``, on the pipeline's
    clock too (a Retry below must not sleep into the reserve and send from there)."""
    clock = VirtualClock()
    sent_at: list[float] = []
    played = {"tesla": 0}
    base = Derapi({"sma": [None], "tesla": ["Timeout"]})

    def server(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now())
        if request.url.params.get("vendor") != "tesla":
            return base(request)
        played["tesla"] += 1
        if played["tesla"] == 1:
            return reply(503)
        return reply(200, json={"sites": [{"id": "tesla-0", "vendor": "tesla"}], "errors": {}})

    retry = Retry(
        max_attempts=3,
        budget=None,
        backoff=ExponentialBackoff(initial=7.5, max_delay=30.0, jitter="none"),
    )
    splitter = PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none"), reserve=2.0)
    transport, _, _ = build(
        server, splitter=splitter, retry=retry, above=[resilience.Timeout(total=10.0)], clock=clock
    )
    response = await get(transport)
    assert site_ids(response)[:2] == ["sma-0", "sma-1"]
    assert all(when <= 10.0 - 2.0 for when in sent_at), sent_at


# --------------------------------------------------------------------------------------
# Merging: repeated, extra and unknown parts


async def test_part_named_again_after_it_recovered_stays_recovered() -> None:
    """A later narrowed answer that repeats a recovered backend's items and names it
    as failed neither duplicates its items nor takes its recovery back."""
    played: dict[str, int] = {}

    def server(request: httpx.Request) -> httpx.Response:
        vendor = request.url.params.get("vendor")
        played[str(vendor)] = played.get(str(vendor), 0) + 1
        if vendor is None:
            sites = [{"id": "sma-0", "vendor": "sma"}]
            return reply(200, json={"sites": sites, "errors": {"tesla": "Timeout", "enphase": "x"}})
        if vendor == "tesla":
            return reply(200, json={"sites": [{"id": "tesla-0", "vendor": "tesla"}], "errors": {}})
        if played["enphase"] == 1:
            return reply(200, json={"sites": [], "errors": {"enphase": "Timeout"}})
        # The server ignores the filter: everything again, and tesla said to fail.
        sites = [
            {"id": "sma-0", "vendor": "sma"},
            {"id": "tesla-0", "vendor": "tesla"},
            {"id": "enphase-0", "vendor": "enphase"},
        ]
        return reply(200, json={"sites": sites, "errors": {"tesla": "Timeout", "zeta": "Timeout"}})

    transport, inner, _ = build(server)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert site_ids(response) == ["sma-0", "tesla-0", "enphase-0"]
    assert report.partial.recovered == ("tesla", "enphase")
    assert report.partial.failures == {}
    assert response.json()["errors"] == {}
    # The unknown backend a narrowed answer named is never asked about.
    assert vendors_asked(inner) == [None, "tesla", "enphase", "enphase"]
    assert inner.unclosed() == []


async def test_group_narrowed_answer_recovering_one_part_of_two() -> None:
    """When several parts are asked together and only some come back, the others
    keep their new verdict and are asked again next round, alone or together."""

    @attrs.define
    class Grouping:
        vendor = "mesh"
        needs_body = True

        def classify(
            self, request: httpx.Request, response: httpx.Response | None, error: Any
        ) -> Verdict:
            if response is None:
                return Verdict(Action.RETRY)
            failed = response.json().get("failed")
            return Verdict(Action.SPLIT if failed else Action.ACCEPT, breaker_failure=False)

        def split(self, request: httpx.Request, response: httpx.Response, verdict: Any) -> Split:
            body = response.json()
            failures = {
                part: Verdict(Action.RETRY, problem=Problem(vendor="mesh", code=code))
                for part, code in body["failed"].items()
            }
            return Split(payload={"items": body["items"]}, failures=failures)

        def narrow(self, request: httpx.Request, parts: tuple[str, ...]) -> httpx.Request:
            return httpx.Request("GET", request.url.copy_set_param("part", ",".join(parts)))

    answers = iter(
        [
            {"items": [{"id": "a"}], "failed": {"b": "t1", "c": "t1"}},
            {"items": [{"id": "a"}, {"id": "c"}], "failed": {"b": "t2"}},
            {"items": [{"id": "b"}, {"id": "c"}], "failed": {}},
        ]
    )

    def server(request: httpx.Request) -> httpx.Response:
        return reply(200, json=next(answers))

    transport, inner, clock = build(server, classifier=Grouping())
    response = await get(transport)
    report = response.extensions["resilience"]
    assert [r.url.params.get("part") for r in inner.requests] == [None, "b,c", "b"]
    assert [item["id"] for item in response.json()["items"]] == ["a", "c", "b"]
    assert report.partial.recovered == ("c", "b")
    assert report.partial.failures == {}
    assert clock.sleeps == [1.0, 2.0]


async def test_legacy_list_of_urls_merges_without_duplicates() -> None:
    """The docs' legacy shape (a list of resource URLs, no ``vendor`` field): a FAIL
    backend is reported, a RETRY one re-asked, and URLs a narrowed answer repeats
    are not added twice."""
    url = "https://api.derapi.com/solar-inverters/"

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") == "tesla":
            listed = [url + "sma:12800016", url + "tesla:1", url + "tesla:2"]
            return reply(200, json={"solar-inverters": listed, "errors": {}})
        listed = [url + "sma:12800016", url + "sma:12800017"]
        errors = {"solis": "Unauthorized: https://www.soliscloud.com:13333/v1/api/inverterList"}
        return reply(
            200, json={"solar-inverters": listed, "errors": {**errors, "tesla": "Timeout"}}
        )

    transport, inner, _ = build(server)
    response = await get(transport, "/solar-inverters")
    assert response.json()["solar-inverters"] == [
        url + "sma:12800016",
        url + "sma:12800017",
        url + "tesla:1",
        url + "tesla:2",
    ]
    assert list(response.json()["errors"]) == ["solis"]
    assert response.extensions["resilience"].partial.recovered == ("tesla",)
    assert vendors_asked(inner) == [None, "tesla"]


async def test_our_expired_token_on_a_narrowed_request_is_refreshed() -> None:
    """A narrowed request refused for our own (expired) bearer token is refreshed
    and replayed by AuthRefresh below, and the backend recovers in that round."""

    @attrs.define
    class Counting:
        fetched: int = 0

        async def fetch(self, http: httpx.AsyncClient) -> resilience.Token:
            self.fetched += 1
            return resilience.Token(f"t{self.fetched}")

    base = Derapi({"sma": [None], "tesla": ["Timeout", None]})

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") and request.headers["authorization"] == "Bearer t1":
            return reply(401, content=b"")
        return base(request)

    provider = Counting()
    transport, inner, _ = build(server, below=[resilience.AuthRefresh(provider)])
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("tesla",)
    assert provider.fetched == 2
    sent = [(r.url.params.get("vendor"), r.headers["authorization"]) for r in inner.requests]
    assert sent == [
        (None, "Bearer t1"),
        ("tesla", "Bearer t1"),
        ("tesla", "Bearer t2"),
    ]
    assert report.attempts == 3
    assert inner.unclosed() == []


async def test_gzip_split_answer_is_rendered_as_plain_json() -> None:
    """A compressed partial list is decoded to be split; the merged response the
    caller reads is plain JSON with a matching Content-Length."""
    base = Derapi({"sma": [None], "tesla": ["Timeout", None]})

    def server(request: httpx.Request) -> httpx.Response:
        answer = base(request)
        if request.url.params.get("vendor"):
            return answer
        assert isinstance(answer.stream, ClosingStream)
        body = gzip.compress(answer.stream.body)
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        return reply(200, content=body, headers=headers)

    transport, inner, _ = build(server)
    response = await get(transport)
    assert "content-encoding" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content)
    assert site_ids(response) == ["sma-0", "sma-1", "tesla-0", "tesla-1"]
    assert inner.unclosed() == []


# --------------------------------------------------------------------------------------
# Garbage narrowed answers: fall back, never crash, never leak


GARBAGE: list[tuple[str, Handler]] = [
    ("array", lambda r: reply(200, json=[{"id": "tesla-0"}])),
    ("html", lambda r: reply(200, content=b"<html>bad gateway</html>")),
    ("not utf-8", lambda r: reply(200, content=b'{"sites": ["\xff\xfe"], "errors": {}}')),
    ("huge array", lambda r: reply(200, content=b"[" + b'"x",' * 400_000 + b'"x"]')),
    ("deep", lambda r: reply(200, content=b'{"sites": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
    ("empty", lambda r: reply(200, content=b"")),
]


@pytest.mark.parametrize("answer", [a for _, a in GARBAGE], ids=[n for n, _ in GARBAGE])
async def test_garbage_narrowed_answer_keeps_the_failure(answer: Handler) -> None:
    """A narrowed answer that is not a Derapi list adds nothing: what worked is
    delivered, the backend stays failed, every response is closed."""
    base = Derapi({"sma": [None], "tesla": ["Timeout"]})

    def server(request: httpx.Request) -> httpx.Response:
        return answer(request) if request.url.params.get("vendor") else base(request)

    splitter = PartialFailureSplitter(max_rounds=2, backoff=ExponentialBackoff(jitter="none"))
    transport, inner, _ = build(server, splitter=splitter)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert site_ids(response) == ["sma-0", "sma-1"]
    assert report.partial.failures["tesla"].action is Action.RETRY
    assert report.partial.recovered == ()
    assert report.gave_up == "max_rounds"
    assert response.json()["errors"] == {"tesla": "Timeout"}
    assert vendors_asked(inner) == [None, "tesla", "tesla"]
    assert inner.unclosed() == []


@pytest.mark.parametrize(
    "errors",
    [{"tesla": 42}, {"tesla": None}, {"tesla": {"nested": ["x"]}}, {"tesla": ""}],
    ids=["number", "null", "object", "empty"],
)
async def test_backend_message_of_the_wrong_type_is_retried(errors: dict[str, Any]) -> None:
    """A failed backend whose message is not a string is still a failure (RETRY),
    re-asked alone, and recovers."""
    played = {"tesla": 0}

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") == "tesla":
            played["tesla"] += 1
            return reply(200, json={"sites": [{"id": "tesla-0", "vendor": "tesla"}], "errors": {}})
        return reply(200, json={"sites": [{"id": "sma-0", "vendor": "sma"}], "errors": errors})

    transport, _, _ = build(server)
    response = await get(transport)
    assert site_ids(response) == ["sma-0", "tesla-0"]
    assert response.extensions["resilience"].partial.recovered == ("tesla",)
    assert played["tesla"] == 1


async def test_every_failed_backend_stays_named() -> None:
    """However many backends failed, none disappears from ``errors``."""
    failed = {f"b{i:03d}": "Unauthorized: https://x" for i in range(120)}
    body = {"sites": [{"id": "sma-0", "vendor": "sma"}], "errors": failed}
    transport, _, _ = build(ScriptedTransport.of(reply(200, json=body)))
    response = await get(transport)
    assert site_ids(response) == ["sma-0"]
    assert set(response.json()["errors"]) == set(failed)
    assert len(response.extensions["resilience"].partial.failures) == 120


# --------------------------------------------------------------------------------------
# Derapi problem types on a narrowed re-request


@pytest.mark.parametrize(("header", "wait"), [("7", 7.0), ("3600", 60.0)])
async def test_narrowed_429_retry_after_sets_the_next_rounds_wait(header: str, wait: float) -> None:
    """A narrowed request answered 429 too-many-requests with Retry-After: the part
    stays RETRY with the hint, and the next round waits that long (capped)."""
    played = {"tesla": 0}
    base = Derapi({"sma": [None], "tesla": ["Timeout"]})

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") != "tesla":
            return base(request)
        played["tesla"] += 1
        if played["tesla"] == 1:
            problem = {"type": type_uri("too-many-requests"), "title": "Too Many Requests"}
            return reply(
                429,
                json=problem,
                headers={"content-type": "application/problem+json", "retry-after": header},
            )
        return reply(200, json={"sites": [{"id": "tesla-0", "vendor": "tesla"}], "errors": {}})

    transport, inner, clock = build(server)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert clock.sleeps == [1.0, wait]  # capped at 60 s, as Retry caps hints
    assert report.partial.recovered == ("tesla",)
    assert site_ids(response) == ["sma-0", "sma-1", "tesla-0"]
    assert inner.unclosed() == []


@pytest.mark.parametrize("status", [401, 403])
async def test_narrowed_vendor_unauthorized_problem_is_final(status: int) -> None:
    """A narrowed request answered with the ``unauthorized`` problem (the backend
    rejected the vendor credentials): the part is FAIL and never asked again, and it
    is no breaker failure."""
    registry = SlotRegistry()
    base = Derapi({"sma": [None], "solis": ["Timeout"]})

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") != "solis":
            return base(request)
        problem = {"type": type_uri("unauthorized"), "title": "Unauthorized", "detail": "solis"}
        return reply(status, json=problem, headers={"content-type": "application/problem+json"})

    transport, inner, clock = build(server, below=[ShareRegistry(registry)])
    response = await get(transport)
    failure = response.extensions["resilience"].partial.failures["solis"]
    assert failure.action is Action.FAIL
    assert failure.problem is not None
    assert failure.problem.code == type_uri("unauthorized")
    assert vendors_asked(inner) == [None, "solis"]
    assert clock.sleeps == [1.0]
    assert registry.failures == {"derapi:solis": 1}  # the first answer's Timeout only
    assert all(count == 0 for count in registry.held.values())


async def test_narrowed_internal_error_is_retried_below_then_recovers() -> None:
    """A narrowed GET answered derapi-internal-error is retried by Retry below (it
    is idempotent) and recovers the part within the same round."""
    played = {"tesla": 0}
    base = Derapi({"sma": [None], "tesla": ["Derapi Internal Error"]})

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("vendor") != "tesla":
            return base(request)
        played["tesla"] += 1
        if played["tesla"] <= 2:
            problem = {"type": type_uri("derapi-internal-error"), "title": "Internal"}
            return reply(500, json=problem, headers={"content-type": "application/problem+json"})
        return reply(200, json={"sites": [{"id": "tesla-0", "vendor": "tesla"}], "errors": {}})

    retry = Retry(max_attempts=4, backoff=ExponentialBackoff(initial=0.5, jitter="none"))
    transport, inner, clock = build(server, retry=retry)
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("tesla",)
    assert clock.sleeps == [1.0, 0.5, 1.0]
    assert report.attempts == 4
    assert [v.action for v in report.verdicts] == [
        Action.SPLIT,
        Action.RETRY,
        Action.RETRY,
        Action.ACCEPT,
    ]
    assert inner.unclosed() == []


# --------------------------------------------------------------------------------------
# Strict mode, breakers and cancellation


async def test_strict_with_only_final_failures_raises_without_re_requests() -> None:
    """strict=True with a backend that rejected the vendor credentials: nothing is
    re-asked, and PartialFailureError carries the rendered payload (Derapi's own
    ``errors`` naming the backend) and the report."""
    server = Derapi({"sma": [None], "solis": ["Unauthorized: https://solis.example/api"]})
    splitter = PartialFailureSplitter(strict=True, backoff=ExponentialBackoff(jitter="none"))
    transport, inner, clock = build(server, splitter=splitter)
    with pytest.raises(PartialFailureError) as caught:
        await get(transport)
    error = caught.value
    assert error.response is not None
    assert error.response.status_code == 200
    assert site_ids(error.response) == ["sma-0", "sma-1"]
    assert error.response.json()["errors"] == {"solis": "Unauthorized: https://solis.example/api"}
    assert error.report.attempts == 1
    partial = error.report.partial
    assert partial is not None
    assert partial.failures["solis"].action is Action.FAIL
    assert error.problem is not None
    assert error.problem.details["failures"] == {"solis": type_uri("unauthorized")}
    assert clock.sleeps == []
    assert vendors_asked(inner) == [None]
    assert inner.unclosed() == []


async def test_part_breaker_half_opening_during_the_backoff_is_probed() -> None:
    """With the real CircuitBreaker: the first answer's failure opens the backend's
    circuit; a round whose wait outlasts the break probes it with the narrowed
    request, and the probe's success closes it."""
    breaker = CircuitBreaker(
        minimum_calls=1, failure_ratio=0.5, window=60.0, break_duration=10.0, half_open_calls=1
    )
    server = Derapi({"sma": [None], "tesla": ["Timeout", None]})
    splitter = PartialFailureSplitter(
        backoff=ExponentialBackoff(initial=12.0, max_delay=30.0, jitter="none")
    )
    transport, inner, clock = build(server, splitter=splitter, below=[breaker])
    registry = transport.pipeline.env.breakers[0]
    response = await get(transport)
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("tesla",)
    assert site_ids(response) == ["sma-0", "sma-1", "tesla-0", "tesla-1"]
    assert vendors_asked(inner) == [None, "tesla"]
    assert clock.sleeps == [12.0]
    assert registry.get("derapi:tesla").state.value == "closed"


async def test_cancelled_half_open_probe_frees_the_part_breaker() -> None:
    """A call cancelled while its narrowed request probes a half-open backend
    circuit gives the probe slot back: the next caller may probe at once."""
    breaker = CircuitBreaker(
        minimum_calls=1, failure_ratio=0.5, window=60.0, break_duration=10.0, half_open_calls=1
    )
    base = Derapi({"sma": [None], "tesla": ["Timeout"]})
    started = anyio.Event()

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.params.get("vendor"):
                started.set()
                await anyio.sleep_forever()
            return base(request)

    pipeline = Pipeline(
        [
            PartialFailureSplitter(
                backoff=ExponentialBackoff(initial=12.0, max_delay=30.0, jitter="none")
            ),
            Retry(max_attempts=1, budget=None),
            breaker,
        ],
        classifier=DerapiClassifier(),
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=Transport())
    registry = pipeline.env.breakers[0]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get, transport)
            await started.wait()
            assert registry.get("derapi:tesla").state.value == "half_open"
            assert registry.allow("derapi:tesla") == 0.0  # the call holds the probe
            tg.cancel_scope.cancel()
    assert registry.get("derapi:tesla").state.value == "half_open"
    assert registry.allow("derapi:tesla") is None


class BlockingClock(VirtualClock):
    """A virtual clock whose sleeps never end: the call is parked in a backoff."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await anyio.sleep_forever()


async def test_cancelled_during_the_backoff_between_rounds() -> None:
    """A call cancelled while it waits between rounds closes the original response,
    holds no breaker slot and sends nothing more."""
    registry = SlotRegistry()
    streams: list[ClosingStream] = []
    base = Derapi({"sma": [None], "tesla": ["Timeout", None]})

    def server(request: httpx.Request) -> httpx.Response:
        response = base(request)
        assert isinstance(response.stream, ClosingStream)
        streams.append(response.stream)
        return response

    clock = BlockingClock()
    transport, inner, _ = build(server, below=[ShareRegistry(registry)], clock=clock)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get, transport)
            await clock.sleeping.wait()
            tg.cancel_scope.cancel()
    assert vendors_asked(inner) == [None]
    assert streams
    assert all(stream.closed for stream in streams)
    assert all(count == 0 for count in registry.held.values())


async def test_cancelled_while_reading_a_narrowed_body() -> None:
    """A call cancelled while a narrowed answer's body stalls: that connection and
    the original one are closed, and the part's slot is released."""
    registry = SlotRegistry()
    base = Derapi({"sma": [None], "tesla": ["Timeout", None]})
    streams: list[ClosingStream] = []
    stalled = anyio.Event()

    class Stalling(ClosingStream):
        async def __aiter__(self) -> Any:
            yield b'{"sites": ['
            stalled.set()
            await anyio.sleep_forever()

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.params.get("vendor"):
                stream: ClosingStream = Stalling()
                streams.append(stream)
                return httpx.Response(200, stream=stream)
            response = base(request)
            assert isinstance(response.stream, ClosingStream)
            streams.append(response.stream)
            return response

    pipeline = Pipeline(
        [
            PartialFailureSplitter(backoff=ExponentialBackoff(jitter="none")),
            ShareRegistry(registry),
        ],
        classifier=DerapiClassifier(),
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=Transport())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get, transport)
            await stalled.wait()
            tg.cancel_scope.cancel()
    assert len(streams) == 2
    assert all(stream.closed for stream in streams)
    assert ("release", "derapi:tesla") in registry.calls
    assert all(count == 0 for count in registry.held.values())
