"""The Hedge layer: parallel attempts for slow calls, on a virtual clock.

A VirtualClock's sleep returns at once and moves time on, so the hedging timer
"expires" whenever the first attempt is still out when the timer's task runs: an
attempt that hangs (``HANG``) is a slow one, an attempt that answers without
yielding is a fast one. Latencies for the percentile are made by the transport
moving the clock on while it "works".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from resilience import (
    Action,
    Call,
    CallNext,
    ExponentialBackoff,
    Hedge,
    HedgeSent,
    Outcome,
    Pipeline,
    PipelineEnv,
    ResilientTransport,
    Retry,
    RetryBudget,
)
from resilience.errors import ConfigurationError, PermanentError, RetriesExhausted
from resilience.testing import ScriptedTransport, StallingStream, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


class HANG:
    """A script step: the attempt never answers (until cancelled)."""


class Transport(ScriptedTransport):
    """A ScriptedTransport whose ``HANG`` steps wait forever; it counts arrivals."""

    arrived: anyio.Event | None = None
    want: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(len(self.requests), len(self.script) - 1)
        if self.script[index] is HANG:
            self.requests.append(request)
            self._arrive()
            await anyio.sleep_forever()
        response = await super().handle_async_request(request)
        self._arrive()
        return response

    def _arrive(self) -> None:
        if self.arrived is not None and len(self.requests) >= self.want:
            self.arrived.set()


def make(
    inner: httpx.AsyncBaseTransport,
    *layers: Any,
    clock: VirtualClock | None = None,
    events: list[Any] | None = None,
    **options: Any,
) -> ResilientTransport:
    """A ResilientTransport over ``layers`` on a virtual clock, hooks into ``events``."""
    hooks = [events.append] if events is not None else []
    pipeline = Pipeline(
        list(layers),
        clock=clock if clock is not None else VirtualClock(),
        hooks=hooks,
        telemetry=options.pop("telemetry", False),
        **options,
    )
    return ResilientTransport(pipeline, inner=inner)


async def get(transport: ResilientTransport, method: str = "GET", **kwargs: Any) -> httpx.Response:
    """One call through ``transport``; the response is read and closed."""
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(method, URL, **kwargs)


def report(response: httpx.Response) -> Any:
    return response.extensions["resilience"]


async def test_a_slow_attempt_is_hedged_and_the_hedge_wins() -> None:
    """The first attempt hangs past the delay: a hedge goes out, answers, and the
    call returns it; the report counts both attempts, one verdict each."""
    inner = Transport([HANG, reply(200, json={"n": 2})])
    clock = VirtualClock()
    events: list[Any] = []
    response = await get(make(inner, Hedge(delay=0.25), clock=clock, events=events))
    assert response.json() == {"n": 2}
    rep = report(response)
    assert (rep.attempts, rep.hedges, len(inner.requests)) == (2, 1, 2)
    assert [v.action for v in rep.verdicts] == [Action.RETRY, Action.ACCEPT]
    assert rep.verdicts[0].reason == "hedge_cancelled"
    assert clock.sleeps == [0.25]
    assert events == [
        HedgeSent(method="GET", host="api.test", hedge=1, elapsed=0.25, trigger="delay")
    ]
    assert inner.unclosed() == []


async def test_a_fast_answer_sends_no_hedge() -> None:
    """An attempt that answers before the delay is the only request sent."""
    inner = Transport([reply(200)])
    clock = VirtualClock()
    for _ in range(5):
        response = await get(make(inner, Hedge(delay=0.1), clock=clock))
        assert (report(response).attempts, report(response).hedges) == (1, 0)
    assert len(inner.requests) == 5
    assert clock.sleeps == []


class CountingTasks(ScriptedTransport):
    """A ScriptedTransport that notes how many tasks are running as it answers."""

    tasks: list[int]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tasks = [*getattr(self, "tasks", []), len(anyio.get_running_tasks())]
        return await super().handle_async_request(request)


async def test_an_answer_without_waiting_starts_no_task() -> None:
    """The success path's cost: an attempt that answers without waiting runs with
    as many tasks as without Hedge (no timer task was started for it)."""
    bare = CountingTasks([reply(200)])
    await get(make(bare))
    hedged = CountingTasks([reply(200)])
    response = await get(make(hedged, Hedge(delay=0.1)))
    assert (report(response).attempts, report(response).hedges) == (1, 0)
    assert hedged.tasks == bare.tasks


async def test_a_fast_failure_hedges_at_once_and_its_response_is_closed() -> None:
    """A 503 comes back at once: the hedge goes out without waiting the delay, and
    the 503's response is closed."""
    inner = Transport([reply(503), reply(200)])
    events: list[Any] = []
    response = await get(make(inner, Hedge(delay=30.0), events=events))
    assert response.status_code == 200
    assert report(response).attempts == 2
    assert [(e.trigger, e.elapsed) for e in events] == [("failure", 0.0)]
    assert [v.action for v in report(response).verdicts] == [Action.RETRY, Action.ACCEPT]
    assert inner.unclosed() == []


async def test_when_every_attempt_fails_the_last_failure_goes_up() -> None:
    """All attempts 503: the call fails as it would without hedging, with every
    attempt and its verdict in the report, and no response left open."""
    inner = Transport([reply(503)])
    with pytest.raises(RetriesExhausted) as caught:
        await get(make(inner, Hedge(delay=1.0, max_hedges=2)))
    rep = caught.value.report
    assert (rep.attempts, rep.hedges) == (3, 2)
    assert [v.action for v in rep.verdicts] == [Action.RETRY] * 3
    assert caught.value.response is not None
    assert caught.value.response.status_code == 503
    assert inner.unclosed() == []


async def test_a_server_hint_to_wait_sends_no_hedge_at_once() -> None:
    """A 503 with Retry-After asks us to wait: no hedge goes out right away."""
    inner = Transport([reply(503, headers={"Retry-After": "5"}), reply(200)])
    with pytest.raises(RetriesExhausted) as caught:
        await get(make(inner, Hedge(delay=30.0)))
    assert caught.value.report.attempts == 1
    assert len(inner.requests) == 1


async def test_a_permanent_answer_wins_too() -> None:
    """A FAIL the server sent (404) is a final answer: no hedge chases it."""
    inner = Transport([reply(404), reply(200)])
    with pytest.raises(PermanentError):
        await get(make(inner, Hedge(delay=0.0)))
    assert len(inner.requests) == 1


async def test_post_is_never_hedged() -> None:
    """A POST without an Idempotency-Key is sent once, even when it fails fast."""
    inner = Transport([reply(503), reply(200)])
    with pytest.raises(RetriesExhausted):
        await get(make(inner, Hedge(delay=0.0)), "POST", content=b"x")
    assert len(inner.requests) == 1


async def test_post_with_an_idempotency_key_is_hedged_with_its_body() -> None:
    """A POST carrying an Idempotency-Key is hedged, the hedge with the same body
    and headers as the first attempt."""
    inner = Transport([reply(503), reply(201)])
    response = await get(
        make(inner, Hedge(delay=0.0)), "POST", content=b"payload", headers={"Idempotency-Key": "k1"}
    )
    assert response.status_code == 201
    first, second = inner.requests
    assert first is not second
    assert second.content == b"payload" == first.content
    assert second.headers["idempotency-key"] == "k1"


async def test_a_streamed_body_is_never_hedged() -> None:
    """A body that cannot be read twice (an async generator) is sent once."""

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    inner = Transport([reply(503), reply(200)])
    with pytest.raises(RetriesExhausted):
        await get(make(inner, Hedge(delay=0.0)), "PUT", content=body())
    assert len(inner.requests) == 1


async def test_hedges_draw_on_the_retry_budget() -> None:
    """With the pipeline's retry budget spent, no hedge goes out; with tokens left,
    each hedge takes one."""
    empty = RetryBudget(ratio=0.0, min_per_second=0.0, initial=0.0)
    inner = Transport([reply(503), reply(200)])
    with pytest.raises(RetriesExhausted):
        await get(make(inner, Retry(max_attempts=1, budget=empty), Hedge(delay=0.0)))
    assert len(inner.requests) == 1

    one = RetryBudget(ratio=0.0, min_per_second=0.0, initial=1.0)
    inner = Transport([reply(503), reply(503), reply(200)])
    transport = make(inner, Retry(max_attempts=1, budget=one), Hedge(delay=0.0, max_hedges=5))
    with pytest.raises(RetriesExhausted) as caught:
        await get(transport)
    assert (caught.value.report.attempts, caught.value.report.hedges) == (2, 1)


async def test_retry_above_runs_a_new_hedged_round() -> None:
    """Below Retry, a round whose attempts all fail is one RETRY for Retry, which
    backs off and sends the next round."""
    inner = Transport([reply(503), reply(503), reply(200)])
    budget = RetryBudget(initial=10.0)
    response = await get(make(inner, Retry(backoff=ZERO, budget=budget), Hedge(delay=5.0)))
    rep = report(response)
    assert (response.status_code, rep.attempts, rep.hedges, rep.retries) == (200, 3, 1, 1)
    assert [v.action for v in rep.verdicts] == [Action.RETRY, Action.RETRY, Action.ACCEPT]
    assert inner.unclosed() == []


async def test_more_hedges_go_out_a_delay_apart() -> None:
    """With max_hedges=2 and two hanging attempts, the third attempt goes out one
    more delay later and wins."""
    inner = Transport([HANG, HANG, reply(200)])
    clock = VirtualClock()
    events: list[Any] = []
    response = await get(make(inner, Hedge(delay=0.5, max_hedges=2), clock=clock, events=events))
    assert response.status_code == 200
    assert [(e.hedge, e.elapsed) for e in events] == [(1, 0.5), (2, 1.0)]
    assert (report(response).attempts, len(report(response).verdicts)) == (3, 3)


def advancing(
    clock: VirtualClock, latencies: list[float]
) -> Callable[[httpx.Request], httpx.Response]:
    """A script step: each request takes the next latency (moves the clock on)."""

    def step(request: httpx.Request) -> httpx.Response:
        clock.advance(latencies.pop(0))
        return reply(200)

    return step


async def test_the_percentile_of_recent_latencies_sets_the_delay() -> None:
    """Until min_samples latencies are known the fixed delay applies; then the
    percentile of the ring does, and the floor bounds it below."""
    clock = VirtualClock()
    hedge = Hedge(delay=9.0, percentile=50.0, samples=3, min_samples=3, min_delay=0.05)
    latencies = [0.1, 0.3, 0.2]
    inner = Transport([advancing(clock, latencies)] * 3 + [HANG, reply(200)])
    transport = make(inner, hedge, clock=clock)
    for _ in range(3):
        await get(transport)
    await get(transport)
    assert clock.sleeps == [pytest.approx(0.2)]  # the median of 0.1, 0.3, 0.2

    # The floor: fast answers do not make the delay shorter than min_delay.
    clock = VirtualClock()
    floor = Hedge(delay=9.0, percentile=50.0, samples=3, min_samples=3, min_delay=0.5)
    inner = Transport([advancing(clock, [0.01, 0.02, 0.03])] * 3 + [HANG, reply(200)])
    transport = make(inner, floor, clock=clock)
    for _ in range(4):
        await get(transport)
    assert clock.sleeps == [0.5]


async def test_before_min_samples_the_fixed_delay_applies() -> None:
    """Two latencies known, three needed: the first hedge waits the fixed delay."""
    clock = VirtualClock()
    hedge = Hedge(delay=2.0, percentile=90.0, samples=10, min_samples=3)
    inner = Transport([advancing(clock, [0.1, 0.1])] * 2 + [HANG, reply(200)])
    transport = make(inner, hedge, clock=clock)
    for _ in range(3):
        await get(transport)
    assert clock.sleeps == [2.0]


async def test_a_slow_first_attempt_stays_in_the_ring_when_a_hedge_beats_it() -> None:
    """The first attempt a hedge beat counts with the time it had run: hedging does
    not hide the tail from the percentile (the delay does not shrink to nothing)."""
    clock = VirtualClock()
    hedge = Hedge(delay=1.0, percentile=50.0, samples=3, min_samples=3)
    inner = Transport([HANG, reply(200)] * 3 + [HANG, reply(200)])
    transport = make(inner, hedge, clock=clock)
    for _ in range(4):
        await get(transport)
    assert clock.sleeps == [1.0, 1.0, 1.0, 1.0]


class LateLoser:
    """A layer below Hedge whose first attempt finishes, shielded, after the hedge
    won: its response reaches the race late and must be closed there."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.calls = 0

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            self.calls += 1
            if self.calls == 1:
                with anyio.CancelScope(shield=True):
                    await self.gate.wait()
                    return await call_next(request, call)
            self.gate.set()
            return await call_next(request, call)

        return handler


async def test_a_loser_that_answers_after_the_winner_is_closed() -> None:
    """Both attempts get a response; the one that arrives second is closed."""
    # The hedge reaches the transport first (it opens the gate the first waits on).
    inner = Transport([reply(200, content="hedge"), reply(200, content="late")])
    response = await get(make(inner, Hedge(delay=0.1), LateLoser()))
    assert response.text == "hedge"
    assert len(inner.responses) == 2
    assert inner.unclosed() == []


async def test_a_cancelled_call_leaves_no_task_nor_open_response() -> None:
    """Cancelling the caller while two attempts are reading stalled bodies ends
    both and closes both responses."""
    stalled = httpx.Response(500, stream=StallingStream(b"partial"))
    inner = Transport([lambda request: stalled_copy(stalled)])
    inner.arrived, inner.want = anyio.Event(), 2
    transport = make(inner, Hedge(delay=0.1))
    async with anyio.create_task_group() as group:
        group.start_soon(get, transport)
        await inner.arrived.wait()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert len(inner.responses) == 2
    assert inner.unclosed() == []


def stalled_copy(template: httpx.Response) -> httpx.Response:
    stream = template.stream
    assert isinstance(stream, StallingStream)
    return httpx.Response(template.status_code, stream=StallingStream(stream.body))


class Raising:
    """A layer below Hedge that raises on its second call (a broken layer)."""

    def __init__(self) -> None:
        self.calls = 0

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("broken layer")
            return await call_next(request, call)

        return handler


async def test_an_exception_in_a_hedge_is_raised_as_is() -> None:
    """A layer below that raises in a hedge: the call raises that exception itself
    (not an exception group), and the first attempt's response is closed."""
    inner = Transport([reply(503)])
    with pytest.raises(RuntimeError, match="broken layer"):
        await get(make(inner, Hedge(delay=0.0), Raising()))
    assert inner.unclosed() == []


async def test_each_hedge_is_a_client_span_with_its_resend_count() -> None:
    """With an SDK, each attempt, hedges included, is a CLIENT span; the hedge's
    carries http.request.resend_count = 1."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inner = Transport([HANG, reply(200)])
    transport = make(inner, Hedge(delay=0.1), telemetry=True, tracer_provider=provider)
    await get(transport)
    attempts = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    counts = sorted((s.attributes or {}).get("http.request.resend_count", 0) for s in attempts)
    assert counts == [0, 1]
    provider.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"delay": -1.0}, "delay"),
        ({"max_hedges": 0}, "max_hedges"),
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 101.0}, "percentile"),
        ({"min_delay": -0.1}, "min_delay"),
        ({"samples": 0}, "samples"),
        ({"samples": 5, "min_samples": 6}, "min_samples"),
        ({"idempotent_methods": "GET"}, "idempotent_methods"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, Any], named: str) -> None:
    """A bad argument fails at construction, naming it."""
    with pytest.raises(ConfigurationError, match=named):
        Hedge(**kwargs)
