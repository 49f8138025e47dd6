"""Scripted transports for tests: an inner ``httpx`` transport that plays a script.

A test puts one of these under :class:`~resilience.ResilientTransport` (or uses
:func:`through`, which builds the pipeline too) and asserts on what the pipeline
sent and whether every response body was closed (:meth:`ScriptedTransport.unclosed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import anyio
import attrs
import httpx

from .._clock import Clock, VirtualClock
from .._pipeline import Pipeline
from .._transport import ResilientTransport

__all__ = [
    "ClosingStream",
    "HangingTransport",
    "ScriptedTransport",
    "StallingStream",
    "reply",
    "through",
]


Step = httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response]


class ClosingStream(httpx.AsyncByteStream):
    """A response body that records whether it was closed (a stand-in connection)."""

    def __init__(self, body: bytes = b"", chunks: int = 1) -> None:
        self.body = body
        self.chunks = max(chunks, 1)
        self.closed = False
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = max(len(self.body) // self.chunks, 1)
        for start in range(0, len(self.body), size):
            yield self.body[start : start + size]
        self.read = True

    async def aclose(self) -> None:
        self.closed = True


class StallingStream(ClosingStream):
    """A response body that sends its bytes, then never sends more (a stalled peer)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        await anyio.sleep_forever()


class HangingTransport(httpx.AsyncBaseTransport):
    """An inner transport that never answers, for cancellation and timeout tests.

    :attr:`started` is set once a request arrives, so a test can cancel the call
    while it is on the wire.
    """

    def __init__(self) -> None:
        self.started = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


def reply(
    status: int = 200,
    *,
    json: Any = None,
    content: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A response whose body stream records ``aclose`` (see :class:`ClosingStream`)."""
    if json is not None:
        built = httpx.Response(status, json=json, headers=headers)
        body = built.content
        merged = dict(built.headers)
    else:
        raw = content.encode() if isinstance(content, str) else (content or b"")
        body = raw
        merged = {"content-length": str(len(raw)), **(headers or {})}
    return httpx.Response(status, headers=merged, stream=ClosingStream(body))


def _steps(steps: Iterable[Step]) -> list[Step]:
    script = list(steps)
    if not script:
        raise ValueError("ScriptedTransport needs at least one step")
    return script


@attrs.define(eq=False)
class ScriptedTransport(httpx.AsyncBaseTransport):
    """An inner transport that plays a script: responses, exceptions or callables.

    Each request takes the next step (the last one repeats). Every request is kept
    in :attr:`requests`; every response handed out in :attr:`responses`, so a test
    can check they were all closed.
    """

    script: list[Step] = attrs.field(converter=_steps)
    requests: list[httpx.Request] = attrs.field(factory=list, init=False)
    responses: list[httpx.Response] = attrs.field(factory=list, init=False)
    closed: bool = attrs.field(default=False, init=False)
    _streams: list[Any] = attrs.field(factory=list, init=False)
    """The body stream each response was handed out with (the pipeline may give a
    response a new stream once it has read the body; the original is the one a
    real connection would hold)."""

    @classmethod
    def of(cls, *steps: Step) -> ScriptedTransport:
        """A transport playing ``steps`` in order."""
        return cls(list(steps))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(len(self.requests), len(self.script) - 1)
        self.requests.append(request)
        step = self.script[index]
        if isinstance(step, BaseException):
            raise step
        response = step(request) if callable(step) else _copy(step)
        self.responses.append(response)
        self._streams.append(response.stream)
        return response

    async def aclose(self) -> None:
        self.closed = True

    def unclosed(self) -> list[httpx.Response]:
        """Responses whose body stream was never closed (a leaked connection)."""
        return [
            response
            for response, stream in zip(self.responses, self._streams, strict=True)
            if isinstance(stream, ClosingStream) and not stream.closed
        ]


def _copy(response: httpx.Response) -> httpx.Response:
    """A fresh copy of a scripted response (so a repeated step is a new stream)."""
    stream = response.stream
    body = stream.body if isinstance(stream, ClosingStream) else response.read()
    return httpx.Response(
        response.status_code, headers=response.headers, stream=ClosingStream(body)
    )


def through(
    inner: httpx.AsyncBaseTransport,
    *layers: Any,
    clock: Clock | None = None,
    **options: Any,
) -> ResilientTransport:
    """``ResilientTransport(Pipeline(layers, **options), inner=inner)`` for a test.

    The pipeline runs on ``clock`` (a new :class:`VirtualClock` by default) with
    telemetry off unless ``telemetry=True`` is passed; ``options`` are the other
    :class:`~resilience.Pipeline` arguments (``classifier``, ``hooks``, ...).
    """
    options.setdefault("telemetry", False)
    pipeline = Pipeline(
        list(layers), clock=clock if clock is not None else VirtualClock(), **options
    )
    return ResilientTransport(pipeline, inner=inner)
