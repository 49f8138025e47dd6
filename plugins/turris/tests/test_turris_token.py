"""The Turris token flow, against the simulator in-process and over real loopback HTTP."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from resilience_turris import TOKEN_PATH, TurrisToken
from resilience_turris.testing import simulator

import resilience
from resilience import TokenFetchError, TokenRefreshed
from resilience.testing import FaultPlan, VirtualClock, serve

pytestmark = pytest.mark.anyio

ID, SECRET = "api-client-1", "turris-secret-never-logged"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_token_over_loopback() -> None:
    """HTTP 201 with data.accessToken; the life is the JWT's exp minus iat (60 min)."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    async with serve(sim) as base_url:
        provider = TurrisToken(base_url=base_url, client_id=ID, client_secret=SECRET)
        async with httpx.AsyncClient() as http:
            token = await provider.fetch(http)
            check = await http.get(
                f"{base_url}/v1/auth/test-oauth",
                headers={"Authorization": f"Bearer {token.value}"},
            )
    assert token.expires_in == 3600
    assert check.status_code == 200
    assert check.json()["message"].startswith("If you see this")
    sent = json.loads(sim.requests_to("POST", TOKEN_PATH)[0].body)
    assert sent == {"clientId": ID, "clientSecret": SECRET}
    assert sim.requests_to("POST", TOKEN_PATH)[0].status == 201


async def test_preset_renews_five_minutes_early() -> None:
    """The Turris preset refreshes a 60-min token 5 minutes before expiry."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    events: list[object] = []
    auth = TurrisToken(client_id=ID, client_secret=SECRET, base_url="http://turris.test")
    pipeline = resilience.standard_pipeline("turris", auth=auth, clock=clock, hooks=[events.append])
    transport = resilience.ResilientTransport(pipeline, inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(base_url="http://turris.test", transport=transport) as client:
        await client.get("/v1/auth/test-oauth")
        clock.advance(3299)  # 54 min 59 s: still the first token
        await client.get("/v1/auth/test-oauth")
        clock.advance(2)  # 55 min 1 s: inside the last 5 minutes
        await client.get("/v1/auth/test-oauth")
    assert [e.trigger for e in events if isinstance(e, TokenRefreshed)] == [
        "initial",
        "proactive",
    ]
    assert all(r.status == 200 for r in sim.requests_to("GET", "/v1/auth/test-oauth"))


async def test_short_tokens_from_the_plan() -> None:
    """The life follows the JWT: a 10-minute plan token is not assumed to live 60."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET, plan=FaultPlan(token_ttl=600))
    provider = TurrisToken(client_id=ID, client_secret=SECRET, base_url="http://turris.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        token = await provider.fetch(http)
    assert token.expires_in == 600


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"clientId": ID, "clientSecret": "wrong"}, 401, "unauthorized"),
        ({"clientId": ID}, 400, "invalid_input"),
    ],
)
async def test_token_errors(body: dict[str, str], status: int, error_type: str) -> None:
    """Bad secret 401 unauthorized; missing field 400 invalid_input (with requestId)."""
    sim = simulator(clock=VirtualClock(), client_id=ID, client_secret=SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        answer = await http.post(f"http://turris.test{TOKEN_PATH}", json=body)
    assert answer.status_code == status
    assert answer.json()["errorType"] == error_type
    assert answer.json()["requestId"].startswith("dev-")


async def test_wrong_secret_is_a_permanent_fetch_error() -> None:
    """The provider's error names errorType and requestId, never the secret."""
    sim = simulator(clock=VirtualClock(), client_id=ID, client_secret=SECRET)
    provider = TurrisToken(client_id=ID, client_secret="nope-secret", base_url="http://turris.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    error = caught.value
    assert error.transient is False
    assert error.problem is not None
    assert error.problem.code == "unauthorized"
    assert error.problem.request_id is not None
    assert error.problem.request_id in str(error)
    assert "nope-secret" not in f"{error} {error!r} {provider!r}"


async def test_token_rate_limit_is_transient() -> None:
    """The 11th token request in a minute is rate_limit_exceeded: transient, hinted."""
    sim = simulator(clock=VirtualClock(), client_id=ID, client_secret=SECRET)
    provider = TurrisToken(client_id=ID, client_secret=SECRET, base_url="http://turris.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        for _ in range(10):
            await provider.fetch(http)
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    assert caught.value.transient is True
    assert caught.value.retry_after == 60


async def test_answer_shapes() -> None:
    """No exp: 60 minutes; an opaque token: 60 minutes; no accessToken: an error."""
    no_exp = f"{_b64({'alg': 'RS256'})}.{_b64({'sub': 'x'})}.sig"
    answers = [
        httpx.Response(201, json={"statusCode": 201, "data": {"accessToken": no_exp}}),
        httpx.Response(201, json={"statusCode": 201, "data": {"accessToken": "opaque"}}),
        httpx.Response(201, json={"statusCode": 201, "data": {}}),
        httpx.Response(201, json={"statusCode": 201, "data": "token"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    provider = TurrisToken(client_id=ID, client_secret=SECRET, token_url="https://t.test/jwt")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        assert (await provider.fetch(http)).expires_in == 3600
        assert (await provider.fetch(http)).expires_in == 3600
        for _ in range(2):
            with pytest.raises(TokenFetchError, match="accessToken"):
                await provider.fetch(http)


def test_repr_and_url() -> None:
    """The secret never shows; the URL is built from base_url, token_url or the path."""
    provider = TurrisToken(client_id=ID, client_secret=SECRET, base_url="https://t/")
    assert SECRET not in repr(provider)
    assert provider.url == "https://t/v1/auth/jwt"
    assert provider.token_endpoint == provider.url


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"client_id": ID, "client_secret": SECRET}, "base_url"),
        ({"client_id": ID, "client_secret": "", "base_url": "https://t"}, "client_secret"),
        ({"client_id": ID, "client_secret": 7, "base_url": "https://t"}, "client_secret"),
        ({"client_id": None, "client_secret": SECRET, "base_url": "https://t"}, "client_id"),
        ({"client_id": " ", "client_secret": SECRET, "base_url": "https://t"}, "client_id"),
        ({"client_id": ID, "client_secret": SECRET, "base_url": "not a url"}, "base_url"),
        ({"client_id": ID, "client_secret": SECRET, "base_url": "//t.example"}, "base_url"),
        ({"client_id": ID, "client_secret": SECRET, "token_url": "v1/auth/jwt"}, "token_url"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, object], named: str) -> None:
    """An empty secret, no client id, a base URL that is not one, or no base at all:
    a ConfigurationError naming the argument, never quoting the secret."""
    with pytest.raises(resilience.errors.ConfigurationError, match=named) as caught:
        TurrisToken(**kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(caught.value)


async def test_answer_without_token_names_the_request_id() -> None:
    """A 201 without ``data.accessToken``: the error names Turris's requestId."""
    rid = "dev-0b8f2c1e-4d7a-4e0b-9c3d-5a6b7c8d9e0f"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"statusCode": 201, "requestId": rid, "data": {}})

    provider = TurrisToken(client_id=ID, client_secret=SECRET, token_url="https://t.test/jwt")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    assert f"request_id={rid}" in str(caught.value)
    assert caught.value.problem is not None
    assert caught.value.problem.request_id == rid
    assert SECRET not in str(caught.value)
