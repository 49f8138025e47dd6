"""Token providers, the token-response helper, Secret, and configuration checks."""

from __future__ import annotations

import base64
import pickle
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from resilience import (
    AuthRefresh,
    OAuth2ClientCredentials,
    Pipeline,
    ResilientTransport,
    Secret,
    StaticToken,
    Token,
    TokenFetchError,
    TokenProvider,
    token_from_response,
)
from resilience.errors import AuthenticationError, ConfigurationError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

TOKEN_URL = "https://auth.example.test/oauth2/token"
SECRET = "p@ss word/é"


def token_endpoint(
    status: int = 200, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A token endpoint answering ``body`` (a default token when None); requests kept."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600}
        return httpx.Response(status, json=answer if body is None else body, headers=headers)

    return httpx.MockTransport(handler), seen


def answer(status: int, body: Any = None, *, content: bytes | None = None, **kw: Any) -> Any:
    """A read response to a POST on the token URL."""
    request = httpx.Request("POST", TOKEN_URL)
    if content is not None:
        return httpx.Response(status, content=content, request=request, **kw)
    return httpx.Response(status, json=body, request=request, **kw)


# -- OAuth2ClientCredentials -------------------------------------------------------------


async def test_client_credentials_request_shape() -> None:
    """RFC 6749 §4.4: POST form body, Basic auth of the form-urlencoded id and secret."""
    transport, seen = token_endpoint()
    provider = OAuth2ClientCredentials(TOKEN_URL, "client:id", SECRET, scope=["read", "write"])
    async with httpx.AsyncClient(transport=transport) as http:
        token = await provider.fetch(http)
    assert token == Token("tok-1", 3600)
    (request,) = seen
    assert request.method == "POST"
    assert request.url == httpx.URL(TOKEN_URL)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["read write"],
    }
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "client%3Aid:p%40ss+word%2F%C3%A9"


async def test_client_credentials_without_scope_sends_none() -> None:
    """No scope given: the form holds grant_type alone."""
    transport, seen = token_endpoint()
    async with httpx.AsyncClient(transport=transport) as http:
        await OAuth2ClientCredentials(TOKEN_URL, "id", "secret").fetch(http)
    assert parse_qs(seen[0].content.decode()) == {"grant_type": ["client_credentials"]}


async def test_client_credentials_stamps_the_token_with_its_clock() -> None:
    """clock= stamps obtained_at, so a provider used alone knows when its token expires."""
    transport, _ = token_endpoint()
    provider = OAuth2ClientCredentials(TOKEN_URL, "id", "secret", clock=VirtualClock(start=100.0))
    async with httpx.AsyncClient(transport=transport) as http:
        token = await provider.fetch(http)
    assert (token.obtained_at, token.expires_at) == (100.0, 3700.0)


async def test_client_credentials_error_answer() -> None:
    """An RFC 6749 §5.2 error names the status and the code, never the description."""
    body = {"error": "invalid_client", "error_description": "secret p@ss is wrong"}
    transport, _ = token_endpoint(401, body)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError) as caught:
            await OAuth2ClientCredentials(TOKEN_URL, "id", "p@ss").fetch(http)
    error = caught.value
    assert isinstance(error, AuthenticationError)
    assert (
        str(error)
        == "oauth2 token endpoint auth.example.test answered HTTP 401: code=invalid_client"
    )
    assert error.problem is not None
    assert (error.problem.status, error.problem.code) == (401, "invalid_client")
    assert not error.transient
    assert "p@ss" not in repr(error.problem)


def test_providers_satisfy_the_protocol_and_hide_secrets() -> None:
    """Both core providers are TokenProviders; their reprs hide the secret."""
    oauth = OAuth2ClientCredentials(TOKEN_URL, "id", "very-secret", scope="a b")
    static = StaticToken("static-token-value")
    assert isinstance(oauth, TokenProvider)
    assert isinstance(static, TokenProvider)
    assert repr(oauth) == (
        "OAuth2ClientCredentials(token_url='https://auth.example.test/oauth2/token', "
        "client_id='id', client_secret=Secret('***'), scope='a b')"
    )
    assert repr(static) == "StaticToken(value=Secret('***'))"
    assert oauth.client_secret.reveal() == "very-secret"


async def test_static_token() -> None:
    """StaticToken hands out the same token, with no expiry."""
    provider = StaticToken("abc", clock=VirtualClock(start=5.0))
    async with httpx.AsyncClient() as http:
        token = await provider.fetch(http)
    assert (token.value, token.expires_in, token.obtained_at) == ("abc", None, 5.0)
    assert token.expires_at is None


# -- token_from_response -----------------------------------------------------------------


def test_token_from_a_nested_201_answer() -> None:
    """Turris-like: 201, token at data.accessToken, no life given: the default applies."""
    response = answer(201, {"statusCode": 201, "data": {"accessToken": "jwt"}})
    token = token_from_response(
        response,
        access_token_path="data.accessToken",
        expires_in_path=None,
        default_expires_in=3600,
    )
    assert token == Token("jwt", 3600)


def test_token_life_may_be_a_numeric_string_or_absent() -> None:
    """expires_in "3600" is read as 3600; no expires_in means no expiry."""
    assert token_from_response(answer(200, {"access_token": "t", "expires_in": "3600"})) == Token(
        "t", 3600.0
    )
    assert token_from_response(answer(200, {"access_token": "t"})) == Token("t", None)
    assert token_from_response(answer(200, {"access_token": " t "})).value == "t"


@pytest.mark.parametrize(
    ("body", "code", "request_id"),
    [
        ({"code": 2001, "message": "invalid client credentials"}, "2001", None),
        ({"errorType": "unauthorized", "requestId": "dev-42"}, "unauthorized", "dev-42"),
        ({"error": "has spaces, so free text"}, "401", None),
        ({"error": True}, "401", None),
        (None, "401", None),
    ],
)
def test_error_codes_are_quoted_only_when_they_look_like_codes(
    body: Any, code: str, request_id: str | None
) -> None:
    """Tellus's code, Turris's errorType and request id; free text never."""
    response = answer(401, content=b"<html>") if body is None else answer(401, body)
    with pytest.raises(TokenFetchError) as caught:
        token_from_response(response, vendor="acme")
    problem = caught.value.problem
    assert problem is not None
    assert (problem.vendor, problem.status, problem.code) == ("acme", 401, code)
    assert problem.request_id == request_id
    assert "free text" not in str(caught.value)


def test_rate_limited_token_endpoint_is_transient_with_its_hint() -> None:
    """429 with Retry-After: transient, and the wait is kept."""
    response = answer(429, {"error": "slow_down"}, headers={"Retry-After": "30"})
    with pytest.raises(TokenFetchError) as caught:
        token_from_response(response)
    assert caught.value.transient
    assert caught.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"access_token": "a\\r\\nb"}', "has characters no HTTP header can carry"),
        ('{"access_token": "tok-é"}'.encode(), "has characters no HTTP header can carry"),
        (b'{"access_token": ""}', "is not a non-empty string"),
        (b'{"access_token": "t", "expires_in": 1e400}', "not a non-negative number"),
        (b'{"access_token": "t", "expires_in": true}', "not a non-negative number"),
        (b'{"access_token": "t", "expires_in": "1e3"}', "not a non-negative number"),
        (b"[[[[[[[[[[" * 100_000, "its body is not a JSON object"),
    ],
)
def test_bad_token_answers(content: bytes, reason: str) -> None:
    """Tokens a header cannot carry, absurd lives and broken JSON are refused with the reason."""
    with pytest.raises(TokenFetchError, match=reason):
        token_from_response(answer(200, content=content))


def test_answer_without_a_request_does_not_crash() -> None:
    """A hand-built response (no request) still gives a clear error."""
    with pytest.raises(TokenFetchError, match=r"\(unknown host\) answered HTTP 500"):
        token_from_response(httpx.Response(500))


# -- Token and Secret --------------------------------------------------------------------


def test_token_hides_its_value() -> None:
    """Token's repr shows '***'; the value stays a plain str."""
    token = Token("abc.def.ghi", 60)
    assert repr(token) == "Token(value='***', expires_in=60, obtained_at=None)"
    assert "abc" not in str(token)
    assert token.value == "abc.def.ghi"
    assert token == Token("abc.def.ghi", 60, obtained_at=1.0)


@pytest.mark.parametrize(
    "args",
    [
        ("",),
        (b"bytes",),
        ("tok-VALUE\nxyz",),
        ("tok-VALUE-é",),
        ("tok-VALUE", -1),
        ("tok-VALUE", float("nan")),
        ("tok-VALUE", True),
    ],
)
def test_invalid_tokens_are_refused(args: tuple[Any, ...]) -> None:
    """Empty, non-str, header-breaking values and negative lives are configuration errors."""
    with pytest.raises(ConfigurationError) as caught:
        Token(*args)
    assert "VALUE" not in str(caught.value)


def test_secret_never_shows_itself() -> None:
    """repr, str and format show ***; reveal gives the value; equality by value."""
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***"
    assert f"{secret:>5}" == "  ***"
    assert "%s %r" % (secret, secret) == "*** Secret('***')"  # noqa: UP031 - logging style
    assert secret.reveal() == "hunter2"
    assert Secret(secret) == secret
    assert Secret("other") != secret
    assert secret != "hunter2"
    assert hash(Secret("hunter2")) == hash(secret)
    assert bool(secret)
    assert not Secret("")
    assert pickle.loads(pickle.dumps(secret)) == secret
    with pytest.raises(ConfigurationError, match="Secret: value must be a str, got int"):
        Secret(42)  # type: ignore[arg-type]


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AuthRefresh(object()), "provider must have a fetch() method"),  # type: ignore[arg-type]
        (lambda: AuthRefresh(StaticToken("t"), skew=-1), "skew must be >= 0"),
        (lambda: AuthRefresh(StaticToken("t"), header="Bad Header"), "header must be an HTTP"),
        (lambda: AuthRefresh(StaticToken("t"), scheme="Bear er"), "scheme must be an HTTP"),
        (lambda: OAuth2ClientCredentials("ftp://x/t", "id", "s"), "absolute http(s) URL"),
        (lambda: OAuth2ClientCredentials("/token", "id", "s"), "absolute http(s) URL"),
        (lambda: OAuth2ClientCredentials(TOKEN_URL, "", "s"), "client_id must be a non-empty"),
        (lambda: OAuth2ClientCredentials(TOKEN_URL, "id", ""), "client_secret must be a non-empty"),
        (
            lambda: OAuth2ClientCredentials(TOKEN_URL, "id", 7),
            "client_secret must be a non-empty str or Secret",
        ),  # type: ignore[arg-type]
        (lambda: OAuth2ClientCredentials(TOKEN_URL, "id", "s", scope=5), "scope must be"),  # type: ignore[arg-type]
        (lambda: StaticToken("line\nbreak"), "control or non-ASCII characters"),
        (lambda: StaticToken("liné"), "control or non-ASCII characters"),
    ],
)
def test_bad_configuration_is_refused(build: Any, message: str) -> None:
    """Each bad argument is a ConfigurationError naming it (and never a secret)."""
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert message in str(caught.value)
    assert "line" not in str(caught.value)


def test_secret_provider_accepts_a_secret_and_an_httpx_url() -> None:
    """client_secret may already be a Secret; token_url may be an httpx.URL."""
    provider = OAuth2ClientCredentials(httpx.URL(TOKEN_URL), "id", Secret("s"))
    assert provider.token_url == TOKEN_URL
    assert provider.client_secret == Secret("s")


async def test_one_configuration_serves_pipelines_independently() -> None:
    """AuthRefresh is configuration: each pipeline it is bound into has its own cache."""
    transport, seen = token_endpoint()
    layer = AuthRefresh(
        OAuth2ClientCredentials(TOKEN_URL, "id", "s"), origins=["https://api.example.test"]
    )

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            return transport.handler(request)  # type: ignore[return-value]
        return httpx.Response(200)

    for _ in range(2):
        pipeline = Pipeline([layer], clock=VirtualClock(), telemetry=False)
        inner = httpx.MockTransport(api)
        async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as c:
            await c.get("https://api.example.test/a")
            await c.get("https://api.example.test/b")
    assert len(seen) == 2
