"""Secrets never leak: logs (any level, httpx and httpcore too), reprs, errors, events, spans.

The scenario runs over a real loopback HTTP server with httpx's own transport, so
httpcore's debug logging is part of what is scanned.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilience import (
    AuthRefresh,
    OAuth2ClientCredentials,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    TokenFetchError,
)
from resilience.errors import AuthenticationError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

CLIENT_ID = "scan-client"
SECRET = "S3CRET-client-secret-VALUE"
TOKEN_MARK = "TOKENVALUE"
BASIC = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()

App = Callable[[str, str, dict[str, str], bytes], tuple[int, bytes]]


@contextlib.asynccontextmanager
async def loopback(app: App) -> AsyncIterator[str]:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering JSON with ``app``; yields its URL."""

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    body, buffer = buffer[:length], buffer[length:]
                    status, out = app(method, target, headers, body)
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


class Vendor:
    """Token endpoint (client credentials, Basic) and an API checking bearer tokens."""

    def __init__(self) -> None:
        self.issued = 0
        self.valid: set[str] = set()
        self.mode = "ok"

    def __call__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Any:
        if target == "/oauth2/token":
            if self.mode == "refuse" or headers.get("authorization") != f"Basic {BASIC}":
                # A careless server echoing the credentials in its description.
                text = f"bad client {CLIENT_ID} with secret {SECRET}"
                return 401, json.dumps(
                    {"error": "invalid_client", "error_description": text}
                ).encode()
            self.issued += 1
            token = f"{TOKEN_MARK}-{self.issued:04d}"
            self.valid = {token}
            return 200, json.dumps({"access_token": token, "expires_in": 3600}).encode()
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if self.mode == "reject" or bearer not in self.valid:
            return 401, b'{"message": "Unauthorized"}'
        return 200, b'{"items": []}'


def everything_about(error: BaseException) -> list[str]:
    """Every text an error shows: str, repr, args, the printed traceback, problem, report."""
    texts = [str(error), repr(error), repr(error.args)]
    texts.append("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    for name in ("problem", "report", "response"):
        texts.append(repr(getattr(error, name, None)))
    with contextlib.suppress(RuntimeError):  # httpx: "the .request property has not been set"
        texts.append(repr(error.request))  # type: ignore[attr-defined]
    return texts


async def test_no_secret_or_token_anywhere(caplog: pytest.LogCaptureFixture) -> None:
    """A full auth life (fetch, refresh, rejections, refusal) leaks neither secret nor token."""
    caplog.set_level(1)
    for name in ("httpx", "httpcore", "resilience"):
        logging.getLogger(name).setLevel(1)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metrics])
    vendor = Vendor()
    events: list[Any] = []
    texts: list[str] = []
    try:
        async with loopback(vendor) as base:
            provider = OAuth2ClientCredentials(f"{base}/oauth2/token", CLIENT_ID, SECRET)
            layer = AuthRefresh(provider)
            pipeline = Pipeline(
                [Retry(max_attempts=3), layer],
                clock=VirtualClock(),
                hooks=[events.append],
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
            )
            transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
            async with httpx.AsyncClient(base_url=base, transport=transport) as client:
                assert (await client.get("/v1/things")).status_code == 200
                vendor.valid.clear()  # the server revokes the token: refresh and replay
                assert (await client.get("/v1/things")).status_code == 200
                vendor.mode = "reject"
                with pytest.raises(AuthenticationError) as rejected:
                    await client.get("/v1/things")
                vendor.mode = "refuse"
                vendor.valid.clear()
                with pytest.raises(TokenFetchError) as refused:
                    await client.get("/v1/things")
                async with httpx.AsyncClient(base_url=base) as plain:
                    with pytest.raises(TokenFetchError) as direct:
                        await provider.fetch(plain)
                    vendor.mode = "ok"
                    token = await provider.fetch(plain)
                texts += [repr(provider), str(provider), repr(layer), repr(pipeline)]
                texts += [repr(transport), repr(token), str(token), repr(layer.bind(pipeline.env))]
                texts += [repr(StaticToken(SECRET))]
            for error in (rejected.value, refused.value, direct.value):
                texts += everything_about(error)
    finally:
        for name in ("httpx", "httpcore", "resilience"):
            logging.getLogger(name).setLevel(logging.NOTSET)

    assert vendor.issued == 4  # initial, rejected, the refresh after the second 401, direct
    assert "invalid_client" in str(refused.value)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts += [formatter.format(record) for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    texts += [repr(event) for event in events]
    finished = spans.get_finished_spans()
    assert "resilience.auth.refresh" in {span.name for span in finished}
    texts += [span.to_json() for span in finished]
    data = metrics.get_metrics_data()
    assert data is not None
    texts.append(data.to_json())
    blob = "\n".join(texts)
    assert "Secret('***')" in blob
    for needle in (SECRET, TOKEN_MARK, BASIC):
        assert needle not in blob, needle
