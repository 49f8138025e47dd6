"""AuthRefresh over a token's life: when it is fetched and refreshed (proactive
timing), the replay after a rejection, fetch failures shared by waiting callers,
and secrets kept out of errors. The fake vendor expires and revokes tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import httpx
import pytest

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    OAuth2ClientCredentials,
    Retry,
    RetryBudget,
    StaticToken,
    TokenFetchError,
    TokenRefreshed,
)
from resilience.errors import AuthenticationError, CircuitOpenError
from resilience.testing import VirtualClock, reply, through

pytestmark = pytest.mark.anyio

API = "https://api.example.test"
TOKEN_URL = "https://auth.example.test/oauth2/token"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")

Hook = Callable[[httpx.Request], Awaitable[None]]


@attrs.define(eq=False)
class Vendor:
    """A token endpoint and an API behind one inner transport, aware of token expiry.

    Tokens are ``tok-1``, ``tok-2``, ...; a new one revokes the older ones, and the
    API refuses a token once ``clock`` has passed its expiry. ``token_steps`` and
    ``api_steps`` are answered (or raised) first, in order; hooks hold a request.
    """

    clock: VirtualClock
    expires_in: Any = 3600.0
    check_expiry: bool = True
    token_steps: list[httpx.Response | Exception] = attrs.field(factory=list)
    api_steps: list[httpx.Response] = attrs.field(factory=list)
    before_token: Hook | None = None
    before_api: Hook | None = None
    issued: int = 0
    valid: dict[str, float] = attrs.field(factory=dict)
    token_requests: list[httpx.Request] = attrs.field(factory=list)
    api_requests: list[httpx.Request] = attrs.field(factory=list)
    token_started: anyio.Event = attrs.field(factory=anyio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.test":
            return await self._token(request)
        return await self._api(request)

    async def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        self.token_started.set()
        if self.before_token is not None:
            await self.before_token(request)
        if self.token_steps:
            step = self.token_steps.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        self.issued += 1
        value = f"tok-{self.issued}"
        life = self.expires_in
        ends = self.clock.now() + life if isinstance(life, (int, float)) else float("inf")
        self.valid = {value: ends}
        body: dict[str, Any] = {"access_token": value}
        if life != "absent":
            body["expires_in"] = life
        return reply(200, json=body)

    async def _api(self, request: httpx.Request) -> httpx.Response:
        self.api_requests.append(request)
        if self.before_api is not None:
            await self.before_api(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        expired = self.check_expiry and self.clock.now() >= self.valid.get(bearer, 0.0)
        if bearer not in self.valid or expired:
            return reply(401, json={"message": "Unauthorized"})
        if self.api_steps:
            return self.api_steps.pop(0)
        return reply(200, json={"ok": True})

    def sent_tokens(self) -> list[str]:
        """The bearer token of every API request, in order."""
        return [r.headers.get("authorization", "") for r in self.api_requests]


def provider() -> OAuth2ClientCredentials:
    """The client-credentials provider these tests use."""
    return OAuth2ClientCredentials(TOKEN_URL, "client-7", "client-secret-value")


def client_for(
    inner: Vendor | httpx.AsyncBaseTransport,
    *layers: Any,
    clock: VirtualClock,
    events: list[Any] | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An AsyncClient on the API through ``Pipeline(layers)`` over ``inner``."""
    hooks = [events.append] if events is not None else []
    sender = inner if isinstance(inner, httpx.AsyncBaseTransport) else httpx.MockTransport(inner)
    transport = through(sender, *layers, clock=clock, hooks=hooks, **kwargs)
    return httpx.AsyncClient(base_url=API, transport=transport)


def triggers(events: list[Any]) -> list[str]:
    """The triggers of the TokenRefreshed events seen."""
    return [e.trigger for e in events if isinstance(e, TokenRefreshed)]


# -- proactive timing --------------------------------------------------------------------


async def test_refresh_time_counts_from_when_the_fetch_started() -> None:
    """A fetch that takes 100 s: the token is refreshed at start + 3540 s, not end + 3540 s."""
    clock = VirtualClock()

    async def slow(request: httpx.Request) -> None:
        if len(vendor.token_requests) == 1:
            clock.advance(100.0)

    vendor = Vendor(clock, before_token=slow)
    async with client_for(
        vendor, AuthRefresh(provider(), origins=[API], skew=60.0), clock=clock
    ) as client:
        await client.get("/v1/things")  # fetched 0..100, token lives 3600 s from 0
        clock.advance(3539.9 - clock.now())
        await client.get("/v1/things")
        assert len(vendor.token_requests) == 1
        clock.advance(0.1)  # now 3540.0
        await client.get("/v1/things")
    assert len(vendor.token_requests) == 2
    assert vendor.sent_tokens() == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_zero_skew_refreshes_exactly_at_expiry() -> None:
    """skew=0: the token serves until its last instant and is replaced at expiry."""
    clock = VirtualClock()
    vendor = Vendor(clock, expires_in=100.0)
    async with client_for(
        vendor, AuthRefresh(provider(), origins=[API], skew=0.0), clock=clock
    ) as client:
        await client.get("/v1/things")
        clock.advance(99.99)
        await client.get("/v1/things")
        assert len(vendor.token_requests) == 1
        clock.advance(0.01)
        assert (await client.get("/v1/things")).status_code == 200
    assert len(vendor.token_requests) == 2


async def test_zero_life_tokens_are_still_single_flight() -> None:
    """expires_in 0: every call needs a new token, but 50 concurrent callers share one fetch."""
    clock = VirtualClock()
    release = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await release.wait()

    # The API takes any current token (it would refuse a zero-life one at once).
    vendor = Vendor(clock, expires_in=0, before_token=hold, check_expiry=False)
    statuses: list[int] = []
    events: list[Any] = []
    async with client_for(
        vendor, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:

        async def one() -> None:
            statuses.append((await client.get("/v1/things")).status_code)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(one)
                await anyio.wait_all_tasks_blocked()
                release.set()
        assert statuses == [200] * 50
        assert len(vendor.token_requests) == 1
        await client.get("/v1/things")  # a later call: the token has no life left
    assert len(vendor.token_requests) == 2
    assert triggers(events) == ["initial", "proactive"]


async def test_null_expires_in_is_a_token_that_does_not_expire() -> None:
    """``"expires_in": null`` reads as no expiry: fetched once, however long it is used."""
    clock = VirtualClock()
    vendor = Vendor(clock, expires_in=None)
    events: list[Any] = []
    async with client_for(
        vendor, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:
        await client.get("/v1/things")
        clock.advance(10.0**9)
        await client.get("/v1/things")
    assert len(vendor.token_requests) == 1
    assert events == [TokenRefreshed(trigger="initial", expires_in=None)]


# -- reactive refresh --------------------------------------------------------------------


async def test_replay_after_a_replacement_never_sends_an_expired_token() -> None:
    """A long call rejected for tok-1 after tok-2 (its replacement) expired gets a fresh token."""
    clock = VirtualClock()
    arrived, release = anyio.Event(), anyio.Event()

    async def hold(request: httpx.Request) -> None:
        if request.headers.get("x-hold"):
            arrived.set()
            await release.wait()

    vendor = Vendor(clock, expires_in=100.0, before_api=hold)
    results: list[httpx.Response] = []
    errors: list[BaseException] = []
    async with client_for(
        vendor, AuthRefresh(provider(), origins=[API], skew=60.0), clock=clock
    ) as client:
        await client.get("/v1/things")  # tok-1 at t=0, lives to 100

        async def long_call() -> None:
            try:
                results.append(await client.get("/v1/things", headers={"x-hold": "1"}))
            except AuthenticationError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await arrived.wait()  # the long call has sent tok-1
                clock.advance(60.0)
                await client.get("/v1/things")  # proactive: tok-2 at t=60, lives to 160
                clock.advance(150.0)  # t=210: tok-1 and tok-2 both expired
                release.set()  # the long call gets 401 for tok-1
    assert errors == []
    assert [r.status_code for r in results] == [200]
    assert vendor.sent_tokens()[-1] == "Bearer tok-3"


async def test_replay_resends_a_replayable_body_with_the_new_token() -> None:
    """A rejected POST goes again with the same body and the new token; the caller's
    request object never gets a token."""
    clock = VirtualClock()
    vendor = Vendor(clock)
    async with client_for(vendor, AuthRefresh(provider(), origins=[API]), clock=clock) as client:
        await client.get("/v1/things")
        vendor.valid.clear()  # tok-1 revoked
        request = client.build_request("POST", "/v1/things", json={"a": 1})
        r = await client.send(request)
    assert r.status_code == 200
    first, replay = vendor.api_requests[1:]
    assert (first.headers["authorization"], replay.headers["authorization"]) == (
        "Bearer tok-1",
        "Bearer tok-2",
    )
    assert first.content == replay.content == b'{"a":1}'
    assert "authorization" not in request.headers
    assert r.request is request


async def test_replay_does_not_spend_the_retry_budget() -> None:
    """A budget holding one retry: a 401 replay leaves it whole for a later 503."""
    clock = VirtualClock()
    vendor = Vendor(clock)
    budget = RetryBudget(initial=1.0, ratio=0.0, min_per_second=0.0)
    layers = [
        Retry(max_attempts=3, backoff=ONE, budget=budget),
        AuthRefresh(provider(), origins=[API]),
    ]
    async with client_for(vendor, *layers, clock=clock) as client:
        await client.get("/v1/things")
        vendor.valid.clear()
        first = await client.get("/v1/things")  # 401, refresh, replay
        assert first.extensions["resilience"].attempts == 2
        assert first.extensions["resilience"].delays == []
        vendor.api_steps = [reply(503)]
        second = await client.get("/v1/things")  # needs the budget's one retry
    assert second.status_code == 200
    assert second.extensions["resilience"].delays == [1.0]
    assert second.extensions["resilience"].gave_up is None


async def test_transient_failure_of_the_rejected_refresh_is_retried_by_retry() -> None:
    """401, then the refresh meets a 503: the call is retried and ends with a new token."""
    clock = VirtualClock()
    vendor = Vendor(clock)
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with client_for(vendor, *layers, clock=clock) as client:
        await client.get("/v1/things")
        vendor.valid.clear()
        vendor.token_steps = [reply(503, headers={"Retry-After": "4"})]
        r = await client.get("/v1/things")
    assert r.status_code == 200
    assert clock.sleeps == [4.0]
    # tok-1 refused, refresh failed; retry: tok-1 refused again, refresh, replay.
    assert vendor.sent_tokens()[1:] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert len(vendor.token_requests) == 3


async def test_a_call_refreshes_on_rejection_once_even_across_retries() -> None:
    """401, refresh, replay gets a 503; Retry's next attempt is refused again: that
    second rejection in the same call is final (no third token fetch)."""
    clock = VirtualClock()

    async def revoke_on_the_fourth(request: httpx.Request) -> None:
        if len(vendor.api_requests) == 4:
            vendor.valid.clear()

    vendor = Vendor(clock, before_api=revoke_on_the_fourth)
    layers = [Retry(max_attempts=4, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with client_for(vendor, *layers, clock=clock) as client:
        await client.get("/v1/things")  # tok-1
        vendor.valid.clear()
        vendor.api_steps = [reply(503)]
        with pytest.raises(AuthenticationError) as info:
            await client.get("/v1/things")
    assert vendor.sent_tokens()[1:] == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]
    assert len(vendor.token_requests) == 2
    assert clock.sleeps == [1.0]
    assert info.value.response is not None
    assert info.value.response.status_code == 401
    assert info.value.report.attempts == 3


# -- fetch failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "transient"),
    [
        pytest.param(reply(408), True, id="408"),
        pytest.param(reply(425), True, id="425"),
        pytest.param(reply(429), True, id="429"),
        pytest.param(reply(500), True, id="500"),
        pytest.param(reply(502), True, id="502"),
        pytest.param(reply(504), True, id="504"),
        pytest.param(httpx.ReadTimeout("read timed out"), True, id="read-timeout"),
        pytest.param(httpx.RemoteProtocolError("peer closed"), True, id="protocol"),
        pytest.param(httpx.ReadError("reset"), True, id="read-error"),
        pytest.param(reply(400, json={"error": "invalid_request"}), False, id="400"),
        pytest.param(reply(403), False, id="403"),
        pytest.param(reply(404), False, id="404"),
        pytest.param(reply(302, headers={"Location": "/elsewhere"}), False, id="302"),
    ],
)
async def test_fetch_failures_are_transient_or_permanent(
    step: httpx.Response | Exception, transient: bool
) -> None:
    """Network errors, 408, 425, 429 and 5xx are retried by Retry above; other answers are not."""
    clock = VirtualClock()
    vendor = Vendor(clock, token_steps=[step])
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with client_for(vendor, *layers, clock=clock) as client:
        if transient:
            r = await client.get("/v1/things")
            assert r.status_code == 200
            assert clock.sleeps == [1.0]
            assert len(vendor.token_requests) == 2
        else:
            with pytest.raises(TokenFetchError) as caught:
                await client.get("/v1/things")
            assert caught.value.transient is False
            assert clock.sleeps == []
            assert len(vendor.token_requests) == 1
            assert vendor.api_requests == []


@pytest.mark.parametrize("status", [507, 520, 522, 524])
async def test_every_5xx_from_the_token_endpoint_is_transient(status: int) -> None:
    """The documented rule: a 5xx from the token endpoint is worth asking again."""
    clock = VirtualClock()
    vendor = Vendor(clock, token_steps=[reply(status)])
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with client_for(vendor, *layers, clock=clock) as client:
        r = await client.get("/v1/things")
    assert r.status_code == 200
    assert len(vendor.token_requests) == 2


async def test_waiters_on_a_timed_out_fetch_share_it_and_retry_together() -> None:
    """30 first calls wait on a fetch that hangs past fetch_timeout: they share the
    transient failure, Retry tries again, and only one more token request is made."""
    clock = VirtualClock()

    async def hang_first(request: httpx.Request) -> None:
        if len(vendor.token_requests) == 1:
            await anyio.sleep_forever()

    vendor = Vendor(clock, before_token=hang_first)
    layers = [
        Retry(max_attempts=3, backoff=ONE),
        AuthRefresh(provider(), origins=[API], fetch_timeout=0.05),
    ]
    statuses: list[int] = []
    async with client_for(vendor, *layers, clock=clock) as client:

        async def one() -> None:
            r = await client.get("/v1/things")
            statuses.append(r.status_code)
            assert r.extensions["resilience"].attempts == 1
            assert r.extensions["resilience"].delays == [1.0]

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(30):
                    tg.start_soon(one)
    assert statuses == [200] * 30
    assert len(vendor.token_requests) == 2


async def test_the_token_request_may_take_as_long_as_fetch_timeout() -> None:
    """The timeouts the token request carries to the transport do not undercut fetch_timeout."""
    clock = VirtualClock()
    vendor = Vendor(clock)
    layer = AuthRefresh(provider(), origins=[API], fetch_timeout=60.0)
    async with client_for(vendor, layer, clock=clock) as client:
        await client.get("/v1/things")
    timeouts = vendor.token_requests[0].extensions.get("timeout", {})
    for phase in ("connect", "read", "write", "pool"):
        limit = timeouts.get(phase)
        assert limit is None or limit >= 60.0, (phase, limit)


async def test_token_endpoint_failures_do_not_open_the_api_breaker() -> None:
    """A failing token endpoint says nothing about the API host: its breaker stays closed."""
    clock = VirtualClock()
    vendor = Vendor(clock, token_steps=[reply(503)] * 10)
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_calls=2, window_calls=10)
    async with client_for(
        vendor, breaker, AuthRefresh(provider(), origins=[API]), clock=clock
    ) as client:
        for _ in range(10):
            with pytest.raises(TokenFetchError):
                await client.get("/v1/things")
        try:
            r = await client.get("/v1/things")
        except CircuitOpenError:  # pragma: no cover - the failure this test looks for
            pytest.fail("the API breaker opened because of the token endpoint")
    assert r.status_code == 200
    assert len(vendor.token_requests) == 11


async def test_a_cancelled_waiter_leaves_the_fetch_and_the_lock_intact() -> None:
    """A call cancelled while it waits for another's fetch: the fetch still lands and is used."""
    clock = VirtualClock()
    release = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await release.wait()

    vendor = Vendor(clock, before_token=hold)
    results: list[int] = []
    scope = anyio.CancelScope()
    async with client_for(vendor, AuthRefresh(provider(), origins=[API]), clock=clock) as client:

        async def fetching() -> None:
            results.append((await client.get("/v1/things")).status_code)

        async def waiting() -> None:
            with scope:
                await client.get("/v1/things")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetching)
                await vendor.token_started.wait()
                tg.start_soon(waiting)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                release.set()
            results.append((await client.get("/v1/things")).status_code)
    assert scope.cancelled_caught
    assert results == [200, 200]
    assert len(vendor.token_requests) == 1


# -- secrets -----------------------------------------------------------------------------


async def test_rejected_api_key_does_not_show_in_the_errors_reprs() -> None:
    """With header='X-Api-Key', nothing reachable from the error shows the key in a repr."""
    key = "APIKEYVALUE-123"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": "Unauthorized"})

    layer = AuthRefresh(StaticToken(key), header="X-Api-Key", scheme=None)
    inner = httpx.MockTransport(handler)
    async with client_for(inner, layer, clock=VirtualClock()) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get("/v1/things")
    error = caught.value
    assert error.response is not None
    texts = [repr(error), str(error), repr(error.request.headers)]
    texts.append(repr(error.response.request.headers))
    assert all(key not in text for text in texts)
