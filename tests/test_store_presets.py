"""Presets with rate limits and a shared store: ``standard_pipeline(vendor,
rate_limits=..., store=...)``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import resilience_tellus
import resilience_turris

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    MemoryStore,
    OAuth2ClientCredentials,
    RateLimiter,
    ResilientTransport,
    Retry,
    RetryBudget,
    Timeout,
    TokenRefreshed,
    standard_pipeline,
)
from resilience.errors import ConfigurationError, RateLimitExceeded
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

API = "https://api.example.test"


def ok(request: httpx.Request) -> httpx.Response:
    """Every request succeeds; a token request gets a token."""
    if request.url.path == "/oauth2/token":
        return reply(200, json={"access_token": "tok", "expires_in": 3600})
    return reply(200, json={})


def client(pipeline: Any, sent: list[str] | None = None) -> httpx.AsyncClient:
    """A client through ``pipeline`` over :func:`ok`, recording the API paths sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None and request.url.path != "/oauth2/token":
            sent.append(request.method)
        return ok(request)

    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    return httpx.AsyncClient(base_url=API, transport=transport)


async def test_tellus_rate_limits_opt_in_hold_the_documented_queries() -> None:
    """``rate_limits=rate_limits(client_id)`` on the Tellus preset: a burst of 10
    queries goes, the 11th is refused (max_wait=0) before it is sent."""
    clock = VirtualClock()
    limits = resilience_tellus.rate_limits("cid", max_wait=0)
    pipeline = standard_pipeline("tellus", rate_limits=limits, clock=clock, telemetry=False)
    sent: list[str] = []
    async with client(pipeline, sent) as c:
        for _ in range(10):
            await c.get("/v1/sites")
        with pytest.raises(RateLimitExceeded) as caught:
            await c.get("/v1/sites")
    assert len(sent) == 10
    assert caught.value.limiter == "tellus-queries"
    assert 1.1 < caught.value.retry_after <= 1.2


async def test_rate_limits_sit_just_inside_the_total_timeout() -> None:
    """The limiters come right after Timeout(total=), before Retry."""
    limits = resilience_turris.rate_limits("cid")
    pipeline = standard_pipeline("turris", rate_limits=limits, telemetry=False)
    kinds = [type(layer).__name__ for layer in pipeline.layers]
    assert kinds[:3] == ["Timeout", "RateLimiter", "Retry"]
    assert isinstance(pipeline.layers[0], Timeout)


async def test_tellus_preset_paces_queries_by_default() -> None:
    """The Tellus preset alone holds the documented query limit: of 30 queries in
    an instant, 10 go at once and the rest wait for their slot (1.2 s apart),
    none refused and none answered 429."""
    clock = VirtualClock()
    pipeline = standard_pipeline("tellus", clock=clock, telemetry=False)
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        return reply(200, json={})

    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(base_url=API, transport=transport) as c:
        for _ in range(30):
            assert (await c.get("/v1/sites")).status_code == 200
    assert len(sent) == 30
    assert sent[9] == sent[0]
    assert sent[29] - sent[0] == pytest.approx(20 * 1.2)


async def test_tellus_and_turris_presets_use_the_documented_limits() -> None:
    """By default Tellus limits queries and control calls apart, Turris writes."""
    tellus = standard_pipeline("tellus", telemetry=False)
    turris = standard_pipeline("turris", telemetry=False)
    names = [getattr(layer, "name", None) for layer in tellus.layers]
    assert "tellus-queries" in names
    assert "tellus-control" in names
    assert [layer.name for layer in turris.layers if isinstance(layer, RateLimiter)] == [
        "turris-writes"
    ]


async def test_rate_limits_off_with_an_empty_tuple() -> None:
    """``rate_limits=()`` turns the default limits off: 30 queries in an instant
    all go at once."""
    clock = VirtualClock()
    pipeline = standard_pipeline("tellus", rate_limits=(), clock=clock, telemetry=False)
    sent: list[str] = []
    async with client(pipeline, sent) as c:
        for _ in range(30):
            await c.get("/v1/sites")
    assert len(sent) == 30
    assert clock.now() == 0
    assert not any(isinstance(layer, RateLimiter) for layer in pipeline.layers)


async def test_generic_preset_has_no_rate_limit() -> None:
    """The generic ``"http"`` preset documents no limit, so it sets none."""
    pipeline = standard_pipeline("http", telemetry=False)
    assert not any(isinstance(layer, RateLimiter) for layer in pipeline.layers)


async def test_store_reaches_the_rate_limits_and_the_token() -> None:
    """``store=`` is handed to the limiters and AuthRefresh: two pipelines (two
    processes, as far as the store knows) spend one limit and fetch one token."""
    store, clock = MemoryStore(), VirtualClock()
    events: list[Any] = []
    provider = OAuth2ClientCredentials(f"{API}/oauth2/token", "cid", "secret-value")
    limits = (RateLimiter(rate=1, per=60.0, burst=3, max_wait=0, client_id="cid"),)
    pipelines = [
        standard_pipeline(
            "http",
            auth=provider,
            rate_limits=limits,
            store=store,
            clock=clock,
            telemetry=False,
            hooks=[events.append],
        )
        for _ in range(2)
    ]
    assert all(isinstance(p.layers[1], RateLimiter) for p in pipelines)
    assert all(p.layers[1].store is store for p in pipelines)  # type: ignore[attr-defined]
    assert all(
        layer.store is store
        for p in pipelines
        for layer in p.layers
        if isinstance(layer, AuthRefresh)
    )
    sent: list[str] = []
    async with client(pipelines[0], sent) as a, client(pipelines[1], sent) as b:
        await a.get("/x")
        await b.get("/x")
        await a.get("/x")
        with pytest.raises(RateLimitExceeded):
            await b.get("/x")
    assert len(sent) == 3
    assert len([e for e in events if isinstance(e, TokenRefreshed)]) == 1


async def test_a_limiter_with_its_own_store_keeps_it() -> None:
    """A limiter that names its own store is not given the preset's."""
    own, shared = MemoryStore(), MemoryStore()
    limiter = RateLimiter(rate=1, store=own)
    pipeline = standard_pipeline("http", rate_limits=(limiter,), store=shared, telemetry=False)
    assert pipeline.layers[1].store is own  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("override", "name"),
    [({"rate_limits": ["not a limiter"]}, "rate_limits"), ({"store": object()}, "store")],
)
async def test_bad_rate_limits_or_store_name_the_argument(
    override: dict[str, Any], name: str
) -> None:
    """A wrong rate_limits or store fails at construction, naming it."""
    with pytest.raises(ConfigurationError, match=name):
        standard_pipeline("http", **override)


def _layer(pipeline: Any, kind: type) -> Any:
    """The pipeline's one layer of type ``kind``."""
    (found,) = [layer for layer in pipeline.layers if isinstance(layer, kind)]
    return found


async def test_memory_store_shares_the_budget_and_keeps_the_breaker_local() -> None:
    """``store=MemoryStore()`` goes behind the retry budget (keyed by the pipeline's
    name, so two vendors keep apart) but not the breaker, which a MemoryStore
    cannot share: it stays per process."""
    store = MemoryStore()
    tellus = standard_pipeline("tellus", store=store, telemetry=False)
    named = standard_pipeline("turris", store=store, name="billing", telemetry=False)
    assert _layer(tellus, Retry).budget.store is store
    assert _layer(tellus, Retry).budget.key == "tellus"
    assert _layer(named, Retry).budget.key == "billing"
    assert _layer(tellus, CircuitBreaker).store is None
    assert all(
        limiter.store is store for limiter in tellus.layers if isinstance(limiter, RateLimiter)
    )


async def test_a_budget_with_its_own_key_or_store_keeps_them() -> None:
    """A budget naming its own key keeps it; one with its own store keeps that."""
    store, own = MemoryStore(), MemoryStore()
    keyed = standard_pipeline("http", store=store, budget=RetryBudget(key="mine"), telemetry=False)
    owned = standard_pipeline("http", store=store, budget=RetryBudget(store=own), telemetry=False)
    assert _layer(keyed, Retry).budget.key == "mine"
    assert _layer(keyed, Retry).budget.store is store
    assert _layer(owned, Retry).budget.store is own


async def test_a_shared_budget_is_spent_by_both_pipelines() -> None:
    """Two pipelines on one store spend one retry budget: once the first spent
    it on a failing backend, the second's failure is not retried."""
    store, clock = MemoryStore(), VirtualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=1.0)
    backoff = ExponentialBackoff(initial=0.01, multiplier=1.0, jitter="none")
    pipelines = [
        standard_pipeline(
            "http",
            store=store,
            budget=budget,
            backoff=backoff,
            max_attempts=2,
            breaker=None,
            hold=None,
            clock=clock,
            telemetry=False,
            raise_on_failure=False,
        )
        for _ in range(2)
    ]
    sent: list[str] = []

    def failing(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return reply(503)

    clients = [
        httpx.AsyncClient(
            base_url=API, transport=ResilientTransport(p, inner=httpx.MockTransport(failing))
        )
        for p in pipelines
    ]
    async with clients[0] as a, clients[1] as b:
        await a.get("/x")
        first = len(sent)
        await b.get("/x")
    assert first == 2  # the first call and the one retry the budget allows
    assert len(sent) == 3  # the second pipeline found the budget spent
