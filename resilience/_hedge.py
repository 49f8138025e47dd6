"""The Hedge layer: when an attempt is slow, send another one in parallel.

It sits below Retry (each round of Retry is then one hedged group of attempts) and
above the breaker, AuthRefresh and ``Timeout(attempt=...)``, so that each hedge is
an attempt of its own: counted by the breaker, given its own token and time limit,
its own CLIENT span with ``http.request.resend_count``, and its own entry in the
report. The first attempt that gives a final answer (ACCEPT or SPLIT, or a FAIL the
server sent) wins; the others are cancelled and whatever they received is closed.

An attempt that fails fast (a RETRY verdict without a server hint to wait) sends
the next hedge at once rather than after the delay. Each hedge draws one token from
the pipeline's retry budget when there is one, so hedging stays within the same
share of extra traffic as retries. Only requests that may be sent twice are
hedged: the core idempotency rule (:func:`~resilience.is_idempotent`) and a body
that can be read again.

The delay is fixed, or a percentile of recent latencies the layer keeps in a
bounded ring: the first attempt's time to a final answer (or, when a hedge beat it,
the time it had run when it was cancelled, a lower bound that keeps the tail in
the ring rather than letting hedging hide it).
"""

from __future__ import annotations

import contextvars
import math
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
import httpx

from . import _validate as v
from ._http import IDEMPOTENT_METHODS, body_replayable, is_idempotent
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._layer_events import HedgeSent
from ._verdict import Action, Problem, Verdict
from .errors import ConfigurationError, ResilienceError

__all__ = ["Hedge"]

T = TypeVar("T")

_RETRY = Action.RETRY
_ACCEPT = Action.ACCEPT
_SPLIT = Action.SPLIT


def _methods(value: Any) -> frozenset[str]:
    return v.method_set(value, "Hedge", "idempotent_methods")


@attrs.frozen(kw_only=True)
class Hedge:
    """Sends up to :attr:`max_hedges` more attempts while earlier ones are slow.

    The first hedge goes out :attr:`delay` seconds after the first attempt (with
    :attr:`percentile`, after that percentile of recent latencies once
    :attr:`min_samples` are known, but never sooner than :attr:`min_delay`), the
    next one a delay later, and so on while no attempt has answered. The first
    final answer wins; the other attempts are cancelled and their responses closed.
    When every attempt fails, the last failure is passed up (for Retry above).
    """

    delay: float = attrs.field(default=1.0, validator=v.number(minimum=0))
    """Seconds without an answer before the next hedge; with :attr:`percentile`,
    the delay used until :attr:`min_samples` latencies are known."""
    max_hedges: int = attrs.field(default=1, validator=v.number(minimum=1, integer=True))
    """Attempts sent in addition to the first, at most."""
    percentile: float | None = attrs.field(
        default=None,
        validator=v.number(minimum=0, exclusive_minimum=True, maximum=100, optional=True),
    )
    """When set (``95.0``, say), the delay is this percentile of the latencies of
    recent calls' first attempts."""
    min_delay: float = attrs.field(default=0.0, validator=v.number(minimum=0))
    """The shortest delay a percentile may give, in seconds (a floor, so a run of
    fast answers does not make every call hedge)."""
    samples: int = attrs.field(default=100, validator=v.number(minimum=1, integer=True))
    """Latencies kept for the percentile (a ring: the newest replace the oldest)."""
    min_samples: int = attrs.field(default=20, validator=v.number(minimum=1, integer=True))
    """Latencies needed before the percentile replaces :attr:`delay`."""
    idempotent_methods: frozenset[str] = attrs.field(default=IDEMPOTENT_METHODS, converter=_methods)
    """Methods hedged without an idempotency key (the same default as Retry's)."""

    def __attrs_post_init__(self) -> None:
        if self.min_samples > self.samples:
            raise ConfigurationError(
                f"Hedge: min_samples ({self.min_samples}) must be <= samples ({self.samples})"
            )

    def bind(self, env: PipelineEnv) -> _HedgeHandler:
        return _HedgeHandler(self, env)

    def may_hedge(self, request: httpx.Request) -> bool:
        """Whether ``request`` may be sent more than once (idempotent, body replayable)."""
        return is_idempotent(request, self.idempotent_methods) and body_replayable(request)


class _Latencies:
    """A ring of recent latencies and the percentile of them, recomputed now and then."""

    __slots__ = ("_fresh", "_index", "_quantile", "_ring", "_size", "_stale", "_value")

    def __init__(self, size: int, percentile: float) -> None:
        self._ring: list[float] = []
        self._size = size
        self._index = 0
        self._quantile = percentile / 100.0
        self._value = math.nan
        # Sorting the ring costs microseconds: redo it after a tenth of it changed.
        self._fresh = max(1, size // 10)
        self._stale = 0

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, seconds: float) -> None:
        ring = self._ring
        if len(ring) < self._size:
            ring.append(seconds)
        else:
            ring[self._index] = seconds
            self._index = (self._index + 1) % self._size
        self._stale += 1

    def value(self) -> float:
        if self._stale >= self._fresh or math.isnan(self._value):
            ordered = sorted(self._ring)
            # The nearest-rank percentile: a latency that was actually seen.
            rank = max(math.ceil(self._quantile * len(ordered)) - 1, 0)
            self._value = ordered[rank]
            self._stale = 0
        return self._value


class _HedgeHandler:
    """The bound layer: runs one race of attempts per call."""

    __slots__ = ("_clock", "_config", "_env", "_latencies", "_pad_verdict")

    def __init__(self, config: Hedge, env: PipelineEnv) -> None:
        self._config = config
        self._env = env
        self._clock = env.clock
        self._latencies = (
            _Latencies(config.samples, config.percentile) if config.percentile is not None else None
        )
        # The verdict recorded for an attempt cancelled because another one won, so
        # the report keeps one verdict per attempt. Not a breaker failure.
        self._pad_verdict = Verdict(
            Action.RETRY,
            problem=Problem(
                vendor=env.vendor,
                code="hedge_cancelled",
                title="cancelled: another attempt answered first",
            ),
            breaker_failure=False,
        )

    def current_delay(self) -> float:
        """Seconds the next call waits before its first hedge."""
        config = self._config
        latencies = self._latencies
        if latencies is None or len(latencies) < config.min_samples:
            return float(config.delay)
        value = latencies.value()
        return value if value > config.min_delay else float(config.min_delay)

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        if not self._config.may_hedge(request):
            return await call_next(request, call)
        race = _Race(self, request, call, call_next)
        return await race.run()

    def budget_allows(self, now: float) -> bool:
        """Take a hedge's token from the retry budget, when the pipeline has one."""
        # Looked up per hedge, not at bind: a Retry above binds after this layer.
        bucket = self._env.budget
        return bucket is None or bucket.try_withdraw(now)


class _Race:
    """One call's attempts: the first runs in the caller's task, hedges in a group.

    The timer (``_pace``) is started when an attempt first waits, not before: a
    first attempt that answers without waiting leaves the group empty, and an
    idle group is cheap to leave (no task to cancel and join).
    """

    __slots__ = (
        "armed",
        "call",
        "call_next",
        "context",
        "delay",
        "failure",
        "group",
        "handler",
        "over",
        "pending",
        "raised",
        "request",
        "sent",
        "started",
        "stopped",
        "winner",
    )

    def __init__(
        self, handler: _HedgeHandler, request: httpx.Request, call: Call, call_next: CallNext
    ) -> None:
        self.handler = handler
        self.request = request
        self.call = call
        self.call_next = call_next
        self.group: anyio.abc.TaskGroup | None = None
        self.winner: Outcome | None = None
        """The first final answer."""
        self.failure: Outcome | None = None
        """The latest failed attempt (kept to pass up if every attempt fails)."""
        self.pending = 0
        self.sent = 1
        self.started = 0.0
        self.stopped = False
        """No more hedges: the budget or the deadline refused one."""
        self.over = False
        """The race is decided: every attempt still out is being cancelled."""
        self.raised: Exception | None = None
        """What an attempt raised (a layer below failing), when no attempt won."""
        self.armed = False
        """The timer task is started."""
        self.delay = 0.0
        self.context = contextvars.copy_context()
        """The caller's context as the call left it (the call span current): the
        timer and the hedges start from it, not from inside the first attempt."""

    async def run(self) -> Outcome:
        handler = self.handler
        call = self.call
        report = call.report
        unclassified = report.attempts - len(report.verdicts)
        self.delay = handler.current_delay()
        self.started = handler._clock.now()
        first: Outcome | None = None
        try:
            async with anyio.create_task_group() as group:
                self.group = group
                self.pending += 1
                try:
                    # The first attempt runs in this task; the timer starts only if
                    # it has to wait (an answer without waiting cannot be slow).
                    first = await _arming(self.call_next(self.request, call), self._arm)
                except Exception as exc:
                    self._fault(exc)
                finally:
                    self.pending -= 1
                    self._record(first)
                await self._settle(first)
        except BaseException:
            await self._discard()
            raise
        outcome = self.winner
        if outcome is None:
            raised = self.raised
            if raised is not None:
                # Raised as it would be without hedging, not in an exception group.
                self.raised = None
                await self._discard()
                raise raised
            outcome = self.failure
            if outcome is None:  # pragma: no cover - every attempt ends with an outcome
                raise RuntimeError("Hedge: the race ended without an outcome")
        self.winner = self.failure = None
        self._pad(report, unclassified, outcome)
        return outcome

    def _arm(self) -> None:
        """Start the timer (once): an attempt is out and may be slow."""
        if self.armed or self.over:
            return
        self.armed = True
        group = self.group
        assert group is not None
        self.context.run(group.start_soon, self._pace, self.delay)

    def _record(self, first: Outcome | None) -> None:
        """Note the first attempt's latency for the percentile."""
        latencies = self.handler._latencies
        if latencies is None:
            return
        if first is None:
            if self.winner is None:
                return  # cancelled from outside: nothing learnt
        elif first.verdict.action is _RETRY or isinstance(first.error, ResilienceError):
            return  # a fast failure says nothing of how long an answer takes
        latencies.add(self.handler._clock.now() - self.started)

    async def _pace(self, delay: float) -> None:
        """Send a hedge every ``delay`` seconds while no attempt has answered."""
        clock = self.handler._clock
        config = self.handler._config
        # The race may be over before this task first runs (an answer soon after).
        while self.sent <= config.max_hedges and not self.stopped and not self.over:
            await clock.sleep(delay)
            if self.sent <= config.max_hedges and not self.stopped and not self.over:
                self._launch("delay")

    def _launch(self, trigger: str) -> bool:
        """Start the next hedge; ``False`` when the budget or the deadline refuse it."""
        handler = self.handler
        call = self.call
        now = handler._clock.now()
        remaining = call.remaining()
        if (remaining is not None and remaining <= 0) or not handler.budget_allows(now):
            self.stopped = True
            return False
        number = self.sent
        self.sent += 1
        call.report.hedges += 1
        request = self.request
        handler._env.emit(
            HedgeSent(
                method=request.method,
                host=request.url.host,
                hedge=number,
                elapsed=now - self.started,
                trigger=trigger,
            ),
            call,
        )
        group = self.group
        assert group is not None
        self.pending += 1
        group.start_soon(self._hedge)
        # A hedge may be slow too: the next one goes out a delay later.
        self._arm()
        return True

    async def _hedge(self) -> None:
        # Its own request (extensions, headers) and its own Call sharing the report:
        # layers below set per-attempt state on both (a Timeout's limits, a token).
        call = attrs.evolve(self.call)
        outcome: Outcome | None = None
        try:
            outcome = await self.call_next(_replica(self.request), call)
        except Exception as exc:
            self._fault(exc)
        finally:
            self.pending -= 1
        await self._settle(outcome)

    def _fault(self, exc: Exception) -> None:
        """An attempt raised: unless one already won, the race ends with it."""
        if self.winner is None and self.raised is None:
            self.raised = exc
            self._stop()

    async def _settle(self, outcome: Outcome | None) -> None:
        """Take an attempt's outcome: a win ends the race, a failure may hedge."""
        if outcome is None:
            return
        if self.winner is not None:
            await outcome.aclose()  # answered after another attempt won
            return
        verdict = outcome.verdict
        action = verdict.action
        made_here = isinstance(outcome.error, ResilienceError)
        if action is _ACCEPT or action is _SPLIT or (action is not _RETRY and not made_here):
            self.winner = outcome
            failure, self.failure = self.failure, None
            self._stop()
            if failure is not None:
                await failure.aclose()
            return
        # A failure: kept in case every attempt fails, replacing an older one.
        older, self.failure = self.failure, outcome
        if older is not None:
            await older.aclose()
        if (
            action is _RETRY
            and not made_here
            and verdict.retry_after is None  # the server asked us to wait: no hedge now
            and self.sent <= self.handler._config.max_hedges
            and not self.stopped
            and self._launch("failure")
        ):
            return
        if self.pending == 0:
            self._stop()

    def _stop(self) -> None:
        self.over = True
        group = self.group
        # With no task started there is nothing to cancel (and a cancelled task
        # group costs twice an idle one to leave, under asyncio).
        if group is not None and self.armed:
            group.cancel_scope.cancel()

    async def _discard(self) -> None:
        """Close what the race holds when it is cancelled or fails."""
        for outcome in (self.winner, self.failure):
            if outcome is not None:
                await outcome.aclose()
        self.winner = self.failure = None

    def _pad(self, report: Any, unclassified: int, outcome: Outcome) -> None:
        """One verdict per attempt, the one passed up last.

        Attempts cancelled because another won were never classified: they get
        the ``hedge_cancelled`` verdict. The outcome's own verdict moves to the
        end, where a reader (and ``classify_unfinished``) looks for the final one.
        """
        verdicts = report.verdicts
        missing = report.attempts - len(verdicts) - unclassified
        if missing > 0:
            verdicts.extend([self.handler._pad_verdict] * missing)
        final = outcome.verdict
        if verdicts and verdicts[-1] is not final:
            for index in range(len(verdicts) - 1, -1, -1):
                if verdicts[index] is final:
                    verdicts.append(verdicts.pop(index))
                    break


@types.coroutine
def _arming(awaitable: Awaitable[T], arm: Callable[[], None]) -> Generator[Any, Any, T]:
    """Await ``awaitable`` in the current task, calling ``arm`` when it first waits.

    Each step is passed through unchanged (asyncio's futures, trio's
    traps, cancellations thrown in). A coroutine that finishes without waiting
    never calls ``arm``: a call answered at once starts no timer task, which costs
    more than the rest of the layer together.
    """
    coro = awaitable.__await__()
    try:
        signal = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    try:
        arm()
    except BaseException:
        coro.close()
        raise
    while True:
        try:
            sent = yield signal
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                signal = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                signal = coro.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


def _replica(request: httpx.Request) -> httpx.Request:
    """A copy of ``request`` for a hedge: same method, URL, headers and body."""
    stream = request.stream
    if not isinstance(stream, httpx.ByteStream):
        stream = httpx.ByteStream(request.content)  # read already (may_hedge checked)
    copy = httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=stream,
        extensions=dict(request.extensions),
    )
    copy.read()  # in memory: the copy's .content works like the original's
    return copy
