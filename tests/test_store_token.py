"""AuthRefresh(store=...): one token per expiry shared through a state store.

The first half runs in one process on a shared ``MemoryStore`` (two pipelines
stand for two processes), under asyncio and trio, on a VirtualClock. The second
half runs worker processes against a real ``redis-server`` and a loopback token
endpoint (asyncio only: redis-py's asyncio client), in real time, since the
token's key lives on the Redis server's clock.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import httpx
import pytest

from resilience import (
    AuthRefresh,
    MemoryStore,
    OAuth2ClientCredentials,
    RedisStore,
    TokenFetchError,
    TokenRefreshed,
)
from resilience.errors import ConfigurationError
from resilience.testing import VirtualClock, reply, serve, through

pytestmark = pytest.mark.anyio

API = "https://api.example.test"
TOKEN_URL = "https://api.example.test/oauth2/token"
CLIENT_ID = "fleet-client"
SECRET = "fleet-secret-value-42"


@attrs.define(eq=False)
class Vendor:
    """A token endpoint issuing ``tok-1``, ``tok-2``, ... and an API that accepts
    the tokens in :attr:`valid` (a new token does not revoke the old ones)."""

    expires_in: float = 100.0
    fail_next: int = 0
    issued: int = 0
    valid: set[str] = attrs.field(factory=set)
    hold: anyio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            if self.hold is not None:
                await self.hold.wait()
            if self.fail_next:
                self.fail_next -= 1
                return reply(503, json={"error": "unavailable"})
            self.issued += 1
            value = f"tok-{self.issued}"
            self.valid.add(value)
            return reply(
                200,
                json={"access_token": value, "token_type": "Bearer", "expires_in": self.expires_in},
            )
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        return reply(200 if bearer in self.valid else 401, json={"token": bearer})


def provider() -> OAuth2ClientCredentials:
    """The provider every test uses."""
    return OAuth2ClientCredentials(TOKEN_URL, CLIENT_ID, SECRET)


class CountingStore(MemoryStore):
    """A MemoryStore that counts the token steps asked of it."""

    steps: int = 0

    async def claim_token(self, key: str, now: float, *, lease: float, owner: str) -> Any:
        CountingStore.steps += 1
        return await super().claim_token(key, now, lease=lease, owner=owner)


def client(
    vendor: Vendor, store: Any, clock: VirtualClock, events: list[Any], **options: Any
) -> httpx.AsyncClient:
    """A client on the API through ``AuthRefresh(store=store)``."""
    transport = through(
        httpx.MockTransport(vendor),
        AuthRefresh(provider(), store=store, **options),
        clock=clock,
        hooks=[events.append],
    )
    return httpx.AsyncClient(base_url=API, transport=transport)


def fetches(events: list[Any]) -> list[str]:
    """The triggers of the token fetches this pipeline made."""
    return [e.trigger for e in events if isinstance(e, TokenRefreshed)]


async def test_two_pipelines_share_one_token_per_expiry() -> None:
    """The second pipeline adopts the first's token; after its refresh time one
    of them fetches the next, and the other adopts that too."""
    vendor, clock, store = Vendor(expires_in=100.0), VirtualClock(), MemoryStore()
    a_events: list[Any] = []
    b_events: list[Any] = []
    async with (
        client(vendor, store, clock, a_events, skew=10.0) as a,
        client(vendor, store, clock, b_events, skew=10.0) as b,
    ):
        assert (await a.get("/v1/x")).json() == {"token": "tok-1"}
        assert (await b.get("/v1/x")).json() == {"token": "tok-1"}
        clock.advance(95.0)  # past the refresh time (90 s), before expiry
        assert (await b.get("/v1/x")).json() == {"token": "tok-2"}
        assert (await a.get("/v1/x")).json() == {"token": "tok-2"}
    assert vendor.issued == 2
    assert fetches(a_events) == ["initial"]
    assert fetches(b_events) == ["proactive"]


async def test_a_cached_token_costs_no_store_step() -> None:
    """With the token cached in the pipeline, a call never asks the store."""
    vendor, clock = Vendor(), VirtualClock()
    store = CountingStore()
    CountingStore.steps = 0
    async with client(vendor, store, clock, []) as a:
        for _ in range(20):
            assert (await a.get("/v1/x")).status_code == 200
    assert CountingStore.steps == 1


async def test_a_rejected_token_is_refetched_once_for_all() -> None:
    """The server revokes the token: both pipelines see 401s, one new token is
    fetched, and both replay with it."""
    vendor, clock, store = Vendor(), VirtualClock(), MemoryStore()
    a_events: list[Any] = []
    b_events: list[Any] = []
    async with (
        client(vendor, store, clock, a_events) as a,
        client(vendor, store, clock, b_events) as b,
    ):
        await a.get("/v1/x")
        await b.get("/v1/x")
        vendor.valid.clear()
        assert (await a.get("/v1/x")).json() == {"token": "tok-2"}
        assert (await b.get("/v1/x")).json() == {"token": "tok-2"}
    assert vendor.issued == 2
    assert fetches(a_events) == ["initial", "rejected"]
    assert fetches(b_events) == []


async def test_a_stale_rejection_keeps_the_replacement() -> None:
    """Compare and delete: a rejection of an old token does not drop the new one."""
    store, clock = MemoryStore(), VirtualClock()
    store.put_token_now("k", 0.0, value="new", ttl=50.0, margin=10.0, owner="x")
    assert not await store.drop_token("k", "old")
    assert await store.claim_token("k", 0.0, lease=1.0, owner="y") == ("new", 50.0, 10.0)
    assert await store.drop_token("k", "new")
    assert await store.claim_token("k", clock.now(), lease=1.0, owner="y") is True


async def test_a_waiter_takes_the_holders_token() -> None:
    """While another holds the lease, a pipeline polls and uses the token it stores."""
    vendor, clock, store = Vendor(), VirtualClock(), MemoryStore()
    assert store.claim_token_now("http:fleet-client", 0.0, lease=60.0, owner="other") is True

    async def deliver() -> None:
        await clock.sleep(2.0)
        store.put_token_now(
            "http:fleet-client", clock.now(), value="tok-99", ttl=50.0, margin=10.0, owner="other"
        )
        vendor.valid.add("tok-99")

    events: list[Any] = []
    async with client(vendor, store, clock, events) as a, anyio.create_task_group() as tg:
        tg.start_soon(deliver)
        started = clock.now()
        assert (await a.get("/v1/x")).json() == {"token": "tok-99"}
        waited = clock.now() - started
    assert 2.0 <= waited < 2.3
    assert vendor.issued == 0
    assert fetches(events) == []


async def test_a_dead_holder_costs_one_fetch_timeout_then_a_local_fetch() -> None:
    """A lease whose holder never delivers: the waiter fetches itself after fetch_timeout."""
    vendor, clock, store = Vendor(), VirtualClock(), MemoryStore()
    store.claim_token_now("http:fleet-client", 0.0, lease=60.0, owner="dead")
    events: list[Any] = []
    async with client(vendor, store, clock, events, fetch_timeout=5.0) as a:
        assert (await a.get("/v1/x")).json() == {"token": "tok-1"}
    assert 5.0 <= clock.now() < 5.3
    assert fetches(events) == ["initial"]


async def test_a_failed_fetch_releases_the_lease() -> None:
    """A fetch that fails lets the next caller (here: another pipeline) claim at once."""
    vendor, clock, store = Vendor(fail_next=1), VirtualClock(), MemoryStore()
    async with client(vendor, store, clock, []) as a, client(vendor, store, clock, []) as b:
        with pytest.raises(TokenFetchError):
            await a.get("/v1/x")
        assert (await b.get("/v1/x")).json() == {"token": "tok-1"}
    assert clock.now() == 0.0


async def test_the_store_must_be_a_state_store() -> None:
    """A store that is not one fails at construction, naming the argument."""
    with pytest.raises(ConfigurationError, match="AuthRefresh: store"):
        AuthRefresh(provider(), store=object())  # type: ignore[arg-type]


# --- fleets on a real Redis ---------------------------------------------------------


@pytest.fixture
async def endpoint(redis_helper: Any) -> AsyncIterator[tuple[str, Any]]:
    """A loopback token endpoint and API (redis_helper.TokenApp), served in a thread."""
    app = redis_helper.TokenApp(expires_in=3.0)
    async with serve(app) as base_url:
        yield base_url, app


async def everything_in(url: str) -> str:
    """Every key and value in the Redis database, as one text."""
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(url, decode_responses=True)
    parts = []
    try:
        async for key in r.scan_iter("*"):
            kind = await r.type(key)
            value: Any = await r.hgetall(key) if kind == "hash" else await r.get(key)
            parts.append(f"{key}={value}")
    finally:
        await r.aclose()
    return "\n".join(parts)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_eight_processes_fetch_one_token_per_expiry(
    redis_helper: Any, redis_server: Any, endpoint: tuple[str, Any]
) -> None:
    """8 worker processes for 2 s on a token of 3 s refreshed at 1.5 s: 2 fetches, not 16."""
    base_url, app = endpoint
    results = redis_helper.run_token_workers(redis_server.url, "fleet", base_url, 8, 2.0, skew=1.5)
    assert all(failed == 0 and ok > 0 for ok, failed, _ in results), results
    assert app.issued == 2, (app.issued, results)
    assert sum(fetched for _, _, fetched in results) == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_revoked_token_is_refetched_once_by_the_fleet(
    redis_helper: Any, redis_server: Any, endpoint: tuple[str, Any]
) -> None:
    """The endpoint revokes every token 0.7 s in: 4 processes make one new fetch
    between them, and no call fails (each replays with the new token). The secret
    is nowhere in Redis; the token's key is ``prefix:tok:<vendor>:<client id>``."""
    base_url, app = endpoint
    app.expires_in = 3600.0
    app.revoke_after = 0.7
    results = redis_helper.run_token_workers(redis_server.url, "fleet", base_url, 4, 1.5, skew=60.0)
    assert all(failed == 0 and ok > 0 for ok, failed, _ in results), results
    assert app.issued == 2, (app.issued, results)
    assert app.rejected > 0
    dump = await everything_in(redis_server.url)
    assert redis_helper.SECRET not in dump
    assert "tok-2" in dump
    pair = base64.b64encode(f"{redis_helper.CLIENT_ID}:{redis_helper.SECRET}".encode()).decode()
    assert pair not in dump
    assert f"fleet:tok:http:{redis_helper.CLIENT_ID}=" in dump


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_token_keys_lease_and_compare_and_delete(redis_server: Any) -> None:
    """On Redis: one lease at a time (with its PX), the token key's TTL, its holder's
    lease released by the put, and a delete only of the token still stored."""
    a = RedisStore(url=redis_server.url, prefix="app")
    b = RedisStore(url=redis_server.url, prefix="app")
    try:
        assert await a.claim_token("v:c", 0.0, lease=30.0, owner="a") is True
        assert await b.claim_token("v:c", 0.0, lease=30.0, owner="b") is False
        assert await a.claim_token("v:c", 0.0, lease=30.0, owner="a") is True  # renewed
        lease_ttl = int(redis_server.command(b"PTTL", b"app:lease:tok:v:c")[1:])
        assert 29_000 < lease_ttl <= 30_000
        await a.put_token("v:c", 0.0, value="tok-1", ttl=50.0, margin=10.0, owner="a")
        assert redis_server.command(b"EXISTS", b"app:lease:tok:v:c") == b":0"
        token_ttl = int(redis_server.command(b"PTTL", b"app:tok:v:c")[1:])
        assert 49_000 < token_ttl <= 50_000
        value, ttl, margin = await b.claim_token("v:c", 0.0, lease=30.0, owner="b")  # type: ignore[misc]
        assert (value, margin) == ("tok-1", 10.0)
        assert 49.0 < ttl <= 50.0
        assert not await b.drop_token("v:c", "tok-0")
        assert await b.drop_token("v:c", "tok-1")
        assert await b.claim_token("v:c", 0.0, lease=30.0, owner="b") is True
        await b.release_token("v:c", "a")  # not a's lease: it stays
        assert await a.claim_token("v:c", 0.0, lease=30.0, owner="a") is False
        await b.release_token("v:c", "b")
        assert await a.claim_token("v:c", 0.0, lease=30.0, owner="a") is True
    finally:
        await a.aclose()
        await b.aclose()
    assert a.fallback_calls == 0
    assert b.fallback_calls == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_down_fetches_locally(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone: the pipeline fetches its own token (the local single-flight), the
    outage is logged once and counted."""
    redis_server.kill()
    store = RedisStore(url=redis_server.url, prefix="fleet", timeout=0.2)
    vendor, clock = Vendor(), VirtualClock()
    events: list[Any] = []
    caplog.set_level(logging.WARNING, logger="resilience")
    try:
        async with client(vendor, store, clock, events) as a:
            for _ in range(3):
                assert (await a.get("/v1/x")).json() == {"token": "tok-1"}
    finally:
        await store.aclose()
    assert vendor.issued == 1
    assert fetches(events) == ["initial"]
    assert store.outages == 1
    assert store.fallback_calls >= 1
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
