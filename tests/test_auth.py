"""AuthRefresh: attach, proactive and reactive refresh, single-flight, failures, cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import attrs
import httpx
import pytest

from resilience import (
    Action,
    AuthRefresh,
    ExponentialBackoff,
    OAuth2ClientCredentials,
    Retry,
    StaticToken,
    Token,
    TokenFetchError,
    TokenRefreshed,
)
from resilience.errors import AuthenticationError
from resilience.testing import ClosingStream, VirtualClock, reply, through

pytestmark = pytest.mark.anyio

API = "https://api.example.test"
TOKEN_URL = "https://auth.example.test/oauth2/token"
CLIENT_ID = "client-7"
SECRET = "client-secret-value"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")

Hook = Callable[[httpx.Request], Awaitable[None]]
TokenStep = httpx.Response | Exception


@attrs.define(eq=False)
class FakeVendor:
    """A token endpoint and an API behind one inner transport.

    The token endpoint issues ``tok-1``, ``tok-2``, ...; each new token revokes the
    previous ones. The API answers 200 to a current bearer token and 401 otherwise.
    ``token_failures`` are answered (or raised) before any token is issued;
    ``before_token`` / ``before_api`` are awaited first, to hold a request.
    """

    expires_in: float | None = 3600.0
    token_failures: list[TokenStep] = attrs.field(factory=list)
    before_token: Hook | None = None
    before_api: Hook | None = None
    reject_all: bool = False
    issued: int = 0
    valid: set[str] = attrs.field(factory=set)
    token_requests: list[httpx.Request] = attrs.field(factory=list)
    api_requests: list[httpx.Request] = attrs.field(factory=list)
    responses: list[httpx.Response] = attrs.field(factory=list)
    token_started: anyio.Event = attrs.field(factory=anyio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.test":
            response = await self._token(request)
        else:
            response = await self._api(request)
        self.responses.append(response)
        return response

    async def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        self.token_started.set()
        if self.before_token is not None:
            await self.before_token(request)
        if self.token_failures:
            step = self.token_failures.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        self.issued += 1
        value = f"tok-{self.issued}"
        self.valid = {value}
        body: dict[str, Any] = {"access_token": value, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return reply(200, json=body)

    async def _api(self, request: httpx.Request) -> httpx.Response:
        self.api_requests.append(request)
        if self.before_api is not None:
            await self.before_api(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.reject_all or bearer not in self.valid:
            return reply(401, json={"message": "Unauthorized"})
        return reply(200, json={"ok": True})

    def unclosed(self) -> list[httpx.Response]:
        """Responses whose body stream was never closed."""
        return [
            r for r in self.responses if isinstance(r.stream, ClosingStream) and not r.stream.closed
        ]


def provider() -> OAuth2ClientCredentials:
    """The client-credentials provider every test uses."""
    return OAuth2ClientCredentials(TOKEN_URL, CLIENT_ID, SECRET)


def make_client(
    fake: FakeVendor | httpx.AsyncBaseTransport,
    *layers: Any,
    clock: VirtualClock,
    events: list[Any] | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An AsyncClient on the API, through ``Pipeline(layers)``, over ``fake``."""
    hooks = [events.append] if events is not None else []
    inner = fake if isinstance(fake, httpx.AsyncBaseTransport) else httpx.MockTransport(fake)
    transport = through(inner, *layers, clock=clock, hooks=hooks, **kwargs)
    return httpx.AsyncClient(base_url=API, transport=transport)


def refreshes(events: list[Any]) -> list[str]:
    """The triggers of the TokenRefreshed events seen."""
    return [e.trigger for e in events if isinstance(e, TokenRefreshed)]


# -- attaching ---------------------------------------------------------------------------


async def test_first_call_fetches_and_attaches_the_token() -> None:
    """The first call fetches a token, sends it as a bearer, and succeeds."""
    fake, clock = FakeVendor(), VirtualClock()
    events: list[Any] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:
        r = await client.get("/v1/things")
    assert r.status_code == 200
    assert [req.headers["authorization"] for req in fake.api_requests] == ["Bearer tok-1"]
    assert len(fake.token_requests) == 1
    assert r.extensions["resilience"].attempts == 1
    assert refreshes(events) == ["initial"]
    assert events[0] == TokenRefreshed(trigger="initial", expires_in=3600.0)
    assert fake.unclosed() == []


async def test_the_callers_request_is_not_changed() -> None:
    """The token goes on a copy: the caller's request object never holds it."""
    fake = FakeVendor()
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock()
    ) as client:
        request = client.build_request("POST", "/v1/things", json={"a": 1})
        r = await client.send(request)
    assert r.status_code == 200
    assert "authorization" not in request.headers
    sent = fake.api_requests[0]
    assert sent.headers["authorization"] == "Bearer tok-1"
    assert sent.content == b'{"a":1}'


async def test_header_and_scheme_are_configurable() -> None:
    """A bare API key in its own header: scheme=None sends the token alone."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    layer = AuthRefresh(StaticToken("key-123"), header="X-Api-Key", scheme=None)
    async with make_client(httpx.MockTransport(handler), layer, clock=VirtualClock()) as client:
        await client.get("/v1/things")
    assert seen[0].headers["x-api-key"] == "key-123"
    assert "authorization" not in seen[0].headers


async def test_token_request_bypasses_the_layers_and_keeps_the_transport_open() -> None:
    """The token request goes through the inner transport only, which stays open."""
    fake = FakeVendor()
    seen_by_layer: list[str] = []

    @attrs.frozen
    class Spy:
        def bind(self, env: Any) -> Any:
            async def handler(request: httpx.Request, call: Any, call_next: Any) -> Any:
                seen_by_layer.append(request.url.host)
                return await call_next(request, call)

            return handler

    class Inner(httpx.MockTransport):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    inner = Inner(fake)
    client = make_client(
        inner, Spy(), AuthRefresh(provider(), origins=[API]), Spy(), clock=VirtualClock()
    )
    r = await client.get("/v1/things")
    assert r.status_code == 200
    assert len(fake.token_requests) == 1
    assert seen_by_layer == ["api.example.test", "api.example.test"]
    assert r.extensions["resilience"].attempts == 1
    assert not inner.closed
    await client.aclose()
    assert inner.closed


async def test_provider_may_name_its_endpoint_by_path() -> None:
    """A relative token URL resolves against the first origin named (fixed when
    the layer is bound, never the request's)."""
    seen: list[str] = []

    @attrs.frozen
    class PathProvider:
        async def fetch(self, http: httpx.AsyncClient) -> Token:
            r = await http.post("/v1/auth/jwt", json={})
            seen.append(str(r.request.url))
            return Token(r.json()["token"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth/jwt":
            return httpx.Response(201, json={"token": "t"})
        return httpx.Response(200)

    layer = AuthRefresh(PathProvider(), origins=[API])
    async with make_client(httpx.MockTransport(handler), layer, clock=VirtualClock()) as client:
        assert (await client.get("/v1/things")).status_code == 200
    assert seen == ["https://api.example.test/v1/auth/jwt"]


# -- proactive refresh -----------------------------------------------------------------


async def test_proactive_refresh_exactly_at_the_skew_boundary() -> None:
    """A 3600 s token with skew 60: no fetch just before 3540 s, a fetch at 3540 s."""
    fake, clock = FakeVendor(), VirtualClock()
    events: list[Any] = []
    layer = AuthRefresh(provider(), origins=[API], skew=60.0)
    async with make_client(fake, layer, clock=clock, events=events) as client:
        await client.get("/v1/things")
        clock.advance(3539.5)
        await client.get("/v1/things")
        assert len(fake.token_requests) == 1
        clock.advance(0.5)  # now exactly 3540.0
        await client.get("/v1/things")
        assert len(fake.token_requests) == 2
        await client.get("/v1/things")
    assert len(fake.token_requests) == 2
    assert [r.headers["authorization"] for r in fake.api_requests] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
        "Bearer tok-2",
    ]
    assert refreshes(events) == ["initial", "proactive"]


async def test_short_lived_token_refreshes_at_half_its_life() -> None:
    """A token living less than twice the skew is refreshed at half its life, not on every call."""
    fake, clock = FakeVendor(expires_in=30.0), VirtualClock()
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API], skew=60.0), clock=clock
    ) as client:
        for _ in range(5):
            await client.get("/v1/things")
        clock.advance(14.5)
        await client.get("/v1/things")
        assert len(fake.token_requests) == 1
        clock.advance(0.5)
        await client.get("/v1/things")
        await client.get("/v1/things")
    assert len(fake.token_requests) == 2
    assert AuthRefresh(provider(), origins=[API], skew=60.0).refresh_after(30.0) == 15.0
    assert AuthRefresh(provider(), origins=[API], skew=60.0).refresh_after(3600.0) == 3540.0
    assert AuthRefresh(provider(), origins=[API]).refresh_after(None) == float("inf")


async def test_token_without_expiry_is_fetched_once() -> None:
    """A token with no expires_in is never refreshed proactively."""
    fake, clock = FakeVendor(expires_in=None), VirtualClock()
    async with make_client(fake, AuthRefresh(provider(), origins=[API]), clock=clock) as client:
        await client.get("/v1/things")
        clock.advance(10**9)
        await client.get("/v1/things")
    assert len(fake.token_requests) == 1


async def test_others_keep_the_valid_token_while_a_proactive_refresh_runs() -> None:
    """During a proactive refresh, other calls use the still-valid token without waiting."""
    fake, clock = FakeVendor(), VirtualClock()
    release = anyio.Event()
    async with make_client(fake, AuthRefresh(provider(), origins=[API]), clock=clock) as client:
        await client.get("/v1/things")
        clock.advance(3550)

        async def hold(request: httpx.Request) -> None:
            await release.wait()

        fake.before_token = hold
        fake.token_started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/v1/things")
            await fake.token_started.wait()
            r = await client.get("/v1/things")  # does not wait for the refresh
            assert r.status_code == 200
            release.set()
    assert len(fake.token_requests) == 2
    assert [r.headers["authorization"] for r in fake.api_requests] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


async def test_failed_proactive_refresh_keeps_the_valid_token() -> None:
    """A proactive refresh that fails is not the call's failure while the token lasts."""
    fake, clock = FakeVendor(), VirtualClock()
    events: list[Any] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:
        await client.get("/v1/things")
        clock.advance(3550)
        fake.token_failures = [reply(503)]
        assert (await client.get("/v1/things")).status_code == 200
        assert (await client.get("/v1/things")).status_code == 200  # no new fetch yet
        assert len(fake.token_requests) == 2
        clock.advance(5)
        assert (await client.get("/v1/things")).status_code == 200
    assert len(fake.token_requests) == 3
    assert refreshes(events) == ["initial", "proactive"]
    assert fake.api_requests[-1].headers["authorization"] == "Bearer tok-2"


async def test_expired_token_fails_when_the_refresh_fails() -> None:
    """Past expiry the old token is not used: a failed fetch fails the call."""
    fake, clock = FakeVendor(), VirtualClock()
    async with make_client(fake, AuthRefresh(provider(), origins=[API]), clock=clock) as client:
        await client.get("/v1/things")
        clock.advance(3600)
        fake.token_failures = [reply(503)]
        with pytest.raises(TokenFetchError):
            await client.get("/v1/things")
    assert len(fake.api_requests) == 1


# -- reactive refresh --------------------------------------------------------------------


async def test_rejected_token_is_refreshed_and_the_request_replayed() -> None:
    """A 401 closes the response, refreshes once, replays once, and succeeds."""
    fake, clock = FakeVendor(), VirtualClock()
    events: list[Any] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:
        await client.get("/v1/things")
        fake.valid.clear()  # the server revokes tok-1
        r = await client.get("/v1/things")
    assert r.status_code == 200
    report = r.extensions["resilience"]
    assert report.attempts == 2
    assert [v.action for v in report.verdicts] == [Action.REFRESH_AUTH, Action.ACCEPT]
    assert [r.headers["authorization"] for r in fake.api_requests[1:]] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]
    assert refreshes(events) == ["initial", "rejected"]
    assert fake.unclosed() == []


async def test_replay_is_not_a_retry() -> None:
    """With Retry(max_attempts=1) above, the replay still happens and no delay is spent."""
    fake, clock = FakeVendor(), VirtualClock()
    layers = [Retry(max_attempts=1, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with make_client(fake, *layers, clock=clock) as client:
        await client.get("/v1/things")
        fake.valid.clear()
        r = await client.get("/v1/things")
    assert r.status_code == 200
    assert r.extensions["resilience"].attempts == 2
    assert r.extensions["resilience"].delays == []
    assert clock.sleeps == []


async def test_second_rejection_raises_authentication_error() -> None:
    """Rejected, refreshed, rejected again: AuthenticationError, and Retry does not retry it."""
    fake, clock = FakeVendor(reject_all=True), VirtualClock()
    layers = [Retry(max_attempts=5, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with make_client(fake, *layers, clock=clock) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get("/v1/things")
    error = caught.value
    assert not isinstance(error, TokenFetchError)
    assert isinstance(error, httpx.HTTPStatusError)
    assert error.problem is not None
    assert error.problem.status == 401
    assert error.response is not None
    assert error.response.status_code == 401
    assert error.report.attempts == 2
    assert [v.action for v in error.report.verdicts] == [Action.REFRESH_AUTH] * 2
    assert len(fake.token_requests) == 2
    assert clock.sleeps == []
    assert fake.unclosed() == []


async def test_second_rejection_returns_the_response_without_raise_on_failure() -> None:
    """With raise_on_failure=False the final 401 is returned."""
    fake = FakeVendor(reject_all=True)
    layer = AuthRefresh(provider(), origins=[API])
    async with make_client(fake, layer, clock=VirtualClock(), raise_on_failure=False) as client:
        r = await client.get("/v1/things")
    assert r.status_code == 401
    assert r.extensions["resilience"].attempts == 2


async def test_rejected_stale_token_replays_without_fetching() -> None:
    """A 401 for a token another call already replaced: replay with the new one, no fetch."""
    fake, clock = FakeVendor(), VirtualClock()
    events: list[Any] = []
    arrived, release = anyio.Event(), anyio.Event()

    async def hold_first(request: httpx.Request) -> None:
        if request.headers.get("x-hold"):
            arrived.set()
            await release.wait()

    fake.before_api = hold_first
    results: list[httpx.Response] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=clock, events=events
    ) as client:
        await client.get("/v1/things")

        async def held_call() -> None:
            results.append(await client.get("/v1/things", headers={"x-hold": "1"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held_call)
            await arrived.wait()  # the held call has sent tok-1
            fake.valid.clear()
            r = await client.get("/v1/things")  # 401, refresh to tok-2, replay
            assert r.status_code == 200
            release.set()  # the held call now gets 401 for tok-1
    assert results[0].status_code == 200
    assert results[0].extensions["resilience"].attempts == 2
    assert len(fake.token_requests) == 2
    assert refreshes(events) == ["initial", "rejected"]
    assert fake.api_requests[-1].headers["authorization"] == "Bearer tok-2"


async def test_unreplayable_body_is_not_replayed_but_the_token_is_refreshed() -> None:
    """A streamed body cannot go twice: the 401 surfaces, and the next call has a new token."""
    fake = FakeVendor()

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock()
    ) as client:
        await client.get("/v1/things")
        fake.valid.clear()
        with pytest.raises(AuthenticationError) as caught:
            await client.post("/v1/things", content=body())
        assert caught.value.report.attempts == 1
        assert (await client.get("/v1/things")).status_code == 200
    assert len(fake.token_requests) == 2
    assert fake.api_requests[-1].headers["authorization"] == "Bearer tok-2"


# -- single-flight -----------------------------------------------------------------------


async def test_first_fetch_is_single_flight() -> None:
    """1,000 concurrent first calls: one token request."""
    fake = FakeVendor()
    release = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await release.wait()

    fake.before_token = hold
    statuses: list[int] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock()
    ) as client:

        async def one() -> None:
            statuses.append((await client.get("/v1/things")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert statuses == [200] * 1000
    assert len(fake.token_requests) == 1


async def test_thousand_rejections_cause_one_refresh() -> None:
    """1,000 calls all rejected with the same stale token: exactly one token request."""
    fake = FakeVendor()
    events: list[Any] = []
    everyone = anyio.Event()
    stale: list[httpx.Request] = []

    async def gather_stale(request: httpx.Request) -> None:
        if request.headers["authorization"] == "Bearer tok-1":
            stale.append(request)
            if len(stale) == 1000:
                everyone.set()
            await everyone.wait()

    reports: list[Any] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock(), events=events
    ) as c:
        await c.get("/v1/things")
        fake.valid.clear()
        fake.before_api = gather_stale
        stale.clear()

        async def one() -> None:
            r = await c.get("/v1/things")
            assert r.status_code == 200
            reports.append(r.extensions["resilience"])

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(one)
    assert len(stale) == 1000
    assert len(fake.token_requests) == 2  # the first token, and one refresh
    assert refreshes(events) == ["initial", "rejected"]
    assert [r.attempts for r in reports] == [2] * 1000
    assert fake.unclosed() == []


async def test_waiters_share_a_failed_fetch() -> None:
    """Calls that waited for a fetch that failed share its failure; the next call asks again."""
    fake = FakeVendor(token_failures=[reply(400, json={"error": "invalid_client"})])
    release = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await release.wait()

    fake.before_token = hold
    errors: list[BaseException] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock()
    ) as client:

        async def one() -> None:
            try:
                await client.get("/v1/things")
            except TokenFetchError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert len(fake.token_requests) == 1
        assert len(errors) == 100
        assert len({id(e) for e in errors}) == 100  # each caller its own error
        assert (await client.get("/v1/things")).status_code == 200
    assert len(fake.token_requests) == 2


# -- fetch failures ----------------------------------------------------------------------


def _failure_cases() -> list[Any]:
    return [
        pytest.param(
            httpx.ConnectError("connection refused"),
            "token request to auth.example.test failed: ConnectError",
            True,
            id="network",
        ),
        pytest.param(
            reply(401, json={"error": "invalid_client"}),
            "token endpoint auth.example.test answered HTTP 401: code=invalid_client",
            False,
            id="endpoint-4xx",
        ),
        pytest.param(
            reply(503, content="busy"),
            "token endpoint auth.example.test answered HTTP 503",
            True,
            id="endpoint-5xx",
        ),
        pytest.param(
            reply(200, content="<html>"), "its body is not a JSON object", False, id="not-json"
        ),
        pytest.param(
            reply(200, json={"token_type": "Bearer"}),
            "its body has no 'access_token'",
            False,
            id="no-token",
        ),
        pytest.param(
            reply(200, json={"access_token": 12345}),
            "'access_token' is not a non-empty string",
            False,
            id="token-not-str",
        ),
        pytest.param(
            reply(200, json={"access_token": "t", "expires_in": -5}),
            "'expires_in' is not a non-negative number",
            False,
            id="negative-life",
        ),
        pytest.param(
            reply(200, json={"access_token": "t", "expires_in": "soon"}),
            "'expires_in' is not a non-negative number",
            False,
            id="life-not-number",
        ),
        pytest.param(
            reply(200, json=["access_token"]),
            "its body is not a JSON object",
            False,
            id="not-an-object",
        ),
    ]


@pytest.mark.parametrize(("step", "reason", "transient"), _failure_cases())
async def test_fetch_failure_raises_and_the_next_call_tries_again(
    step: TokenStep, reason: str, transient: bool
) -> None:
    """Each kind of fetch failure is an AuthenticationError naming why; the next call works."""
    fake = FakeVendor(token_failures=[step])
    events: list[Any] = []
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock(), events=events
    ) as c:
        with pytest.raises(AuthenticationError) as caught:
            await c.get("/v1/things")
        error = caught.value
        assert isinstance(error, TokenFetchError)
        assert reason in str(error)
        assert "could not get an access token: " in str(error)
        assert error.transient is transient
        assert error.request.url == httpx.URL(API + "/v1/things")
        assert error.report.attempts == 0
        assert error.problem is not None
        assert fake.api_requests == []
        assert refreshes(events) == []
        r = await c.get("/v1/things")
    assert r.status_code == 200
    assert len(fake.token_requests) == 2
    assert refreshes(events) == ["initial"]
    assert fake.unclosed() == []


async def test_provider_bug_is_an_authentication_error() -> None:
    """A provider that raises something else, or returns no Token, fails the call cleanly."""

    @attrs.frozen
    class Broken:
        result: Any

        async def fetch(self, http: httpx.AsyncClient) -> Token:
            if isinstance(self.result, Exception):
                raise self.result
            return self.result  # type: ignore[no-any-return]

    fake = FakeVendor()
    for broken, reason in [
        (Broken(KeyError("x")), "Broken raised KeyError"),
        (Broken("not a token"), "Broken raised TypeError"),
    ]:
        async with make_client(fake, AuthRefresh(broken), clock=VirtualClock()) as client:
            with pytest.raises(TokenFetchError, match=reason) as caught:
                await client.get("/v1/things")
        assert caught.value.transient is False


async def test_transient_fetch_failure_is_retried_by_retry_above() -> None:
    """A 503 from the token endpoint is a RETRY: Retry above waits and tries again."""
    fake, clock = (
        FakeVendor(token_failures=[reply(503, headers={"Retry-After": "7"})]),
        VirtualClock(),
    )
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with make_client(fake, *layers, clock=clock) as client:
        r = await client.get("/v1/things")
    assert r.status_code == 200
    assert clock.sleeps == [7.0]
    assert len(fake.token_requests) == 2


async def test_permanent_fetch_failure_is_not_retried() -> None:
    """invalid_client will not change on a retry: no sleep, one token request."""
    fake = FakeVendor(token_failures=[reply(400, json={"error": "invalid_client"})])
    clock = VirtualClock()
    layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(provider(), origins=[API])]
    async with make_client(fake, *layers, clock=clock) as client:
        with pytest.raises(TokenFetchError) as caught:
            await client.get("/v1/things")
    assert caught.value.problem is not None
    assert caught.value.problem.code == "invalid_client"
    assert caught.value.problem.status == 400
    assert clock.sleeps == []
    assert len(fake.token_requests) == 1


async def test_a_hung_token_endpoint_times_out_and_is_retried() -> None:
    """A token endpoint that never answers is cut off after fetch_timeout (a real
    cancel scope: kept tiny), as a transient failure that Retry above tries again."""
    hang = anyio.Event()

    async def hang_once(request: httpx.Request) -> None:
        if len(fake.token_requests) == 1:
            await hang.wait()  # never set: the first token request hangs

    fake, clock = FakeVendor(before_token=hang_once), VirtualClock()
    layers = [
        Retry(max_attempts=3, backoff=ONE),
        AuthRefresh(provider(), origins=[API], fetch_timeout=0.05),
    ]
    async with make_client(fake, *layers, clock=clock) as client:
        with anyio.fail_after(5):
            r = await client.get("/v1/things")
    assert r.status_code == 200
    assert len(fake.token_requests) == 2
    assert clock.sleeps == [1.0]
    assert [v.reason for v in r.extensions["resilience"].verdicts] == ["accept"]


async def test_a_hung_token_endpoint_without_retry_names_the_timeout() -> None:
    """Without Retry, the timed-out fetch surfaces as a transient TokenFetchError."""

    async def hang(request: httpx.Request) -> None:
        await anyio.Event().wait()

    fake, clock = FakeVendor(before_token=hang), VirtualClock()
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API], fetch_timeout=0.05), clock=clock
    ) as client:
        with (
            anyio.fail_after(5),
            pytest.raises(TokenFetchError, match="TimeoutException") as caught,
        ):
            await client.get("/v1/things")
    assert caught.value.transient is True
    assert fake.api_requests == []


def test_fetch_timeout_must_be_positive() -> None:
    """A zero or negative fetch_timeout fails at construction, naming the argument."""
    with pytest.raises(ValueError, match="fetch_timeout"):
        AuthRefresh(provider(), origins=[API], fetch_timeout=0)


# -- cancellation ------------------------------------------------------------------------


async def test_cancelled_fetch_releases_the_lock_and_caches_nothing() -> None:
    """Cancel a call mid-fetch: nothing is cached, and a later call fetches again."""
    fake = FakeVendor()
    events: list[Any] = []
    never = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await never.wait()

    fake.before_token = hold
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock(), events=events
    ) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.get, "/v1/things")
            await fake.token_started.wait()
            tg.cancel_scope.cancel()
        assert len(fake.token_requests) == 1
        assert refreshes(events) == []
        fake.before_token = None
        with anyio.fail_after(5):
            r = await c.get("/v1/things")
    assert r.status_code == 200
    assert len(fake.token_requests) == 2
    assert refreshes(events) == ["initial"]
    assert fake.api_requests[0].headers["authorization"] == "Bearer tok-1"


async def test_waiter_takes_over_when_the_fetching_call_is_cancelled() -> None:
    """A call waiting for a fetch whose caller is cancelled fetches by itself."""
    fake = FakeVendor()
    never = anyio.Event()

    async def hold(request: httpx.Request) -> None:
        await never.wait()

    fake.before_token = hold
    results: list[httpx.Response] = []
    scope = anyio.CancelScope()
    async with make_client(
        fake, AuthRefresh(provider(), origins=[API]), clock=VirtualClock()
    ) as client:

        async def cancelled_call() -> None:
            with scope:
                await client.get("/v1/things")

        async def waiting_call() -> None:
            results.append(await client.get("/v1/things"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled_call)
                await fake.token_started.wait()
                tg.start_soon(waiting_call)
                await anyio.wait_all_tasks_blocked()
                fake.before_token = None
                scope.cancel()
    assert [r.status_code for r in results] == [200]
    assert len(fake.token_requests) == 2


async def test_a_plugins_own_authentication_error_keeps_its_message() -> None:
    """A provider raising AuthenticationError: its message is kept; a 503 problem is transient."""
    from resilience import Problem

    @attrs.frozen
    class PluginFlow:
        status: int

        async def fetch(self, http: httpx.AsyncClient) -> Token:
            problem = Problem(vendor="acme", status=self.status, code="busy")
            raise AuthenticationError("acme token request refused", problem=problem)

    for status, sleeps in [(503, [1.0, 2.0]), (401, [])]:
        clock = VirtualClock()
        layers = [Retry(max_attempts=3, backoff=ONE), AuthRefresh(PluginFlow(status))]
        async with make_client(FakeVendor(), *layers, clock=clock) as client:
            with pytest.raises(TokenFetchError) as caught:
                await client.get("/v1/things")
        assert "could not get an access token: acme token request refused" in str(caught.value)
        assert caught.value.problem is not None
        assert caught.value.problem.code == "busy"
        assert clock.sleeps == sleeps
