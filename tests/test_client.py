"""resilience.AsyncClient: httpx's options reach the connections, and every route
(default, proxy, environment proxy, mounts) runs the pipeline.

The proxy and the origin are real servers on loopback, written here with anyio
sockets: the origin answers from a script of statuses and counts its connections;
the proxy is a plain HTTP forward proxy that records each request it relays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

import resilience
from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience.errors import ConfigurationError, RetriesExhausted
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

MAX_HEAD = 64 * 1024


def pipeline(max_attempts: int = 3) -> Pipeline:
    """Retry on the generic classifier, on virtual time, telemetry off."""
    return Pipeline(
        [Retry(max_attempts=max_attempts, backoff=ExponentialBackoff(initial=1.0, jitter="none"))],
        classifier="http",
        clock=VirtualClock(),
        telemetry=False,
    )


async def read_head(stream: anyio.abc.ByteStream) -> bytes | None:
    """One request or response head, or None when the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
        assert len(data) < MAX_HEAD
    return data.split(b"\r\n\r\n", 1)[0]


class Origin:
    """An HTTP/1.1 server answering GETs with the next scripted status (then 200)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.connections = 0
        self.requests: list[str] = []
        self.port = 0

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with stream:
            while (head := await read_head(stream)) is not None:
                lines = head.decode("latin-1").split("\r\n")
                self.requests.append(lines[0])
                status = self.statuses.pop(0) if self.statuses else 200
                closing = any(line.lower() == "connection: close" for line in lines[1:])
                body = f"origin {status}".encode()
                await stream.send(
                    f"HTTP/1.1 {status} Scripted\r\nContent-Length: {len(body)}\r\n".encode()
                    + (b"Connection: close\r\n" if closing else b"")
                    + b"\r\n"
                    + body
                )
                if closing:
                    return


class Proxy:
    """A forward proxy for plain-http absolute-form requests, to loopback only."""

    def __init__(self) -> None:
        self.relayed: list[str] = []
        self.port = 0

    async def handle(self, client: anyio.abc.ByteStream) -> None:
        async with client:
            while (head := await read_head(client)) is not None:
                request_line, *headers = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ")
                self.relayed.append(f"{method} {target}")
                url = httpx.URL(target)
                assert url.host == "127.0.0.1", url  # never anything but loopback
                kept = [
                    h
                    for h in headers
                    if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))
                ]
                upstream = await anyio.connect_tcp("127.0.0.1", url.port or 80)
                async with upstream:
                    origin_form = url.raw_path.decode("latin-1")
                    await upstream.send(
                        f"{method} {origin_form} HTTP/1.1\r\n".encode()
                        + "".join(f"{h}\r\n" for h in kept).encode()
                        + b"Connection: close\r\n\r\n"
                    )
                    # The origin closes after its answer (Connection: close above),
                    # and so does this proxy, which the answer's header says.
                    while True:
                        try:
                            await client.send(await upstream.receive())
                        except anyio.EndOfStream:
                            return


@asynccontextmanager
async def serving(*servers: Origin | Proxy) -> AsyncIterator[None]:
    """Serve each server on a loopback port until the block ends."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as group:
        for server in servers:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            stack.push_async_callback(listener.aclose)
            server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            group.start_soon(listener.serve, server.handle)
        yield
        group.cancel_scope.cancel()


@contextmanager
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No proxy variable from the machine leaks into a test."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield


async def test_retries_go_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``proxy=``, every attempt goes through the proxy and the pipeline: a 503
    then a 200 is one call of two attempts, both relayed by the proxy."""
    origin, proxy = Origin(503), Proxy()
    with no_env_proxy(monkeypatch):
        async with serving(origin, proxy):
            url = f"http://127.0.0.1:{origin.port}/v1/devices?page=2"
            async with resilience.AsyncClient(
                pipeline(), proxy=f"http://127.0.0.1:{proxy.port}"
            ) as client:
                r = await client.get(url)
    assert r.status_code == 200
    assert r.text == "origin 200"
    assert r.extensions["resilience"].attempts == 2
    assert proxy.relayed == [f"GET {url}", f"GET {url}"]
    assert origin.requests == ["GET /v1/devices?page=2 HTTP/1.1"] * 2


async def test_plain_httpx_with_a_transport_sends_proxied_urls_around_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the client exists: ``httpx.AsyncClient(transport=..., proxy=...)`` sends
    the request through the proxy but not through the pipeline (one attempt, the
    503 comes back unretried and without a report)."""
    origin, proxy = Origin(503), Proxy()
    with no_env_proxy(monkeypatch):
        async with (
            serving(origin, proxy),
            httpx.AsyncClient(
                transport=ResilientTransport(pipeline()), proxy=f"http://127.0.0.1:{proxy.port}"
            ) as client,
        ):
            r = await client.get(f"http://127.0.0.1:{origin.port}/")
    assert r.status_code == 503
    assert "resilience" not in r.extensions
    assert len(proxy.relayed) == 1


async def test_environment_proxy_goes_through_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``trust_env`` (httpx's default) the HTTP_PROXY variable is honoured, and
    that route runs the pipeline too; ``trust_env=False`` goes direct."""
    origin, proxy = Origin(503, 503), Proxy()
    with no_env_proxy(monkeypatch):
        async with serving(origin, proxy):
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            url = f"http://127.0.0.1:{origin.port}/status"
            async with resilience.AsyncClient(pipeline()) as client:
                r = await client.get(url)
            assert (r.status_code, r.extensions["resilience"].attempts) == (200, 3)
            assert proxy.relayed == [f"GET {url}"] * 3
            async with resilience.AsyncClient(pipeline(), trust_env=False) as client:
                r = await client.get(url)
            assert (r.status_code, r.extensions["resilience"].attempts) == (200, 1)
            assert len(proxy.relayed) == 3


async def test_limits_reach_the_connection_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """``limits=`` applies to the connections the pipeline's attempts use: by default
    three calls share one kept-alive connection; with no keep-alive each opens its
    own."""
    with no_env_proxy(monkeypatch):
        kept, fresh = Origin(), Origin()
        async with serving(kept, fresh):
            async with resilience.AsyncClient(pipeline()) as client:
                for _ in range(3):
                    await client.get(f"http://127.0.0.1:{kept.port}/")
            no_keepalive = httpx.Limits(max_keepalive_connections=0)
            async with resilience.AsyncClient(pipeline(), limits=no_keepalive) as client:
                for _ in range(3):
                    r = await client.get(f"http://127.0.0.1:{fresh.port}/")
                    assert r.extensions["resilience"].attempts == 1
    assert (kept.connections, fresh.connections) == (1, 3)


async def test_mounts_run_the_pipeline() -> None:
    """Every mounted transport is wrapped: a mounted host's 503 is retried like the
    default route's; a mounted ResilientTransport keeps its own pipeline."""
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(503 if seen.count(str(request.url)) == 1 else 200)

    strict = pipeline(max_attempts=1)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        "https://mounted.test": httpx.MockTransport(flaky),
        "https://own-policy.test": ResilientTransport(strict, inner=httpx.MockTransport(flaky)),
    }
    async with resilience.AsyncClient(
        pipeline(), transport=httpx.MockTransport(flaky), mounts=mounts
    ) as client:
        r = await client.get("https://mounted.test/a")
        assert (r.status_code, r.extensions["resilience"].attempts) == (200, 2)
        r = await client.get("https://default.test/b")
        assert (r.status_code, r.extensions["resilience"].attempts) == (200, 2)
        with pytest.raises(RetriesExhausted) as info:
            await client.get("https://own-policy.test/c")
        assert info.value.report.attempts == 1


async def test_base_url_headers_and_hooks_are_httpx_s() -> None:
    """Everything else is httpx.AsyncClient's own: base_url, headers, event hooks,
    and it is an httpx.AsyncClient."""
    sent: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        sent.append(request)

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ua": request.headers["user-agent"]})

    async with resilience.AsyncClient(
        pipeline(),
        base_url="https://api.test/v1",
        headers={"User-Agent": "mine"},
        event_hooks={"request": [hook]},
        transport=httpx.MockTransport(ok),
    ) as client:
        assert isinstance(client, httpx.AsyncClient)
        r = await client.get("/devices")
    assert r.json() == {"ua": "mine"}
    assert [str(q.url) for q in sent] == ["https://api.test/v1/devices"]
    assert client.pipeline is not None


async def test_closing_the_client_closes_every_route() -> None:
    """``aclose`` closes the default transport and every mounted one."""
    closed: list[str] = []

    class Closing(httpx.MockTransport):
        def __init__(self, name: str) -> None:
            super().__init__(lambda request: httpx.Response(200))
            self.name = name

        async def aclose(self) -> None:
            closed.append(self.name)

    async with resilience.AsyncClient(
        pipeline(), transport=Closing("default"), mounts={"https://m.test": Closing("mount")}
    ):
        pass
    assert sorted(closed) == ["default", "mount"]


def test_rejects_a_non_pipeline_and_sync_transports() -> None:
    """A non-pipeline is a ConfigurationError naming ``pipeline``; a sync transport
    (as ``transport=`` or in ``mounts=``) fails at construction, saying the library
    is async only."""
    with pytest.raises(ConfigurationError, match="AsyncClient: pipeline must be a Pipeline"):
        resilience.AsyncClient("http")  # type: ignore[arg-type]
    sync: Any = httpx.HTTPTransport()
    with pytest.raises(ConfigurationError, match=r"inner .*httpx\.HTTPTransport.*async only"):
        resilience.AsyncClient(pipeline(), transport=sync)
    with pytest.raises(ConfigurationError, match="async only"):
        resilience.AsyncClient(pipeline(), mounts={"https://x.test": sync})
    sync.close()


def test_repr_and_public_name() -> None:
    """It is exported as ``resilience.AsyncClient``."""
    assert resilience.AsyncClient.__module__ == "resilience"
    assert "AsyncClient" in resilience.__all__
