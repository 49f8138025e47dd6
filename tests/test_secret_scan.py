"""A scan for credentials: every provider, every failure path, every place text goes.

For each token provider (StaticToken, OAuth2ClientCredentials, and the Tellus,
Turris and Derapi flows) the calls below go through a real loopback HTTP server
with httpx's own transport (so httpcore's DEBUG log is part of the scan), and the
server echoes what it was sent: the API echoes the Authorization header in its
401s, the token endpoint echoes the client secret in its 4xx, 5xx, 200-with-error
and non-JSON answers. Protocol errors quote the token header (as h11 does) or the
token request's body. Then neither the client secret nor any access token may
appear in: errors (str, repr, args, the printed chain), their problem and report,
log records at every level (message and args), spans (attributes, events, status),
or the reprs of the providers, the layer and the pipeline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import anyio.abc
import h11
import httpx
import pytest
import resilience_derapi
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from resilience_tellus import TellusToken
from resilience_turris import TurrisToken

from resilience import (
    AuthRefresh,
    ExponentialBackoff,
    FieldError,
    OAuth2ClientCredentials,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    Secret,
    StaticToken,
    scrub_problem,
)
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

CLIENT_ID = "scan-id"
SECRET = "SCRT-9f3k/value+x"
TOKEN_MARK = "TKNmark"
STATIC = f"{TOKEN_MARK}-static-key"
TOKEN_PATHS = {"/oauth2/token", "/v1/operator/oauth/token", "/v1/auth/jwt"}
FAILING_TOKEN_MODES = ["refuse", "fail5xx", "error200", "notjson", "badtype", "protocol"]
FAST = ExponentialBackoff(initial=0.1, jitter="none")


class Server:
    """The vendor: a token endpoint at every vendor's path and an API at /v1/data.

    ``token_mode`` and ``api_mode`` say how they answer; each failing answer echoes
    what was sent, as a careless server would.
    """

    def __init__(self) -> None:
        self.token_mode = "ok"
        self.api_mode = "ok"
        self.issued = 0
        self.valid: set[str] = {STATIC}
        self.secrets_received = 0

    def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path in TOKEN_PATHS:
            return self._token(headers, body)
        auth = headers.get("authorization") or headers.get("x-api-key") or ""
        if self.api_mode == "echo401":
            echo = f"token {auth} refused"
            return 401, {
                "code": 2001,
                "errorType": "unauthorized",
                "statusCode": 401,
                "message": echo,
                "title": echo,
                "detail": echo,
                "details": {"authorization": auth, "seen": [echo]},
                "errorMessage": [echo],
            }
        if auth.removeprefix("Bearer ") not in self.valid:
            return 401, {"code": 2001, "errorType": "unauthorized", "message": "Unauthorized"}
        return 200, {"code": 0, "data": {"items": []}}

    def _token(self, headers: dict[str, str], body: bytes) -> Any:
        sent = body.decode("latin-1") + headers.get("authorization", "")
        basic = base64.b64encode(f"{CLIENT_ID}:{quote_plus(SECRET)}".encode()).decode()
        if SECRET in sent or quote_plus(SECRET) in sent or basic in sent:
            self.secrets_received += 1
        echo = f"client {CLIENT_ID} secret {SECRET} body {body!r}"
        envelope = {
            "error": "invalid_client",
            "error_description": echo,
            "code": 2001,
            "errorType": "unauthorized",
            "message": echo,
            "title": echo,
            "detail": echo,
            "details": {"received": SECRET, "body": echo},
            "requestId": f"req-{SECRET}",
        }
        mode = self.token_mode
        if mode == "refuse":
            return 400, envelope
        if mode == "fail5xx":
            return 503, envelope
        if mode == "error200":
            return 200, envelope
        if mode == "notjson":
            return 200, f"<html>{echo}</html>".encode()
        if mode == "badtype":
            return 200, {"access_token": 12345, "data": {"accessToken": 12345}, "echo": echo}
        self.issued += 1
        token = f"{TOKEN_MARK}-{self.issued:04d}"
        self.valid = {token, STATIC}
        return 200, {
            "access_token": token,
            "expires_in": 3600,
            "data": {"accessToken": token},
        }


@contextlib.asynccontextmanager
async def loopback(server: Server) -> AsyncIterator[str]:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering with ``server``; yields its URL."""

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    _, target, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    body, buffer = buffer[:length], buffer[length:]
                    status, out = server("", target.split("?")[0], headers, body)
                    if not isinstance(out, bytes):
                        out = json.dumps(out).encode()
                    await stream.send(
                        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(out)}\r\n\r\n".encode()
                        + out
                    )
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


class Faulty(httpx.AsyncBaseTransport):
    """httpx's own transport, with protocol errors on demand that quote what was sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.api_fault: str | None = None
        self.token_fault = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization") or request.headers.get("x-api-key")
        if request.url.path in TOKEN_PATHS and self.token_fault:
            raise httpx.RemoteProtocolError(f"peer hung up on {request.content!r}")
        if request.url.path == "/v1/data" and self.api_fault == "httpx":
            raise httpx.LocalProtocolError(f"Illegal header value {header!r}")
        if request.url.path == "/v1/data" and self.api_fault == "h11":
            raise h11.LocalProtocolError(f"Illegal header value {header!r}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


Make = Callable[[str], Any]

PROVIDERS: dict[str, tuple[str, Make]] = {
    "static": ("http", lambda base: StaticToken(STATIC)),
    "oauth2": (
        "http",
        lambda base: OAuth2ClientCredentials(f"{base}/oauth2/token", CLIENT_ID, SECRET),
    ),
    "tellus": (
        "tellus",
        lambda base: TellusToken(client_id=CLIENT_ID, client_secret=SECRET, base_url=base),
    ),
    "turris": (
        "turris",
        lambda base: TurrisToken(client_id=CLIENT_ID, client_secret=SECRET, base_url=base),
    ),
    "derapi": (
        "derapi",
        lambda base: resilience_derapi.token_provider(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=base
        ),
    ),
}


async def failure(call: Awaitable[Any]) -> BaseException:
    """The exception ``call`` raises (it must raise one)."""
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("expected a failure")


def texts_of(error: BaseException) -> list[str]:
    """Everything an error shows: str, repr, args, the printed chain, the chain's
    members, the problem (each field) and the report."""
    texts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
    node: BaseException | None = error
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        texts += [str(node), repr(node), repr(node.args)]
        node = node.__cause__ or node.__context__
    problem = getattr(error, "problem", None)
    texts.append(repr(problem))
    if problem is not None:
        texts += [str(getattr(problem, name)) for name in problem.__attrs_attrs__.__dict__]
        texts += [repr(problem.details), repr(problem.errors)]
    texts.append(repr(getattr(error, "report", None)))
    return texts


def needles() -> list[str]:
    """What must never show: the secret in each form it is sent, and any token."""
    basic = base64.b64encode(f"{CLIENT_ID}:{quote_plus(SECRET)}".encode()).decode()
    return [SECRET, quote_plus(SECRET), quote(SECRET, safe=""), basic, TOKEN_MARK]


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
async def test_no_credential_anywhere(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every failure path of one provider leaks neither its secret nor a token."""
    caplog.set_level(0)
    for name in ("httpx", "httpcore", "resilience", "h11"):
        caplog.set_level(1, logger=name)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    vendor, make = PROVIDERS[kind]
    server, faulty = Server(), Faulty()
    errors: list[BaseException] = []
    texts: list[str] = []
    events: list[Any] = []
    async with loopback(server) as base:
        provider = make(base)
        layer = AuthRefresh(provider)
        pipeline = Pipeline(
            [Retry(max_attempts=2, backoff=FAST, budget=None), layer],
            classifier=vendor,
            clock=VirtualClock(),
            hooks=[events.append],
            tracer_provider=tracer_provider,
        )
        transport = ResilientTransport(pipeline, inner=faulty)
        async with httpx.AsyncClient(base_url=base, transport=transport) as client:
            assert (await client.get("/v1/data")).status_code == 200
            # The API echoes the Authorization header in its 401s, twice.
            server.api_mode = "echo401"
            errors.append(await failure(client.get("/v1/data")))
            server.api_mode = "ok"
            # An HTTP library refusing the header, quoting it (httpx's and h11's).
            for fault in ("httpx", "h11"):
                faulty.api_fault = fault
                errors.append(await failure(client.get("/v1/data")))
            faulty.api_fault = None
            if kind != "static":
                # The token is revoked: each call refreshes, and the endpoint fails.
                for mode in FAILING_TOKEN_MODES:
                    server.valid.clear()
                    server.token_mode = "ok" if mode == "protocol" else mode
                    faulty.token_fault = mode == "protocol"
                    errors.append(await failure(client.get("/v1/data")))
                server.token_mode, faulty.token_fault = "ok", False
                assert (await client.get("/v1/data")).status_code == 200
                # The provider on its own, as a caller may use it.
                async with httpx.AsyncClient(transport=faulty, base_url=base) as plain:
                    for mode in FAILING_TOKEN_MODES:
                        server.token_mode = "ok" if mode == "protocol" else mode
                        faulty.token_fault = mode == "protocol"
                        errors.append(await failure(provider.fetch(plain)))
        texts += [repr(provider), str(provider), repr(layer), repr(pipeline), repr(transport)]
        texts += [repr(layer.bind(pipeline.env)), repr(events)]
    await faulty.aclose()

    expected = 3 if kind == "static" else 3 + 2 * len(FAILING_TOKEN_MODES)
    assert len(errors) == expected
    if kind != "static":
        # The scan means something: the secret went out, and came back in echoes.
        assert server.secrets_received >= len(FAILING_TOKEN_MODES)
    for error in errors:
        texts += texts_of(error)
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), str(record.msg)]
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        texts += [span.to_json(), repr(dict(span.attributes or {}))]
        texts += [repr(dict(event.attributes or {})) for event in span.events]
        texts.append(str(span.status.description))
    blob = "\n".join(texts)
    for needle in needles():
        assert needle not in blob, (needle, _around(blob, needle))


def _around(blob: str, needle: str) -> str:
    at = blob.find(needle)
    return blob[max(0, at - 300) : at + 100]


# -- scrub_problem, the helper token flows use on a vendor's error ------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@given(
    tail=st.text(st.characters(codec="ascii"), min_size=3, max_size=40),
    before=texts,
    after=texts,
    cut=st.integers(min_value=6, max_value=40),
    depth=st.integers(min_value=0, max_value=12),
)
def test_scrub_problem_leaves_no_trace(
    tail: str, before: str, after: str, cut: int, depth: int
) -> None:
    """Wherever a vendor echoes a secret (any field, any depth of details, a key, a
    list, URL-encoded, JSON-escaped, or cut short with an ellipsis), the scrubbed
    problem's repr holds neither the secret nor that form of it."""
    secret = "Sx9" + tail  # a prefix no fixed text of a repr contains
    forms = [secret, quote_plus(secret), json.dumps(secret)[1:-1]]
    echoes = [f"{before}{form}{after}" for form in forms]
    shortened = secret[:cut] if cut < len(secret) else None
    if shortened is not None:
        echoes.append(f"{before}{shortened}…")
    nested: Any = {"list": list(echoes), echoes[0]: "key"}
    for _ in range(depth):
        nested = {"inner": nested, "also": (echoes[-1],)}
    problem = Problem(
        vendor="v",
        code=echoes[0],
        title=echoes[-1],
        detail=echoes[1],
        request_id=echoes[2],
        errors=[FieldError(field=echoes[0], detail=echoes[-1], pointer=echoes[1])],
        details={"top": nested},
    )
    scrubbed = scrub_problem(problem, [Secret(secret), None])
    shown = repr(scrubbed)
    for form in forms:
        assert form not in shown
    if shortened is not None:
        assert f"{shortened}…" not in shown
    assert scrubbed.vendor == "v"


def test_scrub_problem_returns_the_same_problem_when_nothing_matches() -> None:
    """A problem that quotes nothing is returned as it is (no copy)."""
    problem = Problem(vendor="v", code="invalid_client", title="bad client", details={"a": [1]})
    assert scrub_problem(problem, ["client-secret-value"]) is problem
