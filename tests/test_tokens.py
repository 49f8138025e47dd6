"""Tokens in one place: the one reader of a token endpoint's answer, the send that
bounds what it reads, and the VendorToken base a plugin's provider declares itself on."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience
from resilience import (
    Action,
    AuthRefresh,
    CodeEntry,
    CodeTable,
    OAuth2ClientCredentials,
    ParsedError,
    Pipeline,
    ResilientTransport,
    TableClassifier,
    Token,
    TokenFetchError,
    VendorToken,
    post_for_token,
    token_from_response,
)
from resilience.errors import AuthenticationError, ConfigurationError
from resilience.testing import VirtualClock

SECRET = "s3cr3t-VALUE-never-shown"
TOKEN_URL = "https://auth.example.test/oauth2/token"


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


class DemoClassifier(TableClassifier):
    """A vendor whose envelope is ``{"status": <code>, "text": ...}``; status 0 is success."""

    vendor = "demo"
    codes = CodeTable(
        {
            0: CodeEntry(Action.ACCEPT, 200),
            "slow_down": CodeEntry(Action.RETRY, 429),
            "bad_client": CodeEntry(Action.FAIL, 401),
        }
    )

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        body = self.parse_json_object(response)
        if body is None or "status" not in body:
            return None
        return ParsedError(
            code=self.str_field(body, "status") or str(body["status"]),
            title=self.str_field(body, "text"),
            request_id=self.str_field(body, "rid"),
            retry_after=self.number_field(body, "wait"),
        )


class DemoToken(VendorToken):
    """A vendor flow declared in a few lines: camelCase body, nested token, no life."""

    vendor = "demo"
    token_path = "/auth/token"
    classifier = DemoClassifier()
    access_token_path = "result.token"
    expires_in_path = None
    jwt_exp = True
    default_expires_in = 1800.0

    def request_body(self) -> Mapping[str, Any]:
        return {"appId": self.client_id, "appSecret": self.client_secret.reveal()}


def _endpoint(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handler), seen


# -- VendorToken ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_vendor_provider_is_its_declarations() -> None:
    """The declared path, body, token path and default life are what is sent and read."""
    transport, seen = _endpoint(httpx.Response(201, json={"status": 0, "result": {"token": "t1"}}))
    provider = DemoToken(
        client_id="app", client_secret=SECRET, base_url="https://demo.test/", clock=VirtualClock()
    )
    async with httpx.AsyncClient(transport=transport) as http:
        token = await provider.fetch(http)
    assert token == Token("t1", 1800.0)
    assert token.obtained_at == 0.0
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "https://demo.test/auth/token")
    assert json.loads(request.content) == {"appId": "app", "appSecret": SECRET}
    assert provider.token_endpoint == "https://demo.test/auth/token"
    assert SECRET not in repr(provider)


@pytest.mark.anyio
async def test_a_vendor_provider_takes_the_life_from_the_jwt() -> None:
    """No life in the answer: the JWT's exp (minus iat) is the token's life."""
    value = _jwt({"iat": 1000, "exp": 1600})
    transport, _ = _endpoint(httpx.Response(200, json={"result": {"token": value}}))
    provider = DemoToken(client_id="app", client_secret=SECRET, token_url="https://x.test/t")
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await provider.fetch(http)).expires_in == 600


@pytest.mark.anyio
async def test_an_error_envelope_on_a_200_wins_and_is_scrubbed() -> None:
    """The vendor's classifier reads a 2xx too: its RETRY code is a transient error
    with its hint, and the secret the vendor echoed is withheld everywhere."""
    echo = {"status": "slow_down", "text": f"client app/{SECRET} is too fast", "wait": 9}
    transport, _ = _endpoint(httpx.Response(200, json=echo))
    provider = DemoToken(client_id="app", client_secret=SECRET, base_url="https://demo.test")
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    error = caught.value
    assert (error.transient, error.retry_after) == (True, 9)
    assert error.problem is not None
    assert error.problem.code == "slow_down"
    assert str(error).startswith("demo token endpoint demo.test answered HTTP 200: code=slow_down")
    assert SECRET not in f"{error} {error!r} {error.problem!r}"


@pytest.mark.anyio
async def test_a_vendor_refusal_names_the_vendor_code_and_request_id() -> None:
    """A 401 envelope: permanent, named by the vendor's code and request id."""
    body = {"status": "bad_client", "text": "unknown client", "rid": "r-77"}
    transport, _ = _endpoint(httpx.Response(401, json=body))
    provider = DemoToken(client_id="app", client_secret=SECRET, base_url="https://demo.test")
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError) as caught:
            await provider.fetch(http)
    assert caught.value.transient is False
    assert str(caught.value) == (
        "demo token endpoint demo.test answered HTTP 401: code=bad_client "
        "'unknown client' request_id=r-77"
    )
    with pytest.raises(RuntimeError):
        caught.value.request  # noqa: B018 - the token request (its body has the secret)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"client_id": "app", "client_secret": SECRET}, "base_url"),
        ({"client_id": "app", "client_secret": "", "base_url": "https://d.test"}, "client_secret"),
        ({"client_id": "", "client_secret": SECRET, "base_url": "https://d.test"}, "client_id"),
        ({"client_id": "app", "client_secret": SECRET, "base_url": "d.test"}, "base_url"),
        ({"client_id": "app", "client_secret": SECRET, "token_url": "/t"}, "token_url"),
        (
            {"client_id": "app", "client_secret": SECRET, "base_url": "https://d", "clock": 1},
            "clock",
        ),
    ],
)
def test_a_vendor_provider_checks_its_arguments(kwargs: dict[str, Any], named: str) -> None:
    """Each bad argument is a ConfigurationError naming it and the subclass, never the secret."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        DemoToken(**kwargs)
    assert str(caught.value).startswith("DemoToken: ")
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
async def test_a_vendor_provider_works_under_auth_refresh() -> None:
    """Through a pipeline: one token request, the token on the API's requests only."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/auth/token":
            return httpx.Response(200, json={"status": 0, "result": {"token": "tok-9"}})
        return httpx.Response(200, json={"status": 0})

    provider = DemoToken(client_id="app", client_secret=SECRET, base_url="https://demo.test")
    pipeline = Pipeline([AuthRefresh(provider)], classifier=DemoClassifier(), clock=VirtualClock())
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(base_url="https://demo.test", transport=transport) as client:
        for _ in range(2):
            assert (await client.get("/v1/things")).status_code == 200
    assert [r.url.path for r in seen] == ["/auth/token", "/v1/things", "/v1/things"]
    assert seen[1].headers["Authorization"] == "Bearer tok-9"


# -- the send: bounded, no request in the error ---------------------------------------


class _Chunks(httpx.AsyncByteStream):
    """A body of ``count`` chunks of 64 KiB, with no length: counts what was read.

    An iterator object, as a network stream is (an async generator left half-way
    would only test the collector)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.closed = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.sent == 0:
            self.sent = 1
            return b'{"access_token": "t", "pad": "'
        if self.sent > self.count:
            raise StopAsyncIteration
        self.sent += 1
        return b"x" * 65_536

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_an_oversized_answer_is_not_read_to_its_end() -> None:
    """A 4 MiB answer (no Content-Length): reading stops past 1 MiB and the answer is
    refused as malformed, instead of being held in memory and parsed."""
    body = _Chunks(64)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError, match="its body is not a JSON object") as caught:
            await OAuth2ClientCredentials(TOKEN_URL, "id", SECRET).fetch(http)
    assert caught.value.transient is False
    assert body.sent <= 18
    assert body.closed


@pytest.mark.anyio
async def test_a_transport_failure_is_a_token_fetch_error_without_the_request() -> None:
    """A provider used on its own: a connection failure is a transient
    TokenFetchError naming its type and host; nothing chains the original, whose
    request carries the Basic credential."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused: {request.headers['authorization']}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(TokenFetchError) as caught:
            await OAuth2ClientCredentials(TOKEN_URL, "id", SECRET).fetch(http)
    error = caught.value
    assert error.transient is True
    assert "token request to auth.example.test failed: ConnectError" in str(error)
    assert error.__context__ is None
    assert error.__cause__ is None


@pytest.mark.anyio
async def test_an_echoed_secret_in_an_oauth2_error_code_is_withheld() -> None:
    """An endpoint that puts the secret where the error code goes: the code is
    withheld from the message and the problem (a provider used on its own too)."""
    transport, _ = _endpoint(httpx.Response(401, json={"error": SECRET}))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError) as caught:
            await OAuth2ClientCredentials(TOKEN_URL, "id", SECRET).fetch(http)
    assert SECRET not in f"{caught.value} {caught.value.problem!r}"


# -- the reader ------------------------------------------------------------------------


def _answer(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("POST", TOKEN_URL))


def test_token_paths_fallbacks_and_statuses() -> None:
    """Several token paths (first found wins); an unreadable life falls back to the
    declared default; statuses outside the accepted ones are refusals."""
    wrapped = _answer(200, {"code": 0, "data": {"access_token": "w"}, "expires_in": "soon"})
    token = token_from_response(
        wrapped, access_token_path=("access_token", "data.access_token"), default_expires_in=60
    )
    assert token == Token("w", 60)
    with pytest.raises(TokenFetchError, match="'expires_in' is not a non-negative number"):
        token_from_response(_answer(200, {"access_token": "w", "expires_in": "soon"}))
    with pytest.raises(TokenFetchError, match="answered HTTP 200") as caught:
        token_from_response(_answer(200, {"access_token": "w"}), statuses=[201])
    assert caught.value.transient is False


@pytest.mark.anyio
async def test_post_for_token_reads_the_envelope_of_a_2xx() -> None:
    """post_for_token checks the answer as the reader does: a vendor error code on a
    200 is a refusal (here transient, with its hint), not a body to read a token from."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"status": "slow_down", "wait": 4})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(TokenFetchError) as caught:
            await post_for_token(
                http,
                "https://demo.test/auth/token",
                json_body={"appSecret": SECRET},
                classifier=DemoClassifier(),
            )
    assert (caught.value.transient, caught.value.retry_after) == (True, 4)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["access_token", "expires_in", "error", "x"]), children)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([200, 201, 400, 401, 429, 500, 503]),
    body=_JSON,
    classified=st.booleans(),
)
def test_the_reader_gives_a_token_or_a_token_fetch_error(
    status: int, body: Any, classified: bool
) -> None:
    """Whatever the endpoint answers: a Token a header can carry, or a
    TokenFetchError (nothing else escapes), and a failure never quotes the secret."""
    response = httpx.Response(
        status, content=json.dumps(body).encode(), request=httpx.Request("POST", TOKEN_URL)
    )
    failure: TokenFetchError | None = None
    try:
        token = token_from_response(
            response, classifier=DemoClassifier() if classified else None, secrets=[SECRET]
        )
    except TokenFetchError as exc:
        failure = exc
    if failure is not None:
        assert isinstance(failure, AuthenticationError)
        assert failure.problem is not None
        assert SECRET not in str(failure)
        return
    assert 200 <= status < 300
    assert token.value == token.value.strip()
    assert token.value.isascii()
    assert token.expires_in is None or token.expires_in >= 0


def test_token_fetch_error_lives_in_the_errors_module() -> None:
    """One class, three names: resilience.TokenFetchError, resilience.errors's, in its tree."""
    assert resilience.TokenFetchError is resilience.errors.TokenFetchError
    assert "TokenFetchError" in resilience.errors.__all__
    assert "TokenFetchError" in (resilience.errors.__doc__ or "")
    assert issubclass(resilience.errors.TokenFetchError, AuthenticationError)
