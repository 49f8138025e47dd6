"""ResilientTransport: a pipeline as an ``httpx.AsyncBaseTransport``.

``httpx.AsyncClient(transport=ResilientTransport(pipeline))`` routes every request
through the pipeline; the inner transport (by default ``httpx.AsyncHTTPTransport()``)
sends each attempt over the network.
"""

from __future__ import annotations

from types import TracebackType

import httpx

from ._pipeline import Pipeline

__all__ = ["ResilientTransport"]


class ResilientTransport(httpx.AsyncBaseTransport):
    """Plugs a :class:`Pipeline` into ``httpx.AsyncClient``.

    Args:
        pipeline: the layers and classifier every request goes through.
        inner: the transport that sends attempts (default: a new
            ``httpx.AsyncHTTPTransport()``); token fetches use it too.
    """

    def __init__(self, pipeline: Pipeline, inner: httpx.AsyncBaseTransport | None = None) -> None:
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"pipeline must be a Pipeline, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.inner: httpx.AsyncBaseTransport = (
            inner if inner is not None else httpx.AsyncHTTPTransport()
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.pipeline.handle(request, self.inner)

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
