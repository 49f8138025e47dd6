"""ResilientTransport: an httpx transport that passes aclose and async-with through."""

from __future__ import annotations

import httpx
import pytest

from resilience import Pipeline, ResilientTransport, Retry
from resilience.errors import ConfigurationError
from resilience.testing import ScriptedTransport, reply

pytestmark = pytest.mark.anyio


def pipeline() -> Pipeline:
    """A small pipeline with telemetry off."""
    return Pipeline([Retry()], telemetry=False)


async def test_aclose_passes_through() -> None:
    """``aclose`` closes the inner transport."""
    inner = ScriptedTransport.of(reply(200))
    transport = ResilientTransport(pipeline(), inner=inner)
    await transport.aclose()
    assert inner.closed


async def test_async_with_passes_through() -> None:
    """``async with`` enters the inner transport and closes it on the way out."""
    entered: list[str] = []

    class Inner(ScriptedTransport):
        async def __aenter__(self) -> Inner:
            entered.append("enter")
            return self

    inner = Inner([reply(200)])
    transport = ResilientTransport(pipeline(), inner=inner)
    async with transport as entered_transport:
        assert entered_transport is transport
        assert entered == ["enter"]
        assert not inner.closed
    assert inner.closed


async def test_client_close_closes_the_inner_transport() -> None:
    """Closing the AsyncClient closes the inner transport too."""
    inner = ScriptedTransport.of(reply(200))
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline(), inner=inner)) as client:
        r = await client.get("https://api.test/")
        assert r.status_code == 200
    assert inner.closed


async def test_default_inner_is_the_httpx_transport() -> None:
    """Without ``inner``, attempts go through a new httpx.AsyncHTTPTransport."""
    transport = ResilientTransport(pipeline())
    assert isinstance(transport.inner, httpx.AsyncHTTPTransport)
    await transport.aclose()


async def test_works_with_httpx_mock_transport() -> None:
    """Any httpx transport can be the inner one (here httpx.MockTransport)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"n": len(calls)})

    transport = ResilientTransport(pipeline(), inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        r = await client.get("/v1/devices")
    assert r.json() == {"n": 1}
    assert calls == ["/v1/devices"]
    assert r.extensions["resilience"].attempts == 1


def test_rejects_a_non_pipeline() -> None:
    """The first argument must be a Pipeline: a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="ResilientTransport: pipeline must be a Pipeline"):
        ResilientTransport([Retry()])  # type: ignore[arg-type]


def test_repr() -> None:
    """The repr names the pipeline and the inner transport's type."""
    transport = ResilientTransport(pipeline(), inner=ScriptedTransport.of(reply(200)))
    assert repr(transport) == (
        "ResilientTransport(Pipeline([Retry], classifier='http'), inner=ScriptedTransport)"
    )


def test_scripted_transport_needs_a_step() -> None:
    """An empty script is a mistake caught at construction, not on the first request."""
    with pytest.raises(ValueError, match="at least one step"):
        ScriptedTransport([])


def test_a_sync_client_fails_at_once_saying_async_only() -> None:
    """``httpx.Client(transport=ResilientTransport(...))``: entering the client or
    sending a request raises a TypeError naming what to use instead (not an
    AttributeError about ``__enter__``)."""
    transport = ResilientTransport(pipeline(), inner=ScriptedTransport.of(reply(200)))
    client = httpx.Client(transport=transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"async only.*httpx\.AsyncClient"):
        client.get("https://api.test/")
    fresh = httpx.Client(transport=transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"resilience\.AsyncClient"), fresh:
        pass


def test_a_sync_inner_transport_is_refused_at_construction() -> None:
    """A sync transport as ``inner`` is a ConfigurationError that names the argument,
    says the library is async only and names the async transport to use."""
    sync = httpx.HTTPTransport()
    with pytest.raises(
        ConfigurationError, match=r"^inner .*httpx\.HTTPTransport.*async only"
    ) as info:
        ResilientTransport(pipeline(), inner=sync)  # type: ignore[arg-type]
    assert "httpx.AsyncHTTPTransport" in str(info.value)
    sync.close()
    with pytest.raises(ConfigurationError, match="inner must be an async transport"):
        ResilientTransport(pipeline(), inner=object())  # type: ignore[arg-type]


def test_mock_transport_and_duck_typed_inners_are_accepted() -> None:
    """httpx.MockTransport (both sync and async) and any object with
    ``handle_async_request`` are fine as ``inner``."""
    ResilientTransport(pipeline(), inner=httpx.MockTransport(lambda r: httpx.Response(200)))

    class Duck:
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

    ResilientTransport(pipeline(), inner=Duck())  # type: ignore[arg-type]
