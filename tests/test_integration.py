"""The layers together: the full stack, cancellation at every stage, concurrency.

The stack under test is the one the README recommends::

    Pipeline([Timeout(total=...), PartialFailureSplitter(), Retry(...),
              CircuitBreaker(...), AuthRefresh(provider), Timeout(attempt=...)])

plus the vendor presets. Each layer has its own unit tests; these look at the seams:
what one layer leaves behind for the next when a call is cancelled, replayed,
retried, split or rejected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import resilience
from resilience import (
    Action,
    AuthRefresh,
    CircuitBreaker,
    CircuitRegistry,
    CircuitState,
    ExponentialBackoff,
    HttpClassifier,
    PartialFailureSplitter,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    Split,
    Timeout,
    Token,
    Verdict,
)
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    PermanentError,
    RetriesExhausted,
)
from resilience.testing import ClosingStream, ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
HOST_KEY = "https://api.test:443"
STEADY = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
#: A real-time guard around every call: a deadlock fails the test instead of hanging it.
GUARD = 5.0
OK_BODY = {"items": [{"id": 1}]}

Step = httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response]


# --- test doubles ------------------------------------------------------------------


class Provider:
    """A token provider that counts its fetches and can hang one in flight."""

    def __init__(self, *, expires_in: float | None = None) -> None:
        self.fetches = 0
        self.expires_in = expires_in
        self.entered: anyio.Event | None = None

    def hold_next(self) -> anyio.Event:
        """Make the next fetch hang (forever) once it started; return its start event."""
        self.entered = anyio.Event()
        return self.entered

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """A new token ``t<n>``; yields a few times so concurrent callers pile up."""
        self.fetches += 1
        value = f"t{self.fetches}"
        entered, self.entered = self.entered, None
        if entered is not None:
            entered.set()
            await anyio.sleep_forever()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        return Token(value, expires_in=self.expires_in)


class Wire(httpx.AsyncBaseTransport):
    """The inner transport: plays queued steps, records every request and its body.

    Responses go through a :class:`ScriptedTransport`, so ``unclosed()`` tells
    whether every response handed out was closed. A request can be held in flight.
    """

    def __init__(self, *steps: Step, default: Callable[[httpx.Request], httpx.Response] | None = None):
        self.queue: list[Step] = list(steps)
        self.default = default or (lambda request: reply(200, json=OK_BODY))
        self.scripted = ScriptedTransport.of(self._play)
        self.sent: list[tuple[httpx.Request, bytes | None]] = []
        self._hold: Callable[[httpx.Request], bool] | None = None
        self._entered: anyio.Event | None = None

    def then(self, *steps: Step) -> None:
        """Queue more steps."""
        self.queue.extend(steps)

    def hold_next(self, when: Callable[[httpx.Request], bool] = lambda r: True) -> anyio.Event:
        """Hang the next request matching ``when`` before it is answered."""
        self._hold = when
        self._entered = anyio.Event()
        return self._entered

    def _play(self, request: httpx.Request) -> httpx.Response:
        step = self.queue.pop(0) if self.queue else self.default
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            body: bytes | None = await request.aread()
        except httpx.StreamConsumed:
            body = None
        self.sent.append((request, body))
        hold = self._hold
        if hold is not None and hold(request):
            self._hold = None
            assert self._entered is not None
            self._entered.set()
            await anyio.sleep_forever()
        return await self.scripted.handle_async_request(request)

    def unclosed(self) -> list[httpx.Response]:
        """Responses handed out and never closed."""
        return self.scripted.unclosed()

    @property
    def count(self) -> int:
        """Requests that reached the wire."""
        return len(self.sent)

    def tokens(self) -> list[str | None]:
        """The Authorization header of every request sent."""
        return [request.headers.get("authorization") for request, _ in self.sent]


class HangingStream(ClosingStream):
    """A body that sends its first byte, then hangs (a stalled connection)."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.started = anyio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body[:1]
        self.started.set()
        await anyio.sleep_forever()


class PausingClock(VirtualClock):
    """A VirtualClock whose next sleep can be made to hang (a backoff in progress)."""

    pause: anyio.Event | None = None

    def hold_next_sleep(self) -> anyio.Event:
        """Make the next positive sleep hang forever; return the event set when it starts."""
        self.pause = anyio.Event()
        return self.pause

    async def sleep(self, seconds: float) -> None:
        """Record the sleep; hang if asked to, else return at once."""
        entered = self.pause
        if entered is not None and seconds > 0:
            self.pause = None
            self.sleeps.append(seconds)
            entered.set()
            await anyio.sleep_forever()
        await super().sleep(seconds)


class PartsClassifier(HttpClassifier):
    """The generic classifier, plus partial success.

    A 200 whose JSON body has a non-empty ``failed`` object is a SPLIT: each named
    part failed transiently (RETRY) and can be re-asked alone with ``?part=<name>``.
    """

    vendor = "parts"
    needs_body = True  # type: ignore[assignment]

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        """SPLIT for a 200 naming failed parts, else the generic reading."""
        if response is not None and response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("failed"):
                return Verdict(Action.SPLIT, breaker_failure=False)
        return super().classify(request, response, error)

    def split(self, request: httpx.Request, response: httpx.Response, verdict: Verdict) -> Split:
        """The items that came back; every failed part is RETRY."""
        body = response.json()
        failures = {
            part: Verdict(Action.RETRY, problem=Problem(vendor="parts", code="part_down"))
            for part in body.get("failed", {})
        }
        return Split(payload={"items": body.get("items", [])}, failures=failures)

    def narrow(self, request: httpx.Request, parts: tuple[str, ...]) -> httpx.Request | None:
        """The same request for one part (``?part=<name>``)."""
        if len(parts) != 1:
            return None
        return httpx.Request(
            request.method,
            request.url.copy_set_param("part", parts[0]),
            headers=httpx.Headers(request.headers),
        )


def split_body(items: list[Any], failed: list[str]) -> httpx.Response:
    """A partial success: ``items`` came back, ``failed`` parts did not."""
    return reply(200, json={"items": items, "failed": {part: "down" for part in failed}})


def full_stack(
    provider: Provider,
    *,
    clock: VirtualClock,
    total: float = 60.0,
    attempt: float = 10.0,
    retry: Retry | None = None,
    breaker: CircuitBreaker | None = None,
    classifier: Any = None,
    **options: Any,
) -> Pipeline:
    """The README's stack, on a virtual clock, with steady (jitter-free) backoff."""
    return Pipeline(
        [
            Timeout(total=total),
            PartialFailureSplitter(backoff=STEADY),
            retry or Retry(max_attempts=3, backoff=STEADY),
            breaker or CircuitBreaker(failure_ratio=0.5, minimum_calls=20, break_duration=30.0),
            AuthRefresh(provider),
            Timeout(attempt=attempt),
        ],
        classifier=classifier if classifier is not None else PartsClassifier(),
        clock=clock,
        **options,
    )


def client_for(pipeline: Pipeline, wire: Wire) -> httpx.AsyncClient:
    """An AsyncClient routed through ``pipeline`` onto ``wire``."""
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=wire))


async def get(client: httpx.AsyncClient, url: str = URL, **kwargs: Any) -> httpx.Response:
    """``client.get`` under a real-time guard (nothing here should really wait)."""
    with anyio.fail_after(GUARD):
        return await client.get(url, **kwargs)


async def cancel_once(entered: anyio.Event, call: Callable[[], Awaitable[object]]) -> None:
    """Run ``call``, wait until it reaches ``entered``, then cancel it."""
    finished: list[object] = []

    async def run() -> None:
        finished.append(await call())

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await entered.wait()
            tg.cancel_scope.cancel()
    assert finished == [], "the call finished instead of being cancelled"


def circuit(pipeline: Pipeline, key: str = HOST_KEY) -> resilience.Circuit:
    """The host's circuit in ``pipeline``'s (innermost) breaker."""
    return CircuitRegistry.of(pipeline).get(key)


def actions(report: resilience.CallReport) -> list[Action]:
    """The action of each attempt's verdict."""
    return [verdict.action for verdict in report.verdicts]


async def open_then_half_open(client: httpx.AsyncClient, pipeline: Pipeline, clock: VirtualClock) -> None:
    """Trip the host's breaker (minimum_calls=1) with a 503, then let it half-open."""
    with pytest.raises(CircuitOpenError):
        await get(client)
    assert circuit(pipeline).state is CircuitState.OPEN
    clock.advance(circuit(pipeline).retry_after)
    assert circuit(pipeline).state is CircuitState.HALF_OPEN


def tripping_breaker() -> CircuitBreaker:
    """A breaker that opens on the first failure, for 30 s."""
    return CircuitBreaker(failure_ratio=0.5, minimum_calls=1, break_duration=30.0)
