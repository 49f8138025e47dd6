"""The Retry layer: attempts, idempotency, replayable bodies, budget, deadline, events."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    Action,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    RetryBudget,
    RetryScheduled,
    Timeout,
)
from resilience.errors import ConfigurationError, PermanentError, RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")


def client_for(
    inner: httpx.AsyncBaseTransport,
    *layers: object,
    clock: VirtualClock | None = None,
    **kwargs: object,
) -> httpx.AsyncClient:
    """An AsyncClient over ``Pipeline(layers)`` with the given inner transport."""
    pipeline = Pipeline(
        list(layers),
        clock=clock or VirtualClock(),
        telemetry=False,
        **kwargs,  # type: ignore[arg-type]
    )
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner))


# -- attempts ------------------------------------------------------------------------


async def test_success_first_time_makes_one_attempt() -> None:
    """A 200 at once: one attempt, no delay, no sleep."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(200, json={"ok": 1}))
    async with client_for(inner, Retry(backoff=ONE), clock=clock) as client:
        r = await client.get(URL)
    report = r.extensions["resilience"]
    assert (report.attempts, report.delays, report.gave_up) == (1, [], None)
    assert clock.sleeps == []
    assert r.json() == {"ok": 1}


async def test_retries_until_max_attempts_then_raises() -> None:
    """Always 503 with max_attempts=4: 4 attempts, delays 1, 2, 4, then RetriesExhausted."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    async with client_for(inner, Retry(max_attempts=4, backoff=ONE), clock=clock) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    report = info.value.report
    assert report.attempts == 4
    assert len(inner.requests) == 4
    assert report.delays == [1.0, 2.0, 4.0] == clock.sleeps
    assert [v.action for v in report.verdicts] == [Action.RETRY] * 4
    assert report.gave_up == "max_attempts"
    assert inner.unclosed() == []


async def test_max_attempts_one_never_retries() -> None:
    """``max_attempts=1``: one attempt, the RETRY verdict surfaces at once."""
    inner = ScriptedTransport.of(reply(503))
    async with client_for(inner, Retry(max_attempts=1, backoff=ONE)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert info.value.report.attempts == 1
    assert info.value.report.delays == []


async def test_transport_errors_are_retried() -> None:
    """ConnectError then ReadTimeout then 200: three attempts, success."""
    inner = ScriptedTransport.of(
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), reply(200)
    )
    async with client_for(inner, Retry(max_attempts=3, backoff=ONE)) as client:
        r = await client.get(URL)
    report = r.extensions["resilience"]
    assert report.attempts == 3
    assert [v.reason for v in report.verdicts] == ["ConnectError", "ReadTimeout", "accept"]


async def test_fail_and_refresh_verdicts_are_not_retried() -> None:
    """A 404 (FAIL) is not the Retry layer's concern: one attempt, PermanentError."""
    inner = ScriptedTransport.of(reply(404), reply(200))
    async with client_for(inner, Retry(max_attempts=5, backoff=ONE)) as client:
        with pytest.raises(PermanentError) as info:
            await client.get(URL)
    assert info.value.report.attempts == 1
    assert info.value.report.gave_up is None
    assert inner.unclosed() == []


async def test_each_retry_emits_a_retry_scheduled_event() -> None:
    """Hooks receive one RetryScheduled per retry, with attempt, delay and reason."""
    events: list[object] = []
    inner = ScriptedTransport.of(reply(503), reply(429), reply(200))
    async with client_for(
        inner, Retry(max_attempts=3, backoff=ONE), hooks=[events.append]
    ) as client:
        await client.get(URL)
    assert [type(e) for e in events] == [RetryScheduled, RetryScheduled]
    first, second = events
    assert isinstance(first, RetryScheduled)
    assert isinstance(second, RetryScheduled)
    assert (first.method, first.host, first.attempt, first.delay) == ("GET", "api.test", 1, 1.0)
    assert (second.attempt, second.delay, second.reason) == (2, 2.0, "429")


async def test_a_hook_that_raises_does_not_break_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising hook is logged and ignored."""

    def bad_hook(event: object) -> None:
        raise RuntimeError("hook exploded")

    inner = ScriptedTransport.of(reply(503), reply(200))
    with caplog.at_level(logging.ERROR, logger="resilience"):
        async with client_for(inner, Retry(backoff=ONE), hooks=[bad_hook]) as client:
            r = await client.get(URL)
    assert r.status_code == 200
    assert "hook" in caplog.text
    assert "RetryScheduled" in caplog.text


async def test_debug_log_names_the_attempt_and_delay(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, each retry logs method, host, reason and delay (never the URL path)."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        async with client_for(inner, Retry(backoff=ONE)) as client:
            await client.get(URL + "?token=secret")
    assert "GET api.test attempt 1 failed (503), retrying in 1.000s" in caplog.text
    assert "secret" not in caplog.text


# -- idempotency ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    """GET, HEAD, OPTIONS, PUT and DELETE are replayed without a key."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    async with client_for(inner, Retry(backoff=ONE)) as client:
        r = await client.request(method, URL)
    assert r.extensions["resilience"].attempts == 2


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_methods_are_not_retried(method: str) -> None:
    """POST and PATCH without a key: one attempt, gave_up == "not_idempotent"."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503), reply(200))
    async with client_for(inner, Retry(backoff=ONE), clock=clock) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.request(method, URL, json={"a": 1})
    assert info.value.report.attempts == 1
    assert info.value.report.gave_up == "not_idempotent"
    assert "not_idempotent" in str(info.value)
    assert clock.sleeps == []
    assert inner.unclosed() == []


@pytest.mark.parametrize(
    "header",
    [
        "Idempotency-Key",
        "idempotency-key",
        "IDEMPOTENCY-KEY",
        "X-Idempotency-Key",
        "x-idempotency-key",
    ],
)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_idempotency_key_allows_replay(method: str, header: str) -> None:
    """An Idempotency-Key header (any case, or the X- spelling) allows a replay, and
    the replay sends the same body."""
    bodies: list[bytes] = []

    def record(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return reply(503) if len(bodies) == 1 else reply(201)

    inner = ScriptedTransport.of(record)
    async with client_for(inner, Retry(backoff=ONE)) as client:
        r = await client.request(method, URL, json={"a": 1}, headers={header: "k-1"})
    assert r.status_code == 201
    assert r.extensions["resilience"].attempts == 2
    assert bodies == [b'{"a":1}', b'{"a":1}']


async def test_retry_non_idempotent_opts_in() -> None:
    """``retry_non_idempotent=True`` replays a POST without a key."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    async with client_for(inner, Retry(backoff=ONE, retry_non_idempotent=True)) as client:
        r = await client.post(URL, content=b"payload")
    assert r.extensions["resilience"].attempts == 2


async def test_custom_idempotent_methods() -> None:
    """``idempotent_methods`` replaces the default set (names upper-cased)."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    retry = Retry(backoff=ONE, idempotent_methods=["get", "post"])
    async with client_for(inner, retry) as client:
        r = await client.post(URL, content=b"x")
    assert r.extensions["resilience"].attempts == 2
    inner = ScriptedTransport.of(reply(503), reply(200))
    async with client_for(inner, retry) as client:
        with pytest.raises(RetriesExhausted):
            await client.put(URL, content=b"x")


async def test_streaming_body_is_never_replayed() -> None:
    """An async-generator body cannot be re-read: even with a key, one attempt,
    gave_up == "body_not_replayable"."""

    async def body() -> AsyncIterator[bytes]:
        yield b"part-1"
        yield b"part-2"

    seen: list[bytes] = []

    async def consume(request: httpx.Request) -> None:
        seen.append(b"".join([chunk async for chunk in request.stream]))  # type: ignore[union-attr]

    class ReadingTransport(ScriptedTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await consume(request)
            return await super().handle_async_request(request)

    inner = ReadingTransport([reply(503), reply(200)])
    async with client_for(inner, Retry(backoff=ONE)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.post(URL, content=body(), headers={"Idempotency-Key": "k"})
    assert info.value.report.attempts == 1
    assert info.value.report.gave_up == "body_not_replayable"
    assert seen == [b"part-1part-2"]
    assert inner.unclosed() == []


async def test_read_streaming_body_is_replayable() -> None:
    """A streaming body the caller read first (``request.aread()``) may be replayed."""

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    inner = ScriptedTransport.of(reply(503), reply(200))
    pipeline = Pipeline([Retry(backoff=ONE)], clock=VirtualClock(), telemetry=False)
    transport = ResilientTransport(pipeline, inner=inner)
    request = httpx.Request("PUT", URL, content=body())
    await request.aread()
    r = await transport.handle_async_request(request)
    await r.aclose()
    assert r.extensions["resilience"].attempts == 2


def test_is_replayable_reasons() -> None:
    """``Retry.is_replayable`` says why a request must not be replayed."""
    retry = Retry()
    assert retry.is_replayable(httpx.Request("GET", URL)) is None
    assert retry.is_replayable(httpx.Request("POST", URL, content=b"x")) == "not_idempotent"
    keyed = httpx.Request("POST", URL, content=b"x", headers={"idempotency-KEY": "1"})
    assert retry.is_replayable(keyed) is None


# -- budget --------------------------------------------------------------------------


async def outage(calls: int, retry: Retry) -> tuple[int, list[str | None]]:
    """``calls`` sequential calls against an always-503 transport: total attempts
    sent and each call's ``gave_up``."""
    inner = ScriptedTransport.of(reply(503))
    pipeline = Pipeline([retry], clock=VirtualClock(), telemetry=False)
    transport = ResilientTransport(pipeline, inner=inner)
    reasons: list[str | None] = []
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(calls):
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
            reasons.append(info.value.report.gave_up)
    assert inner.unclosed() == []
    return len(inner.requests), reasons


async def test_budget_keeps_attempts_near_one_plus_ratio_in_an_outage() -> None:
    """1,000 calls within a second, 5 attempts each allowed, ratio 0.2, no floor:
    attempts per call stay near 1.2, not 5. Nothing is banked: the first call (one
    call in the window, a fifth of a retry) gets none."""
    retry = Retry(max_attempts=5, backoff=ZERO, budget=RetryBudget(min_per_second=0))
    attempts, reasons = await outage(1000, retry)
    per_call = attempts / 1000
    assert 1.19 <= per_call <= 1.21, per_call
    assert reasons.count("budget") >= 990
    assert reasons[0] == "budget"


async def test_budget_ratio_sets_the_fraction() -> None:
    """With ratio 0.5, attempts per call stay near 1.5."""
    retry = Retry(max_attempts=5, backoff=ZERO, budget=RetryBudget(ratio=0.5, min_per_second=0))
    attempts, _ = await outage(400, retry)
    assert 1.49 <= attempts / 400 <= 1.54


async def test_budget_none_turns_it_off() -> None:
    """``budget=None``: every call gets all its attempts, even in an outage."""
    attempts, reasons = await outage(200, Retry(max_attempts=5, backoff=ZERO, budget=None))
    assert attempts == 1000
    assert set(reasons) == {"max_attempts"}


async def test_lone_call_with_a_fresh_budget_gets_its_retries() -> None:
    """The default budget allows 10 retries in any second whatever the traffic: a
    lone call with 11 attempts (no waits) gets them all; a 12th attempt is refused."""
    attempts, reasons = await outage(1, Retry(max_attempts=11, backoff=ZERO))
    assert (attempts, reasons) == (11, ["max_attempts"])
    attempts, reasons = await outage(1, Retry(max_attempts=12, backoff=ZERO))
    assert (attempts, reasons) == (11, ["budget"])


async def test_the_floor_renews_every_second() -> None:
    """``min_per_second=1``: one retry in any second; a second later, one more."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    budget = RetryBudget(ratio=0.0, min_per_second=1.0)
    pipeline = Pipeline(
        [Retry(max_attempts=2, backoff=ZERO, budget=budget)], clock=clock, telemetry=False
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        gave_up = []
        for wait in (0.0, 0.5, 0.5):
            clock.advance(wait)
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
            gave_up.append(info.value.report.gave_up)
    assert gave_up == ["max_attempts", "budget", "max_attempts"]


async def test_budget_is_shared_by_the_pipeline_not_by_the_configuration() -> None:
    """Two pipelines built from one Retry have separate buckets."""
    retry = Retry(
        max_attempts=2, backoff=ZERO, budget=RetryBudget(initial=1.0, ratio=0.0, min_per_second=0)
    )
    for _ in range(2):
        attempts, reasons = await outage(1, retry)
        assert (attempts, reasons) == (2, ["max_attempts"])


# -- deadline ------------------------------------------------------------------------


async def test_gives_up_at_once_when_the_next_delay_cannot_fit() -> None:
    """Timeout(total=10) with delays 1, 2, 4, 8: sleeps 1, 2, 4 (7 s), then 8 s would
    end past the deadline: it gives up at once, without sleeping."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    async with client_for(
        inner, Timeout(total=10.0), Retry(max_attempts=10, backoff=ONE), clock=clock
    ) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    report = info.value.report
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert clock.now() == 7.0
    assert report.attempts == 4
    assert report.gave_up == "deadline"
    assert "gave up: deadline" in str(info.value)
    assert inner.unclosed() == []


async def test_a_delay_that_ends_exactly_at_the_deadline_is_allowed() -> None:
    """Timeout(total=3): delays 1 and 2 end exactly at the deadline; both are slept."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    async with client_for(
        inner, Timeout(total=3.0), Retry(max_attempts=10, backoff=ONE), clock=clock
    ) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert clock.sleeps == [1.0, 2.0]
    assert info.value.report.gave_up == "deadline"


async def test_slow_attempts_use_up_the_deadline() -> None:
    """Attempts that take 4 s each (virtual) leave no room: the call never sleeps past
    the deadline, and the clock never passes it because of a sleep."""
    clock = VirtualClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(4.0)
        return reply(503)

    inner = ScriptedTransport.of(slow)
    async with client_for(
        inner, Timeout(total=10.0), Retry(max_attempts=10, backoff=ONE), clock=clock
    ) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    # t=4: sleep 1 -> 5; t=9: 2 s more would end at 11 > 10: give up.
    assert clock.sleeps == [1.0]
    assert info.value.report.attempts == 2
    assert info.value.report.gave_up == "deadline"


async def test_inner_timeout_tightens_an_outer_deadline_only() -> None:
    """Two Timeout(total=...) layers: the tighter deadline wins, whichever is outer."""
    for layers in (
        (Timeout(total=5.0), Timeout(total=100.0)),
        (Timeout(total=100.0), Timeout(total=5.0)),
    ):
        clock = VirtualClock()
        inner = ScriptedTransport.of(reply(503))
        async with client_for(
            inner, *layers, Retry(max_attempts=10, backoff=ONE), clock=clock
        ) as client:
            with pytest.raises(RetriesExhausted):
                await client.get(URL)
        assert clock.sleeps == [1.0, 2.0]


async def test_no_deadline_no_limit() -> None:
    """Without Timeout(total=...), long waits are fine."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    backoff = ExponentialBackoff(initial=10.0, max_delay=1000.0, jitter="none")
    async with client_for(inner, Retry(max_attempts=4, backoff=backoff), clock=clock) as client:
        with pytest.raises(RetriesExhausted):
            await client.get(URL)
    assert clock.sleeps == [10.0, 20.0, 40.0]


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"backoff": 1.0}, "backoff"),
        ({"budget": 0.2}, "budget"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"idempotent_methods": "GET"}, "idempotent_methods"),
    ],
)
def test_retry_bad_configuration(kwargs: dict[str, object], argument: str) -> None:
    """Bad Retry arguments fail at construction, naming the argument."""
    with pytest.raises(ConfigurationError, match=argument) as info:
        Retry(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"initial": "ten"}, "initial"),
        ({"initial": -1.0}, "initial"),
        ({"min_per_second": math.inf}, "min_per_second"),
    ],
)
def test_budget_bad_configuration(kwargs: dict[str, object], argument: str) -> None:
    """Bad RetryBudget arguments fail at construction, naming the argument."""
    with pytest.raises(ConfigurationError, match=argument):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_configuration_is_a_reusable_value() -> None:
    """Retry is frozen, comparable, and usable in many pipelines."""
    a = Retry(max_attempts=3)
    b = Retry(max_attempts=3)
    assert a == b
    with pytest.raises(AttributeError):
        a.max_attempts = 4  # type: ignore[misc]
    Pipeline([a], telemetry=False)
    Pipeline([a], telemetry=False)


@settings(max_examples=60)
@given(
    initial=st.floats(0, 20),
    extra=st.floats(0, 100),
    jitter=st.sampled_from(["none", "full", "equal", "decorrelated", "proportional"]),
    # The total is enforced in real time too: keep it far above a test's real duration.
    total=st.floats(1.0, 500),
    hints=st.lists(st.one_of(st.none(), st.integers(0, 100_000).map(str)), max_size=12),
    max_attempts=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
async def test_never_sleeps_past_the_deadline_or_the_cap(
    initial: float,
    extra: float,
    jitter: str,
    total: float,
    hints: list[str | None],
    max_attempts: int,
    seed: int,
) -> None:
    """For any backoff, deadline and server hints: the sleeps add up to no more than
    the total timeout, each is within [0, cap], and attempts stay within max_attempts."""
    clock = VirtualClock()
    steps = [reply(503, headers={} if h is None else {"Retry-After": h}) for h in hints]
    inner = ScriptedTransport([*steps, reply(503)])
    backoff = ExponentialBackoff(
        initial=initial, max_delay=initial + extra, jitter=jitter, rng=random.Random(seed)
    )
    retry = Retry(max_attempts=max_attempts, backoff=backoff, budget=None)
    longest = (initial + extra) * (1.3 if jitter == "proportional" else 1.0)
    cap = max(longest, 60.0)
    pipeline = Pipeline([Timeout(total=total), retry], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=inner)
    with pytest.raises(RetriesExhausted) as info:
        await transport.handle_async_request(httpx.Request("GET", URL))
    report = info.value.report
    assert sum(clock.sleeps) <= total + 1e-9
    assert all(0.0 <= s <= cap for s in clock.sleeps)
    assert clock.sleeps == report.delays
    assert report.attempts == len(report.delays) + 1 <= max_attempts
    assert report.gave_up in {"max_attempts", "deadline"}
    assert inner.unclosed() == []


async def test_unsupported_protocol_is_not_retried() -> None:
    """A transport error about our own request (an unsupported URL scheme) is FAIL:
    one attempt, PermanentError caused by it."""
    inner = ScriptedTransport.of(
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol")
    )
    async with client_for(inner, Retry(backoff=ONE)) as client:
        with pytest.raises(PermanentError) as info:
            await client.get(URL)
    assert info.value.report.attempts == 1
    assert isinstance(info.value.__cause__, httpx.UnsupportedProtocol)
    assert not isinstance(info.value, httpx.HTTPStatusError)


async def test_zero_delay_retry_costs_one_checkpoint_and_no_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the real clock, a zero-delay retry is exactly one cancellation checkpoint
    (anyio's, or under asyncio the ``asyncio.sleep(0)`` it stands for): no sleep,
    no second yield."""
    import asyncio

    import anyio
    import anyio.lowlevel

    counts = {"checkpoint": 0, "sleep": 0}
    real_checkpoint = anyio.lowlevel.checkpoint
    real_asyncio_sleep = asyncio.sleep

    async def checkpoint() -> None:
        counts["checkpoint"] += 1
        await real_checkpoint()

    async def sleep(seconds: float) -> None:  # pragma: no cover - must not be called
        counts["sleep"] += 1

    async def asyncio_sleep(seconds: float) -> None:
        counts["checkpoint" if seconds <= 0 else "sleep"] += 1
        await real_asyncio_sleep(seconds)

    monkeypatch.setattr(anyio.lowlevel, "checkpoint", checkpoint)
    monkeypatch.setattr(anyio, "sleep", sleep)
    monkeypatch.setattr(asyncio, "sleep", asyncio_sleep)
    inner = ScriptedTransport.of(reply(503), reply(503), reply(200))
    pipeline = Pipeline([Retry(backoff=ZERO, budget=None)], telemetry=False)
    transport = ResilientTransport(pipeline, inner=inner)
    r = await transport.handle_async_request(httpx.Request("GET", URL))
    await r.aclose()
    assert r.extensions["resilience"].delays == [0.0, 0.0]
    assert counts == {"checkpoint": 2, "sleep": 0}


async def test_proportional_jitter_is_not_clipped_by_the_default_cap() -> None:
    """With max_delay=100 and 30% proportional jitter, waits may reach 130 s."""
    backoff = ExponentialBackoff(
        initial=100.0,
        max_delay=100.0,
        jitter="proportional",
        jitter_ratio=0.3,
        rng=random.Random(7),
    )
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503))
    retry = Retry(max_attempts=20, backoff=backoff, budget=None)
    async with client_for(inner, retry, clock=clock) as client:
        with pytest.raises(RetriesExhausted):
            await client.get(URL)
    assert all(100.0 <= d <= 130.0 for d in clock.sleeps)
    assert max(clock.sleeps) > 110.0
