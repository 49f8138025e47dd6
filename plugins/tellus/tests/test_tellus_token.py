"""The Tellus token flow, against the simulator in-process and over real loopback HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from resilience_tellus import TOKEN_PATH, TellusToken
from resilience_tellus.testing import simulator

import resilience
from resilience import TokenFetchError, TokenRefreshed
from resilience.testing import VirtualClock, serve

pytestmark = pytest.mark.anyio

ID = "operator-7"
SECRET = "tellus-secret-never-logged"


async def test_token_over_loopback() -> None:
    """A real HTTP round trip to the simulator served by uvicorn on 127.0.0.1."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    async with serve(sim) as base_url:
        provider = TellusToken(base_url=base_url, client_id=ID, client_secret=SECRET, clock=clock)
        async with httpx.AsyncClient() as http:
            token = await provider.fetch(http)
            check = await http.get(
                f"{base_url}/v1/operator/sites",
                headers={"Authorization": f"Bearer {token.value}"},
            )
    assert token.expires_in == 86_400
    assert token.obtained_at == clock.now()
    assert check.json()["code"] == 0
    request = sim.requests_to("POST", TOKEN_PATH)[0]
    assert json.loads(request.body) == {
        "client_id": ID,
        "client_secret": SECRET,
        "grant_type": "client_credentials",
    }


async def test_token_through_the_preset_over_loopback() -> None:
    """standard_pipeline("tellus", auth=TellusToken(...)) fetches once and attaches it."""
    clock = VirtualClock()
    sim = simulator(clock=clock, client_id=ID, client_secret=SECRET)
    events: list[object] = []
    async with serve(sim) as base_url:
        auth = TellusToken(client_id=ID, client_secret=SECRET, base_url=base_url)
        pipeline = resilience.standard_pipeline(
            "tellus", auth=auth, clock=clock, hooks=[events.append]
        )
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for _ in range(3):
                assert (await client.get("/v1/operator/sites")).status_code == 200
    assert sim.tokens_issued == 1
    refreshed = [e for e in events if isinstance(e, TokenRefreshed)]
    assert [e.trigger for e in refreshed] == ["initial"]


async def test_short_lived_tokens_are_refreshed_before_expiry() -> None:
    """With a 120-s token, the preset refreshes ahead of expiry: no 2002 is ever seen."""
    clock = VirtualClock()
    sim = simulator(
        clock=clock,
        client_id=ID,
        client_secret=SECRET,
        plan=resilience.testing.FaultPlan(token_ttl=120),
    )
    auth = TellusToken(client_id=ID, client_secret=SECRET, base_url="http://tellus.test")
    pipeline = resilience.standard_pipeline("tellus", auth=auth, clock=clock)
    transport = resilience.ResilientTransport(pipeline, inner=httpx.ASGITransport(app=sim))
    async with httpx.AsyncClient(base_url="http://tellus.test", transport=transport) as client:
        for _ in range(10):
            assert (await client.get("/v1/operator/sites")).status_code == 200
            clock.advance(50)
    assert sim.tokens_issued >= 4
    assert all(r.code == "0" for r in sim.requests_to("GET", "/v1/operator/sites"))


async def test_wrong_secret() -> None:
    """Wrong credentials: 2001 from Tellus, a permanent TokenFetchError without the secret."""
    sim = simulator(clock=VirtualClock(), client_id=ID, client_secret=SECRET)
    provider = TellusToken(client_id=ID, client_secret="wrong-one", base_url="http://tellus.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    error = caught.value
    assert isinstance(error, resilience.errors.AuthenticationError)
    assert error.transient is False
    assert error.problem is not None
    assert error.problem.code == "2001"
    assert "code=2001" in str(error)
    assert "wrong-one" not in f"{error} {error!r} {error.problem!r} {provider!r}"
    # The error does not hold the token request, whose body carries the secret.
    with pytest.raises(RuntimeError):
        error.request  # noqa: B018


async def test_error_without_a_token_does_not_hold_the_request() -> None:
    """A 200 without access_token: the error names the problem and holds no request."""
    provider = TellusToken(client_id=ID, client_secret=SECRET, token_url="https://t.test/tok")
    answer = httpx.MockTransport(lambda request: httpx.Response(200, json={"token_type": "x"}))
    async with httpx.AsyncClient(transport=answer) as http:
        with pytest.raises(TokenFetchError, match="no 'access_token'") as caught:
            await provider.fetch(http)
    with pytest.raises(RuntimeError):
        caught.value.request  # noqa: B018


async def test_token_rate_limit_is_transient() -> None:
    """The 11th token request in a minute gets 5001: transient, with its hint."""
    sim = simulator(clock=VirtualClock(), client_id=ID, client_secret=SECRET)
    provider = TellusToken(client_id=ID, client_secret=SECRET, base_url="http://tellus.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim)) as http:
        for _ in range(10):
            await provider.fetch(http)
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    assert caught.value.transient is True
    assert caught.value.retry_after == 60
    assert caught.value.problem is not None
    assert caught.value.problem.code == "5001"


async def test_answer_shapes() -> None:
    """The enveloped variant is accepted; an answer without a token is an error; a
    missing expires_in falls back to the JWT's exp, then 24 h."""
    answers = [
        httpx.Response(200, json={"code": 0, "message": "success", "data": {"access_token": "a"}}),
        httpx.Response(200, json={"code": 5001, "message": "Too many requests"}),
        httpx.Response(200, json={"token_type": "Bearer"}),
        httpx.Response(200, json={"access_token": "b", "expires_in": "soon"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    provider = TellusToken(client_id=ID, client_secret=SECRET, token_url="https://t.test/tok")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        first = await provider.fetch(http)
        assert (first.value, first.expires_in) == ("a", 86_400)
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
        assert caught.value.transient is True
        with pytest.raises(TokenFetchError, match="no 'access_token'"):
            await provider.fetch(http)
        last = await provider.fetch(http)
        assert last.expires_in == 86_400


def test_repr_and_url() -> None:
    """The secret never shows; the URL is built from base_url or token_url, and is
    the token endpoint AuthRefresh takes its origin from."""
    provider = TellusToken(client_id=ID, client_secret=SECRET, base_url="https://api.t/")
    assert SECRET not in repr(provider)
    assert SECRET not in str(provider)
    assert provider.url == "https://api.t/v1/operator/oauth/token"
    assert provider.token_endpoint == provider.url
    custom = TellusToken(client_id=ID, client_secret=SECRET, token_url="https://x/t")
    assert custom.url == "https://x/t"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"client_id": ID, "client_secret": SECRET}, "base_url"),
        ({"client_id": ID, "client_secret": "", "base_url": "https://api.t"}, "client_secret"),
        ({"client_id": ID, "client_secret": None, "base_url": "https://api.t"}, "client_secret"),
        ({"client_id": None, "client_secret": SECRET, "base_url": "https://api.t"}, "client_id"),
        ({"client_id": "", "client_secret": SECRET, "base_url": "https://api.t"}, "client_id"),
        ({"client_id": ID, "client_secret": SECRET, "base_url": "api.t"}, "base_url"),
        ({"client_id": ID, "client_secret": SECRET, "base_url": "ftp://api.t"}, "base_url"),
        ({"client_id": ID, "client_secret": SECRET, "base_url": 42}, "base_url"),
        ({"client_id": ID, "client_secret": SECRET, "token_url": "/v1/tok"}, "token_url"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, object], named: str) -> None:
    """An empty secret, no client id, a base URL that is not one, or no base at all
    (a path would be resolved against whatever host is being called): a
    ConfigurationError naming the argument, never quoting the secret."""
    with pytest.raises(resilience.errors.ConfigurationError, match=named) as caught:
        TellusToken(**kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(caught.value)


async def test_error_envelope_on_a_200_is_scrubbed() -> None:
    """A 200 carrying an error envelope that echoes the secret (in its message and
    in its details): the TokenFetchError, its problem and AuthRefresh's warning
    hold no trace of it."""
    echo = {
        "code": 2001,
        "message": f"client {ID} with secret {SECRET} is unknown",
        "details": {"field": "client_secret", "received": SECRET, "hint": [f"x{SECRET}x"]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            return httpx.Response(200, json=echo)
        return httpx.Response(200, json={"code": 0, "data": []})

    provider = TellusToken(client_id=ID, client_secret=SECRET, base_url="http://tellus.test")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(TokenFetchError) as direct:
            await provider.fetch(http)
    problem = direct.value.problem
    assert problem is not None
    assert problem.code == "2001"
    texts = [str(direct.value), repr(direct.value), repr(problem), repr(problem.details)]
    assert not any(SECRET in text for text in texts), texts

    pipeline = resilience.Pipeline(
        [resilience.AuthRefresh(provider)], classifier="tellus", clock=VirtualClock()
    )
    transport = resilience.ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(base_url="http://tellus.test", transport=transport) as client:
        with pytest.raises(TokenFetchError) as through:
            await client.get("/v1/operator/sites")
    assert through.value.problem is not None
    assert SECRET not in f"{through.value} {through.value!r} {through.value.problem!r}"
