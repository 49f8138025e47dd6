"""Token and header values an HTTP header cannot carry are refused before they are sent.

h11 refuses a header value with surrounding whitespace or control characters and
quotes the whole value in its ``LocalProtocolError``; when that value is a token,
the quote would reach errors, problems, reports and logs. So such values fail at
construction (or, returned by a provider, at fetch time) without being quoted, and
a protocol error's text never becomes a problem's title.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import attrs
import httpx
import pytest

from resilience import (
    AuthRefresh,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Token,
    TokenFetchError,
)
from resilience.errors import ConfigurationError, PermanentError
from resilience.testing import VirtualClock, through

pytestmark = pytest.mark.anyio

MARK = "MARKtoken42"
BAD_VALUES = [
    f"{MARK} ",
    f" {MARK}",
    f"{MARK}\n",
    f"{MARK}\t",
    f"{MARK}\r\nX-Evil: 1",
    f"{MARK}\x00",
    f"{MARK}\u00a0",
    f"{MARK}é",
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_static_token_refuses_what_a_header_cannot_carry(value: str) -> None:
    """Surrounding whitespace, control or non-ASCII characters: a ConfigurationError
    naming the argument, never quoting the value."""
    with pytest.raises(ConfigurationError, match="value") as caught:
        StaticToken(value)
    assert MARK not in str(caught.value)
    assert MARK not in repr(caught.value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_token_refuses_what_a_header_cannot_carry(value: str) -> None:
    """A Token is checked the same way (a provider builds one per fetch)."""
    with pytest.raises(ConfigurationError, match="value") as caught:
        Token(value, 60)
    assert MARK not in str(caught.value)


def test_inner_spaces_are_allowed() -> None:
    """A space inside a value is legal in a header and stays as it is."""
    assert StaticToken("a b").value.reveal() == "a b"


@pytest.mark.parametrize(
    ("header", "scheme"), [("X-Key ", None), ("X-Key", "Bearer "), (" ", None)]
)
def test_header_name_and_scheme_must_be_tokens(header: str, scheme: str | None) -> None:
    """The header name and the scheme are HTTP tokens: no whitespace at all."""
    with pytest.raises(ConfigurationError, match=r"header|scheme"):
        AuthRefresh(StaticToken("k"), header=header, scheme=scheme)


@attrs.frozen
class Sneaky:
    """A provider whose token slipped past Token's own check (built, then changed)."""

    value: str

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """A Token whose value is set after its checks ran."""
        token = Token("placeholder", 60)
        object.__setattr__(token, "value", self.value)
        return token


@attrs.frozen
class Careless:
    """A provider that builds a Token from an untrimmed value."""

    value: str

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """``Token(value)``: raises ConfigurationError for a bad value."""
        return Token(self.value, 60)


@pytest.mark.parametrize("provider", [Sneaky(f"{MARK} "), Careless(f"{MARK} ")], ids=repr)
async def test_a_bad_token_from_a_provider_is_a_fetch_error(provider: object) -> None:
    """At fetch time, a token no header can carry is a permanent TokenFetchError that
    does not quote it; the API is never called with it."""
    sent: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    layers = [Retry(max_attempts=3), AuthRefresh(provider, origins=["https://api.x"])]  # type: ignore[arg-type]
    transport = through(httpx.MockTransport(api), *layers, clock=VirtualClock())
    async with httpx.AsyncClient(base_url="https://api.x", transport=transport) as client:
        with pytest.raises(TokenFetchError) as caught:
            await client.get("/v1/things")
    assert sent == []
    assert caught.value.transient is False
    assert caught.value.report.attempts == 0
    texts = [str(caught.value), repr(caught.value), repr(caught.value.problem)]
    assert not any(MARK in text for text in texts), texts


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A loopback server that accepts connections and never answers."""

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


async def test_a_protocol_error_text_never_becomes_the_problem() -> None:
    """A header h11 refuses (over httpx's real transport) is a PermanentError whose
    problem and message describe the failure without h11's quote of the value."""
    async with silent_server() as base:
        pipeline = Pipeline([Retry(max_attempts=3)], clock=VirtualClock(), telemetry=False)
        transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
        async with httpx.AsyncClient(base_url=base, transport=transport) as client:
            with pytest.raises(PermanentError) as caught:
                await client.get("/", headers={"X-Trace": f"{MARK} "})
    error = caught.value
    assert error.problem is not None
    assert error.problem.code == "LocalProtocolError"
    assert error.problem.title is not None
    assert "refused to send the request" in error.problem.title
    assert error.report.attempts == 1  # not retried: it would fail the same way
    texts = [str(error), repr(error), repr(error.problem), repr(error.report)]
    assert not any(MARK in text for text in texts), texts
