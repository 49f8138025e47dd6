"""AsyncClient: an ``httpx.AsyncClient`` with a pipeline on every transport it builds.

Where it sits: it is the user's entry point above :class:`ResilientTransport`.
httpx builds one transport for plain requests, one per proxy (``proxy=`` and, with
``trust_env``, the ``*_PROXY`` variables) and takes ``mounts=`` for the rest; each
request goes to exactly one of them. This client lets httpx build them all from its
own options, then puts each inside a :class:`ResilientTransport`, so every route
runs the same pipeline and keeps the client's settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ._pipeline import Pipeline
from ._transport import ResilientTransport
from .errors import ConfigurationError

__all__ = ["AsyncClient"]


class AsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose every request goes through ``pipeline``.

    Example::

        pipeline = resilience.standard_pipeline("http")
        async with resilience.AsyncClient(
            pipeline, base_url="https://api.example", limits=httpx.Limits(max_connections=20),
            proxy="http://proxy.internal:3128", http2=True,
        ) as client:
            r = await client.get("/v1/things")

    Args:
        pipeline: the layers and classifier (a :class:`Pipeline`, for instance from
            :func:`standard_pipeline`).
        **options: anything ``httpx.AsyncClient`` takes, with the meaning it has
            there: ``base_url``, ``headers``, ``auth``, ``timeout``, ``limits``,
            ``verify``, ``cert``, ``http1``, ``http2``, ``proxy``, ``mounts``,
            ``trust_env``, ``transport``, ``event_hooks``, ...

    Why not ``httpx.AsyncClient(transport=ResilientTransport(pipeline))``: a
    ``transport=`` replaces the one httpx would build, so ``limits``, ``verify``,
    ``cert``, ``http1``/``http2`` and ``trust_env`` given to the client never reach
    a connection pool, and httpx sends proxied URLs (``proxy=`` or the environment's
    ``HTTPS_PROXY``) and mounted ones to other transports, past the pipeline: no
    retries, no breaker, no token refresh for them. Here httpx builds each of those
    transports as usual, and each is wrapped:

    * the default transport, from the connection options (or your ``transport=``,
      which then sends the attempts);
    * every proxy transport, from ``proxy=`` or, with ``trust_env``, the environment;
    * every transport in ``mounts=`` (a ``None`` value keeps httpx's meaning: no
      proxy for that pattern). A mounted :class:`ResilientTransport` is kept as it
      is, with its own pipeline: that is how one host gets a different policy.

    One pipeline serves every route, so the circuit breaker and the retry budget
    see all of the client's traffic. Transports must be async
    (``httpx.AsyncBaseTransport``); a sync one fails here with a ConfigurationError.
    """

    pipeline: Pipeline
    """The pipeline every route runs."""

    def __init__(self, pipeline: Pipeline, /, **options: Any) -> None:
        if not isinstance(pipeline, Pipeline):
            raise ConfigurationError(
                f"AsyncClient: pipeline must be a Pipeline, got {type(pipeline).__name__}"
            )
        # httpx's __init__ calls the two builders below, which read it.
        self.pipeline = pipeline
        mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = options.pop("mounts", None)
        if mounts is not None:
            options["mounts"] = {pattern: self._resilient(t) for pattern, t in mounts.items()}
        super().__init__(**options)

    # The two places httpx builds a transport from the client's options. Arguments
    # pass through untouched, so whatever this httpx version takes keeps working.
    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        transport = self._resilient(super()._init_transport(*args, **kwargs))
        assert transport is not None  # httpx always builds the default one
        return transport

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        transport = self._resilient(super()._init_proxy_transport(*args, **kwargs))
        assert transport is not None
        return transport

    def _resilient(
        self, transport: httpx.AsyncBaseTransport | None
    ) -> httpx.AsyncBaseTransport | None:
        if transport is None or isinstance(transport, ResilientTransport):
            return transport
        return ResilientTransport(self.pipeline, inner=transport)
