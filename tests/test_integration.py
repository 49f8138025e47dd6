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
        self.held_by: int | None = None

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
            self.held_by = anyio.get_current_task().id
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

    def __init__(
        self, *steps: Step, default: Callable[[httpx.Request], httpx.Response] | None = None
    ):
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
        await anyio.lowlevel.checkpoint()  # the network: other tasks run meanwhile
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


async def open_then_half_open(
    client: httpx.AsyncClient, pipeline: Pipeline, clock: VirtualClock
) -> None:
    """Trip the host's breaker (minimum_calls=1) with a 503, then let it half-open."""
    with pytest.raises(RetriesExhausted) as tripped:
        await get(client)
    assert tripped.value.report.gave_up == "circuit_open"
    assert circuit(pipeline).state is CircuitState.OPEN
    clock.advance(circuit(pipeline).retry_after)
    assert circuit(pipeline).state is CircuitState.HALF_OPEN


def tripping_breaker() -> CircuitBreaker:
    """A breaker that opens on the first failure, for 30 s."""
    return CircuitBreaker(failure_ratio=0.5, minimum_calls=1, break_duration=30.0)


# --- (1) cancellation at every stage -------------------------------------------------


async def test_cancel_during_token_fetch_frees_the_probe_and_the_auth_lock() -> None:
    """A half-open probe cancelled while its token is being fetched releases both.

    The next call is admitted as a probe (not "probes are busy"), fetches a token
    itself (the refresh lock is free, the cancelled fetch left no token behind) and
    closes the circuit.
    """
    clock = VirtualClock()
    provider = Provider(expires_in=10.0)
    wire = Wire(reply(503))
    pipeline = full_stack(provider, clock=clock, breaker=tripping_breaker())
    async with client_for(pipeline, wire) as client:
        await open_then_half_open(client, pipeline, clock)  # t1 has expired meanwhile
        entered = provider.hold_next()
        await cancel_once(entered, lambda: get(client))
        assert wire.count == 1  # the cancelled call never reached the wire

        response = await get(client)

        assert response.status_code == 200
        assert response.extensions["resilience"].attempts == 1
    assert provider.fetches == 3
    assert wire.tokens()[-1] == "Bearer t3"
    assert circuit(pipeline).state is CircuitState.CLOSED
    assert wire.unclosed() == []


async def test_cancel_during_an_attempt_frees_the_probe() -> None:
    """A half-open probe cancelled on the wire frees its slot; the next call probes."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(503))
    pipeline = full_stack(provider, clock=clock, breaker=tripping_breaker())
    async with client_for(pipeline, wire) as client:
        await open_then_half_open(client, pipeline, clock)
        entered = wire.hold_next()
        await cancel_once(entered, lambda: get(client))
        assert circuit(pipeline).state is CircuitState.HALF_OPEN

        response = await get(client)

        assert response.status_code == 200
    assert circuit(pipeline).state is CircuitState.CLOSED
    assert provider.fetches == 1
    assert wire.count == 3
    assert wire.unclosed() == []


async def test_cancel_while_reading_a_body_closes_the_response() -> None:
    """A probe cancelled while its response body streams in: body closed, slot freed."""
    clock = VirtualClock()
    provider = Provider()
    stream = HangingStream(json.dumps(OK_BODY).encode())
    wire = Wire(reply(503), lambda request: httpx.Response(200, stream=stream))
    pipeline = full_stack(provider, clock=clock, breaker=tripping_breaker())
    async with client_for(pipeline, wire) as client:
        await open_then_half_open(client, pipeline, clock)
        await cancel_once(stream.started, lambda: get(client))
        assert stream.closed

        response = await get(client)

        assert response.json() == OK_BODY
    assert circuit(pipeline).state is CircuitState.CLOSED
    assert wire.unclosed() == []


async def test_cancel_while_reading_a_streamed_success_body_closes_it() -> None:
    """With a classifier that leaves 2xx bodies unread, a cancelled read closes them too.

    Here the pipeline hands the unread response to httpx, which streams it for the
    caller; cancelling that read must still release the connection.
    """
    clock = VirtualClock()
    provider = Provider()
    stream = HangingStream(json.dumps(OK_BODY).encode())
    wire = Wire(lambda request: httpx.Response(200, stream=stream))
    pipeline = full_stack(provider, clock=clock, classifier="http")
    async with client_for(pipeline, wire) as client:
        await cancel_once(stream.started, lambda: get(client))
        assert stream.closed
        response = await get(client)
        assert response.json() == OK_BODY
    assert wire.unclosed() == []


async def test_cancel_during_a_backoff_sleep() -> None:
    """A call cancelled while Retry sleeps leaves nothing open; the next call works."""
    clock = PausingClock()
    provider = Provider()
    wire = Wire(reply(503))
    pipeline = full_stack(provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        entered = clock.hold_next_sleep()
        await cancel_once(entered, lambda: get(client))
        assert clock.sleeps == [1.0]

        response = await get(client)

        assert response.status_code == 200
        assert response.extensions["resilience"].attempts == 1
    assert wire.count == 2
    assert wire.unclosed() == []
    assert circuit(pipeline).calls == 2  # the 503 and the 200; the cancel counts nothing


async def test_a_failed_half_open_probe_ends_at_once_then_a_new_probe_passes() -> None:
    """A probe that fails reopens the breaker: its call ends at once, without a
    backoff sleep that could only end in a rejection. Once the longer break is over,
    the breaker admits a new probe, which closes it.
    """
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(503), reply(503))
    pipeline = full_stack(provider, clock=clock, breaker=tripping_breaker())
    async with client_for(pipeline, wire) as client:
        await open_then_half_open(client, pipeline, clock)
        sleeps = len(clock.sleeps)
        with pytest.raises(RetriesExhausted) as failed:
            await get(client)
        assert failed.value.report.gave_up == "circuit_open"
        assert len(clock.sleeps) == sleeps
        assert circuit(pipeline).state is CircuitState.OPEN
        assert circuit(pipeline).retry_after == pytest.approx(60.0)  # the break doubled
        clock.advance(circuit(pipeline).retry_after)

        response = await get(client)

        assert response.status_code == 200
    assert circuit(pipeline).state is CircuitState.CLOSED
    assert wire.unclosed() == []


async def test_cancel_during_a_splitter_re_request_frees_the_part_probe() -> None:
    """A narrowed re-request cancelled on the wire frees its part's probe slot.

    The part ``solis`` fails in the first answer, which opens its own breaker (one
    failure is enough here); the round's backoff outlasts the break, so the
    re-request is that breaker's half-open probe. Cancelled, it must give the slot
    back; the original answer's body is closed.
    """
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(split_body([{"id": 1}], ["solis"]))
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_calls=1, break_duration=1.0)
    pipeline = full_stack(provider, clock=clock, breaker=breaker)
    part_key = "parts:solis"
    async with client_for(pipeline, wire) as client:
        entered = wire.hold_next(lambda request: request.url.params.get("part") == "solis")
        await cancel_once(entered, lambda: get(client))
        assert wire.count == 2
        registry = CircuitRegistry.of(pipeline)
        assert registry.get(part_key).state is CircuitState.HALF_OPEN
        assert registry.allow(part_key) is None  # a probe slot is free
        registry.release(part_key)

        response = await get(client)

        assert response.json() == OK_BODY
    assert wire.unclosed() == []


async def test_cancel_during_a_derapi_re_request() -> None:
    """The Derapi preset: a backend re-asked alone, cancelled in flight, leaks nothing."""
    clock = VirtualClock()
    provider = Provider(expires_in=3600.0)
    partial = {
        "sites": [{"id": "s1", "vendor": "sma"}],
        "errors": {"solis": "Backend Server Error: upstream 502"},
    }
    whole = {"sites": [{"id": "s1", "vendor": "sma"}, {"id": "s2", "vendor": "solis"}]}
    wire = Wire(reply(200, json=partial), default=lambda request: reply(200, json=whole))
    pipeline = resilience.standard_pipeline("derapi", auth=provider, clock=clock)
    url = "https://api.derapi.test/sites"
    async with client_for(pipeline, wire) as client:
        entered = wire.hold_next(lambda request: request.url.params.get("vendor") == "solis")
        await cancel_once(entered, lambda: get(client, url))
        assert [r.url.params.get("vendor") for r, _ in wire.sent] == [None, "solis"]

        response = await get(client, url)

        assert response.json() == whole
        assert response.extensions["resilience"].attempts == 1
    assert provider.fetches == 1
    assert wire.unclosed() == []


async def test_cancel_while_reading_the_token_endpoints_answer() -> None:
    """OAuth2 client credentials over the same wire: a token answer cut mid-read is closed.

    The next call fetches again (nothing was cached from the cancelled fetch) and
    sends the new token.
    """
    clock = VirtualClock()
    token_body = {"access_token": "abc", "expires_in": 3600, "token_type": "bearer"}
    stalled = HangingStream(json.dumps(token_body).encode())

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/oauth/token":
            return reply(200, json=OK_BODY)
        if not stalled.closed:
            return httpx.Response(200, headers={"content-type": "application/json"}, stream=stalled)
        return reply(200, json=token_body)

    wire = Wire(default=route)
    provider = resilience.OAuth2ClientCredentials(
        token_url="https://api.test/oauth/token", client_id="id", client_secret="secret"
    )
    pipeline = full_stack(provider, clock=clock)  # type: ignore[arg-type]
    async with client_for(pipeline, wire) as client:
        await cancel_once(stalled.started, lambda: get(client))
        assert stalled.closed

        response = await get(client)

        assert response.json() == OK_BODY
    assert [r.url.path for r, _ in wire.sent] == ["/oauth/token", "/oauth/token", "/v1/things"]
    assert wire.tokens()[-1] == "Bearer abc"
    assert wire.unclosed() == []


# --- (2) a crowd with an expired token ------------------------------------------------


async def test_500_concurrent_calls_with_an_expired_token_fetch_once() -> None:
    """500 calls at once after the token expired: one fetch, 500 successes, 1 attempt each."""
    clock = VirtualClock()
    provider = Provider(expires_in=60.0)
    wire = Wire()
    pipeline = full_stack(provider, clock=clock)
    responses: list[httpx.Response] = []
    async with client_for(pipeline, wire) as client:
        await get(client)  # t1
        clock.advance(120.0)

        async def one() -> None:
            responses.append(await client.get(URL))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(one)

    assert provider.fetches == 2
    assert len(responses) == 500
    assert all(r.status_code == 200 for r in responses)
    assert all(r.extensions["resilience"].attempts == 1 for r in responses)
    assert all(actions(r.extensions["resilience"]) == [Action.ACCEPT] for r in responses)
    assert wire.tokens()[1:] == ["Bearer t2"] * 500
    assert wire.unclosed() == []


async def test_500_concurrent_calls_rejected_with_401_refresh_once() -> None:
    """500 calls whose token the server revoked: one refresh, each replayed once."""
    clock = VirtualClock()
    provider = Provider()
    revoked: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") in revoked:
            return reply(401)
        return reply(200, json=OK_BODY)

    wire = Wire(default=answer)
    pipeline = full_stack(provider, clock=clock)
    responses: list[httpx.Response] = []
    async with client_for(pipeline, wire) as client:
        await get(client)  # fetches t1 (accepted until now)
        revoked.add("Bearer t1")

        async def one() -> None:
            responses.append(await client.get(URL))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(one)

    assert provider.fetches == 2
    assert all(r.status_code == 200 for r in responses)
    reports = [r.extensions["resilience"] for r in responses]
    assert all(report.attempts == 2 for report in reports)
    assert all(actions(report) == [Action.REFRESH_AUTH, Action.ACCEPT] for report in reports)
    assert all(report.delays == [] for report in reports)
    assert wire.unclosed() == []
    assert circuit(pipeline).failure_ratio == 0.0


async def test_cancelling_the_fetching_caller_does_not_strand_the_crowd() -> None:
    """The caller whose task runs the shared fetch is cancelled: the others carry on.

    100 calls need a new token; the fetch runs in one of them, which is cancelled
    mid-fetch. The other 99 must not hang on the lock or share a failure: one of
    them fetches again and all 99 succeed with that token.
    """
    clock = VirtualClock()
    provider = Provider(expires_in=60.0)
    wire = Wire()
    pipeline = full_stack(provider, clock=clock)
    scopes: dict[int, anyio.CancelScope] = {}
    responses: list[httpx.Response] = []
    async with client_for(pipeline, wire) as client:
        await get(client)  # t1
        clock.advance(120.0)
        entered = provider.hold_next()

        async def one() -> None:
            with anyio.CancelScope() as scope:
                scopes[anyio.get_current_task().id] = scope
                responses.append(await client.get(URL))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(one)
                await entered.wait()
                assert provider.held_by is not None
                scopes[provider.held_by].cancel()

    assert len(responses) == 99
    assert all(r.status_code == 200 for r in responses)
    assert provider.fetches == 3  # t1, the cancelled one, t3
    assert set(wire.tokens()[1:]) == {"Bearer t3"}
    assert wire.unclosed() == []


async def test_attempt_timeout_on_a_stalled_body_closes_it_and_retries() -> None:
    """Timeout(attempt=...) cuts a body that stalls mid-read: closed, classified, retried.

    The stalled attempt is a RETRY and a breaker failure; the retry succeeds.
    """
    clock = VirtualClock()
    provider = Provider()
    stream = HangingStream(json.dumps(OK_BODY).encode())
    wire = Wire(lambda request: httpx.Response(200, stream=stream))
    pipeline = full_stack(provider, clock=clock, attempt=0.05)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    report = response.extensions["resilience"]
    assert response.json() == OK_BODY
    assert stream.closed
    assert report.attempts == 2
    assert actions(report) == [Action.RETRY, Action.ACCEPT]
    assert report.verdicts[0].problem is not None
    assert report.verdicts[0].problem.code == "TimeoutException"
    assert report.delays == [1.0]
    assert circuit(pipeline).calls == 2
    assert circuit(pipeline).failure_ratio == 0.5
    assert wire.unclosed() == []


# --- (3) an auth replay that meets a 503 ----------------------------------------------


async def test_auth_replay_hits_503_then_retry_succeeds() -> None:
    """401, refresh, replay gets 503, backoff, retry succeeds: the report tells it all.

    The breaker sees two calls: the replay's 503 (a failure) and the retry's 200
    (a success); the 401 counts neither way.
    """
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(401), reply(503), reply(200, json=OK_BODY))
    pipeline = full_stack(provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    report = response.extensions["resilience"]
    assert response.json() == OK_BODY
    assert report.attempts == 3
    assert report.delays == [1.0]
    assert actions(report) == [Action.REFRESH_AUTH, Action.RETRY, Action.ACCEPT]
    assert report.gave_up is None
    assert clock.sleeps == [1.0]
    assert wire.tokens() == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert provider.fetches == 2
    assert circuit(pipeline).calls == 2
    assert circuit(pipeline).failure_ratio == 0.5
    assert wire.unclosed() == []


async def test_second_401_counts_neither_way_in_the_breaker() -> None:
    """A call rejected twice is an AuthenticationError, and no breaker failure."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(401), reply(401))
    pipeline = full_stack(provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(AuthenticationError) as caught:
            await get(client)
    report = caught.value.report
    assert report.attempts == 2
    assert actions(report) == [Action.REFRESH_AUTH, Action.REFRESH_AUTH]
    assert report.delays == []
    assert caught.value.response is not None
    assert caught.value.response.status_code == 401
    assert circuit(pipeline).calls == 0
    assert wire.unclosed() == []


@pytest.mark.parametrize(
    ("vendor", "rejected", "failed", "ok"),
    [
        (
            "tellus",
            reply(401, json={"code": 2002, "message": "Token expired", "details": {}}),
            reply(500, json={"code": 9001, "message": "Internal server error", "details": {}}),
            reply(200, json={"code": 0, "message": "ok", "data": {"devices": []}}),
        ),
        (
            "turris",
            reply(
                401,
                json={
                    "statusCode": 401,
                    "requestId": "req-1",
                    "errorType": "unauthorized",
                    "errorMessage": ["token expired"],
                    "timestamp": "2024-01-01T00:00:00Z",
                },
            ),
            reply(
                503,
                json={
                    "statusCode": 503,
                    "requestId": "req-2",
                    "errorType": "internal_error",
                    "errorMessage": ["try later"],
                    "timestamp": "2024-01-01T00:00:00Z",
                },
            ),
            reply(200, json={"data": []}),
        ),
        (
            "derapi",
            reply(401),
            reply(
                502,
                json={
                    "type": "https://docs.derapi.com/reference/errors#backend-server-error",
                    "title": "Backend Server Error",
                },
            ),
            reply(200, json={"sites": []}),
        ),
    ],
)
async def test_presets_replay_after_refresh_then_retry(
    vendor: str, rejected: httpx.Response, failed: httpx.Response, ok: httpx.Response
) -> None:
    """Each vendor preset: rejected token, refresh, replay fails transiently, retry wins."""
    clock = VirtualClock()
    provider = Provider(expires_in=3600.0)
    wire = Wire(rejected, failed, ok)
    pipeline = resilience.standard_pipeline(vendor, auth=provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        response = await get(client, f"https://api.{vendor}.test/v1/things")
        await response.aread()
    report = response.extensions["resilience"]
    assert response.status_code == 200
    assert report.attempts == 3
    assert actions(report) == [Action.REFRESH_AUTH, Action.RETRY, Action.ACCEPT]
    assert len(report.delays) == 1
    assert provider.fetches == 2
    assert wire.tokens() == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert wire.unclosed() == []
    registry = CircuitRegistry.of(pipeline)
    assert registry.get(f"https://api.{vendor}.test:443").calls == 2
    assert registry.get(f"https://api.{vendor}.test:443").failure_ratio == 0.5


# --- (4) the deadline during a long backoff --------------------------------------------


async def test_deadline_on_a_virtual_clock_gives_up_before_sleeping() -> None:
    """A backoff that cannot fit in what is left of total= is never slept."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(503, headers={"Retry-After": "45"}))
    pipeline = full_stack(provider, clock=clock, total=30.0)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await get(client)
    report = caught.value.report
    assert report.gave_up == "deadline"
    assert report.attempts == 1
    assert report.delays == []
    assert actions(report) == [Action.RETRY]
    assert clock.sleeps == []
    assert caught.value.response is not None
    assert caught.value.response.status_code == 503
    assert wire.unclosed() == []


async def test_deadline_by_the_real_cancel_scope_during_a_backoff() -> None:
    """A backoff sleep that overruns total= in real time is cut by the cancel scope.

    The virtual deadline lets the 0.02 s wait start; the sleep then hangs, and the
    real 0.05 s scope of Timeout(total=...) ends the call.
    """
    clock = PausingClock()
    provider = Provider()
    wire = Wire(reply(503))
    quick = ExponentialBackoff(initial=0.02, multiplier=2.0, max_delay=1.0, jitter="none")
    pipeline = full_stack(provider, clock=clock, total=0.05, retry=Retry(backoff=quick))
    clock.hold_next_sleep()
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await get(client)
    report = caught.value.report
    assert report.gave_up == "deadline"
    assert report.attempts == 1
    assert actions(report) == [Action.RETRY]
    assert wire.count == 1
    assert wire.unclosed() == []
    assert circuit(pipeline).calls == 1


async def test_deadline_by_the_real_cancel_scope_during_an_attempt() -> None:
    """The total timeout firing on the wire classifies that attempt once, as a timeout."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire()
    wire.hold_next()
    pipeline = full_stack(provider, clock=clock, total=0.05)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await get(client)
        report = caught.value.report
        assert report.gave_up == "deadline"
        assert report.attempts == 1
        assert actions(report) == [Action.RETRY]
        assert report.verdicts[0].problem is not None
        assert report.verdicts[0].problem.code == "TimeoutException"
        assert circuit(pipeline).calls == 0  # a cancelled attempt counts neither way
        assert (await get(client)).status_code == 200
    assert wire.unclosed() == []


# --- (5) a breaker that opens mid-burst ------------------------------------------------


async def test_breaker_opens_mid_burst_then_fails_fast_then_probes() -> None:
    """Failures open the breaker mid-burst; later calls never reach the wire.

    Retry does not retry into the open breaker: the call that met it ends at once,
    and calls made while it is open sleep nothing. After the break, one probe
    passes and closes it.
    """
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(default=lambda request: reply(503))
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_calls=4, break_duration=30.0)
    pipeline = full_stack(provider, clock=clock, breaker=breaker)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as first:
            await get(client)
        assert first.value.report.attempts == 3
        with pytest.raises(RetriesExhausted) as tripped:
            await get(client)  # its first attempt is the fourth failure: no retry
        assert tripped.value.report.attempts == 1
        assert tripped.value.report.delays == []
        assert tripped.value.report.gave_up == "circuit_open"
        assert wire.count == 4
        assert circuit(pipeline).state is CircuitState.OPEN

        sleeps = len(clock.sleeps)
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as rejected:
                await get(client)
            assert rejected.value.report.attempts == 0
            assert rejected.value.report.delays == []
            assert rejected.value.key == HOST_KEY
            assert 0 < rejected.value.retry_after <= 30.0
        assert wire.count == 4
        assert len(clock.sleeps) == sleeps

        clock.advance(circuit(pipeline).retry_after)
        wire.default = lambda request: reply(200, json=OK_BODY)
        response = await get(client)
        assert response.json() == OK_BODY
        assert circuit(pipeline).state is CircuitState.CLOSED
    assert wire.count == 5
    assert provider.fetches == 1
    assert wire.unclosed() == []


async def test_half_open_admits_one_probe_at_a_time() -> None:
    """While the probe is in flight, a second call fails fast ("probes are busy")."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(503))
    pipeline = full_stack(provider, clock=clock, breaker=tripping_breaker())
    async with client_for(pipeline, wire) as client:
        await open_then_half_open(client, pipeline, clock)
        entered = wire.hold_next()
        results: list[httpx.Response] = []

        async def probe() -> None:
            results.append(await client.get(URL))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                await entered.wait()
                with pytest.raises(CircuitOpenError) as busy:
                    await client.get(URL)
                assert busy.value.retry_after == 0.0
                assert busy.value.report.attempts == 0
                tg.cancel_scope.cancel()
        # The probe was cancelled: the next call is the probe, and it closes the circuit.
        assert (await get(client)).status_code == 200
    assert circuit(pipeline).state is CircuitState.CLOSED
    assert wire.unclosed() == []


# --- (6) raise_on_failure=False ----------------------------------------------------------


async def test_raise_on_failure_false_returns_fail_response() -> None:
    """A FAIL (404) comes back as the response, with its report, readable."""
    clock = VirtualClock()
    wire = Wire(reply(404, json={"error": "no such thing"}))
    pipeline = full_stack(Provider(), clock=clock, raise_on_failure=False)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    assert response.status_code == 404
    assert response.json() == {"error": "no such thing"}
    report = response.extensions["resilience"]
    assert report.attempts == 1
    assert actions(report) == [Action.FAIL]
    assert wire.unclosed() == []


async def test_fail_raises_permanent_error_and_is_no_breaker_failure() -> None:
    """The same 404 with raise_on_failure=True: a PermanentError, not counted by the breaker."""
    clock = VirtualClock()
    wire = Wire(reply(404, json={"error": "no such thing"}))
    pipeline = full_stack(Provider(), clock=clock)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(PermanentError) as caught:
            await get(client)
    assert isinstance(caught.value, httpx.HTTPStatusError)
    assert caught.value.response.json() == {"error": "no such thing"}
    assert caught.value.report.attempts == 1
    assert circuit(pipeline).calls == 0
    assert wire.unclosed() == []


async def test_raise_on_failure_false_returns_exhausted_retry_response() -> None:
    """RETRY until max_attempts: the last 503 comes back, the report says why."""
    clock = VirtualClock()
    wire = Wire(reply(503, content="a"), reply(503, content="b"), reply(503, content="c"))
    pipeline = full_stack(Provider(), clock=clock, raise_on_failure=False)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    assert response.status_code == 503
    assert response.text == "c"
    report = response.extensions["resilience"]
    assert report.attempts == 3
    assert report.delays == [1.0, 2.0]
    assert report.gave_up == "max_attempts"
    assert actions(report) == [Action.RETRY] * 3
    assert wire.unclosed() == []


async def test_raise_on_failure_false_returns_second_rejection() -> None:
    """Rejected after a refresh: the second 401 comes back, with both attempts reported."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(401, content="first"), reply(401, content="second"))
    pipeline = full_stack(provider, clock=clock, raise_on_failure=False)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    assert response.status_code == 401
    assert response.text == "second"
    report = response.extensions["resilience"]
    assert report.attempts == 2
    assert actions(report) == [Action.REFRESH_AUTH, Action.REFRESH_AUTH]
    assert provider.fetches == 2
    assert wire.unclosed() == []


async def test_raise_on_failure_false_with_a_deadline() -> None:
    """A deadline that stops the retries returns the last response, gave_up included."""
    clock = VirtualClock()
    wire = Wire(reply(503, headers={"Retry-After": "50"}))
    pipeline = full_stack(Provider(), clock=clock, total=30.0, raise_on_failure=False)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    assert response.status_code == 503
    assert response.extensions["resilience"].gave_up == "deadline"
    assert wire.unclosed() == []


# --- (7) request bodies ------------------------------------------------------------------


async def test_post_with_idempotency_key_replays_the_same_body() -> None:
    """A keyed POST through auth replay and retry carries the same body and key each time."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(401), reply(503), reply(201, json={"id": 7}))
    pipeline = full_stack(provider, clock=clock)
    body = b'{"name": "pump"}'
    async with client_for(pipeline, wire) as client:
        with anyio.fail_after(GUARD):
            response = await client.post(
                URL, content=body, headers={"Idempotency-Key": "k-1", "Content-Type": "x/y"}
            )
    assert response.status_code == 201
    assert response.extensions["resilience"].attempts == 3
    assert [sent for _, sent in wire.sent] == [body] * 3
    assert [r.headers["idempotency-key"] for r, _ in wire.sent] == ["k-1"] * 3
    assert [r.headers["content-length"] for r, _ in wire.sent] == [str(len(body))] * 3
    assert wire.tokens() == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert wire.unclosed() == []


async def test_post_without_key_is_not_retried_but_is_auth_replayed() -> None:
    """An unkeyed POST: the 401 replay sends it again (nothing ran), a 503 does not."""
    clock = VirtualClock()
    wire = Wire(reply(401), reply(503))
    pipeline = full_stack(Provider(), clock=clock)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as caught:
            with anyio.fail_after(GUARD):
                await client.post(URL, content=b"x")
    assert caught.value.report.gave_up == "not_idempotent"
    assert caught.value.report.attempts == 2
    assert [sent for _, sent in wire.sent] == [b"x", b"x"]
    assert wire.unclosed() == []


async def _chunks() -> AsyncIterator[bytes]:
    yield b"part-1;"
    yield b"part-2"


async def test_streaming_body_is_never_replayed_by_auth() -> None:
    """A streamed body rejected with 401: the token is refreshed, the body not resent."""
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(reply(401))
    pipeline = full_stack(provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(AuthenticationError) as caught:
            with anyio.fail_after(GUARD):
                await client.post(URL, content=_chunks(), headers={"Idempotency-Key": "k"})
        assert caught.value.report.attempts == 1
        assert [sent for _, sent in wire.sent] == [b"part-1;part-2"]
        assert provider.fetches == 2  # refreshed for the next call
        assert (await get(client)).status_code == 200
    assert wire.tokens()[-1] == "Bearer t2"
    assert provider.fetches == 2
    assert wire.unclosed() == []


async def test_streaming_body_is_never_replayed_by_retry() -> None:
    """A streamed, keyed POST that gets a 503 is not retried: its body is gone."""
    clock = VirtualClock()
    wire = Wire(reply(503))
    pipeline = full_stack(Provider(), clock=clock)
    async with client_for(pipeline, wire) as client:
        with pytest.raises(RetriesExhausted) as caught:
            with anyio.fail_after(GUARD):
                await client.post(URL, content=_chunks(), headers={"Idempotency-Key": "k"})
    assert caught.value.report.gave_up == "body_not_replayable"
    assert caught.value.report.attempts == 1
    assert clock.sleeps == []
    assert wire.count == 1
    assert wire.unclosed() == []


# --- the splitter over Retry -------------------------------------------------------------


async def test_recovered_split_does_not_report_an_inner_retrys_give_up() -> None:
    """A part whose first re-request exhausted Retry, then recovered: nothing gave up.

    Retry gives up on the narrowed request of round one (three 503s); round two
    recovers the part. The call delivered everything, so ``report.gave_up`` must
    not still say ``"max_attempts"``.
    """
    clock = VirtualClock()
    provider = Provider()
    wire = Wire(
        split_body([{"id": 1}], ["solis"]),
        reply(503),
        reply(503),
        reply(503),
        reply(200, json={"items": [{"id": 2}]}),
    )
    pipeline = full_stack(provider, clock=clock)
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    report = response.extensions["resilience"]
    assert response.json() == {"items": [{"id": 1}, {"id": 2}]}
    assert report.partial.failures == {}
    assert report.partial.recovered == ("solis",)
    assert report.gave_up is None
    assert report.attempts == 5
    assert actions(report) == [Action.SPLIT] + [Action.RETRY] * 3 + [Action.ACCEPT]
    assert report.delays == [1.0, 1.0, 2.0, 2.0]  # round 1, two retries, round 2
    assert wire.unclosed() == []


async def test_split_still_failing_reports_the_splitters_reason() -> None:
    """A part still failing after every round reports why the splitter stopped."""
    clock = VirtualClock()
    wire = Wire(split_body([{"id": 1}], ["solis"]), default=lambda request: reply(503))
    splitter_rounds = 2
    pipeline = Pipeline(
        [
            Timeout(total=600.0),
            PartialFailureSplitter(backoff=STEADY, max_rounds=splitter_rounds),
            Retry(max_attempts=2, backoff=STEADY),
            AuthRefresh(Provider()),
        ],
        classifier=PartsClassifier(),
        clock=clock,
    )
    async with client_for(pipeline, wire) as client:
        response = await get(client)
    report = response.extensions["resilience"]
    assert response.json() == {"items": [{"id": 1}]}
    assert report.partial.failures["solis"].action is Action.RETRY
    assert report.gave_up == "max_rounds"
    assert report.attempts == 1 + 2 * splitter_rounds
    assert wire.unclosed() == []
