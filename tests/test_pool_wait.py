"""Waiting for a connection from our own pool is not the backend's failure.

An attempt cut by ``Timeout(attempt=...)`` before the transport reported any
progress (httpcore reports through the request's ``trace`` extension once the
pool hands the request a connection), or ended by ``httpx.PoolTimeout``, is
RETRY but never a breaker failure: local queueing must not open a breaker on a
healthy backend.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import httpx
import pytest

from resilience import CircuitBreaker, CircuitRegistry, Retry, Timeout
from resilience.errors import RetriesExhausted
from resilience.testing import ScriptedTransport, reply, serve, through

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
KEY = "https://api.test:443"


def breaker() -> CircuitBreaker:
    return CircuitBreaker(minimum_calls=3, failure_ratio=0.5, window=60.0, break_duration=30.0)


class PooledTransport(httpx.AsyncBaseTransport):
    """A transport with a pool of ``size`` connections, reporting progress as
    httpcore does: a request waits for a free connection, then its ``trace``
    callback hears ``connection.connect_tcp.started``. ``/hold`` keeps its
    connection until :attr:`release` is set; a request to ``/hang`` gets a
    connection and then no answer."""

    def __init__(self, size: int = 1) -> None:
        self.pool = anyio.Semaphore(size)
        self.release = anyio.Event()
        self.holding = anyio.Event()
        self.connected = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self.pool:
            trace = request.extensions.get("trace")
            if trace is not None:
                await trace("connection.connect_tcp.started", {})
            self.connected += 1
            if request.url.path == "/hold":
                self.holding.set()
                await self.release.wait()
            elif request.url.path == "/hang":
                await anyio.sleep_forever()
            return reply(200, content="ok")


async def test_queueing_in_the_pool_does_not_open_the_breaker() -> None:
    """One connection, held by another request: calls that time out waiting for it
    end as RETRY ("PoolTimeout", not a breaker failure); the breaker stays closed
    however many there are, and the next call after the release goes through."""
    inner = PooledTransport(size=1)
    layers = (Retry(max_attempts=1), breaker(), Timeout(attempt=0.02))
    transport = through(inner, *layers)
    registry = CircuitRegistry.of(transport.pipeline)
    with anyio.fail_after(10):
        async with (
            httpx.AsyncClient(transport=transport) as client,
            anyio.create_task_group() as tg,
        ):
            assert (await client.get(URL)).status_code == 200
            tg.start_soon(inner.handle_async_request, httpx.Request("GET", "https://api.test/hold"))
            await inner.holding.wait()
            for _ in range(6):
                with pytest.raises(RetriesExhausted) as info:
                    await client.get(URL)
                verdicts = info.value.report.verdicts
                assert [v.reason for v in verdicts] == ["PoolTimeout"]
                assert verdicts[0].breaker_failure is False
                assert registry.get(KEY).state.value == "closed"
            inner.release.set()
            assert (await client.get(URL)).status_code == 200
    assert inner.connected == 3  # the first call, the holder, the last call


async def test_a_timeout_after_the_connection_was_obtained_still_counts() -> None:
    """An attempt that got its connection and then no answer is the backend's
    failure: three of them open the breaker, as before."""
    inner = PooledTransport(size=4)
    transport = through(inner, Retry(max_attempts=1), breaker(), Timeout(attempt=0.02))
    registry = CircuitRegistry.of(transport.pipeline)
    with anyio.fail_after(10):
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                with pytest.raises(RetriesExhausted) as info:
                    await client.get("https://api.test/hang")
                assert [v.reason for v in info.value.report.verdicts] == ["TimeoutException"]
    assert registry.get(KEY).state.value == "open"


async def test_httpx_pool_timeout_is_not_a_breaker_failure() -> None:
    """httpx's own PoolTimeout (its ``pool=`` timeout): retried, never counted
    against the backend, so the breaker stays closed."""
    inner = ScriptedTransport.of(httpx.PoolTimeout("no connection available"))
    transport = through(inner, Retry(max_attempts=3), breaker())
    registry = CircuitRegistry.of(transport.pipeline)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(4):
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
            assert [v.reason for v in info.value.report.verdicts] == ["PoolTimeout"] * 3
            assert not any(v.breaker_failure for v in info.value.report.verdicts)
    assert registry.get(KEY).state.value == "closed"
    assert len(inner.requests) == 12


async def test_an_untraced_transport_keeps_counting_timeouts() -> None:
    """A transport that never reports progress (a mock, a custom one) gives no way
    to tell queueing from a slow backend: a timed-out attempt counts, as before."""
    from resilience.testing import HangingTransport

    inner = HangingTransport()
    transport = through(inner, Retry(max_attempts=1), breaker(), Timeout(attempt=0.01))
    registry = CircuitRegistry.of(transport.pipeline)
    with anyio.fail_after(10):
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                with pytest.raises(RetriesExhausted):
                    await client.get(URL)
    assert registry.get(KEY).state.value == "open"


def holding_app() -> Any:
    """An ASGI app: ``/hold`` answers once ``/release`` was asked; the rest at once."""
    state: dict[str, asyncio.Event] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        release = state.setdefault("release", asyncio.Event())
        if scope["path"] == "/hold":
            await release.wait()
        elif scope["path"] == "/release":
            release.set()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_a_saturated_httpx_pool_over_loopback_opens_no_breaker() -> None:
    """A real httpx pool of one connection, against a healthy loopback server, held
    by a slow request: calls queued behind it time out locally (PoolTimeout, no
    breaker failure), the breaker stays closed, and a trace callback the caller
    set on a request still hears every event and is put back afterwards."""
    heard: list[str] = []

    async def user_trace(name: str, info: dict[str, Any]) -> None:
        heard.append(name)

    async with serve(holding_app()) as base_url:
        inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
        # Long enough for a loaded machine to answer a request that has a connection.
        transport = through(inner, Retry(max_attempts=1), breaker(), Timeout(attempt=0.3))
        registry = CircuitRegistry.of(transport.pipeline)
        held = anyio.Event()

        async def holding(name: str, info: dict[str, Any]) -> None:
            if name.startswith("http11.send_request_headers"):
                held.set()

        async def hold() -> None:
            request = httpx.Request("GET", f"{base_url}/hold", extensions={"trace": holding})
            response = await inner.handle_async_request(request)
            await response.aread()
            await response.aclose()

        try:
            with anyio.fail_after(20):
                async with (
                    httpx.AsyncClient(transport=transport, base_url=base_url) as client,
                    anyio.create_task_group() as tg,
                ):
                    request = client.build_request("GET", "/ok", extensions={"trace": user_trace})
                    assert (await client.send(request)).status_code == 200
                    assert "http11.send_request_headers.started" in heard
                    assert request.extensions["trace"] is user_trace
                    tg.start_soon(hold)
                    await held.wait()
                    for _ in range(3):
                        with pytest.raises(RetriesExhausted) as info:
                            await client.get("/ok")
                        assert [v.reason for v in info.value.report.verdicts] == ["PoolTimeout"]
                    key = next(iter(registry))
                    assert registry.get(key).state.value == "closed"
                    async with httpx.AsyncClient(base_url=base_url) as other:
                        await other.get("/release")
                    assert (await client.get("/ok")).status_code == 200
        finally:
            async with httpx.AsyncClient(base_url=base_url) as other:
                await other.get("/release")
