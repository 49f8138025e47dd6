"""ResilientTransport: a pipeline as an ``httpx.AsyncBaseTransport``.

``httpx.AsyncClient(transport=ResilientTransport(pipeline))`` routes every request
through the pipeline; the inner transport (by default ``httpx.AsyncHTTPTransport()``)
sends each attempt over the network. :class:`resilience.AsyncClient` builds one of
these around every transport httpx makes (default, proxies, mounts).

The library is async only: the sync side of httpx's transport API (what
``httpx.Client`` calls) is implemented here only to fail at once, saying what to use.
"""

from __future__ import annotations

from collections.abc import Coroutine
from types import TracebackType
from typing import Any, NoReturn

import httpx

from ._pipeline import Pipeline
from .errors import ConfigurationError

__all__ = ["ResilientTransport"]

_ASYNC_ONLY = (
    "ResilientTransport is async only, and httpx.Client is the sync client: use "
    "httpx.AsyncClient(transport=ResilientTransport(pipeline)) or "
    "resilience.AsyncClient(pipeline, ...), under asyncio or trio"
)


class ResilientTransport(httpx.AsyncBaseTransport):
    """Plugs a :class:`Pipeline` into ``httpx.AsyncClient``.

    Args:
        pipeline: the layers and classifier every request goes through.
        inner: the transport that sends attempts (default: a new
            ``httpx.AsyncHTTPTransport()``); token fetches use it too. It must be
            async: a sync transport (``httpx.HTTPTransport``) is a ConfigurationError.

    ``transport=`` replaces httpx's own transport, so the client's ``limits``,
    ``verify``, ``cert``, ``http2`` and ``trust_env`` do not reach this one, and
    httpx sends proxied and mounted URLs around it: :class:`resilience.AsyncClient`
    does all of that right. A sync ``httpx.Client`` fails on first use with a
    TypeError that says so.
    """

    def __init__(self, pipeline: Pipeline, inner: httpx.AsyncBaseTransport | None = None) -> None:
        if not isinstance(pipeline, Pipeline):
            raise ConfigurationError(
                f"ResilientTransport: pipeline must be a Pipeline, got {type(pipeline).__name__}"
            )
        if inner is not None and not (
            isinstance(inner, httpx.AsyncBaseTransport)
            or callable(getattr(inner, "handle_async_request", None))
        ):
            raise ConfigurationError(_not_async(inner))
        self.pipeline = pipeline
        self.inner: httpx.AsyncBaseTransport = (
            inner if inner is not None else httpx.AsyncHTTPTransport()
        )

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        # The pipeline's own coroutine, handed back: a call costs one frame less.
        return self.pipeline.handle(request, self.inner)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> ResilientTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"ResilientTransport({self.pipeline!r}, inner={type(self.inner).__name__})"

    # httpx.Client calls these; each fails with the same explanation rather than
    # an AttributeError (or, for the request, a coroutine never awaited).
    def handle_request(self, request: httpx.Request) -> NoReturn:
        raise TypeError(_ASYNC_ONLY)

    def close(self) -> NoReturn:
        raise TypeError(_ASYNC_ONLY)

    def __enter__(self) -> NoReturn:
        raise TypeError(_ASYNC_ONLY)

    def __exit__(self, *exc_info: object) -> NoReturn:
        raise TypeError(_ASYNC_ONLY)


def _not_async(inner: object) -> str:
    kind = type(inner)
    name = f"{kind.__module__}.{kind.__qualname__}".replace("httpx._transports.default.", "httpx.")
    if isinstance(inner, httpx.BaseTransport):
        return (
            f"inner must be an async transport (httpx.AsyncBaseTransport); {name} is a sync "
            "one, and resilience is async only: use httpx.AsyncHTTPTransport(...) "
            "(or httpx.MockTransport, which is both)"
        )
    return f"inner must be an async transport (httpx.AsyncBaseTransport), got {name}"
