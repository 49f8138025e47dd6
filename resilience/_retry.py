"""The Retry layer: backoff with jitter, server hints, deadline, idempotency, budget.

It sits above the breaker and AuthRefresh; it acts only on RETRY verdicts (and, if
asked, on an open breaker below: it waits for its half-open, or holds the call
until a probe succeeds, see ``_hold.py``) and passes every other outcome up
unchanged. Holding lives here, not in the breaker, because a hold is a wait before
the call's next attempt: the deadline, the budget (a held call spends none) and the
report (``delays``, ``gave_up``) are this layer's.

Whether to retry and how long to wait is :func:`resilience._backoff.decide`, a pure
function shared with the splitter; the handler here gathers its inputs and does
the I/O (send, close, sleep, hold, report, events). The first attempt's success
costs one budget deposit and one comparison, nothing more.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import anyio
import attrs
import httpx

from . import _validate as v
from ._backoff import (
    JITTER_MODES,
    MIN_HINT_CAP,
    Backoff,
    BudgetWindow,
    ExponentialBackoff,
    JitterMode,
    RetryBudget,
    backoff_validator,
    bind_backoff,
    decide,
    default_cap,
)
from ._clock import SystemClock
from ._events import CallHeld, CallReleased, RetryScheduled
from ._hold import CANCELLED, PROBE, RECOVERED, Hold
from ._http import IDEMPOTENT_METHODS, body_replayable, is_idempotent
from ._layer import Call, CallNext, Outcome, PipelineEnv, RetryBudgetState
from ._report import GaveUp
from ._verdict import Action, Verdict
from .errors import CircuitOpenError

__all__ = ["Backoff", "ExponentialBackoff", "JitterMode", "Retry", "RetryBudget"]

# Kept importable from here (the splitter and the presets read them).
_ = (JITTER_MODES, MIN_HINT_CAP, BudgetWindow)

logger = logging.getLogger("resilience")

#: How early (seconds) a sleep for a breaker's half-open may have woken and still
#: be finished rather than count as an attempt.
_EARLY_WAKE = 0.05

_RETRY = Action.RETRY


def _retry_after(error: BaseException | None) -> float | None:
    return float(error.retry_after) if isinstance(error, CircuitOpenError) else None


def _cut_short(delays: list[float], waited: float, delay: float) -> None:
    """A wait cut short (a cancellation): the report says what was waited, not planned."""
    if waited < delay:
        delays[-1] = waited if waited > 0.0 else 0.0


def _methods(value: Any) -> frozenset[str]:
    return v.method_set(value, "Retry", "idempotent_methods")


@attrs.frozen(kw_only=True)
class Retry:
    """Retries attempts whose verdict is RETRY.

    The wait is the larger of the backoff and the server's hint (``Retry-After`` or
    a hint the classifier found), capped at :attr:`max_delay`. It never sleeps past
    the call's deadline (``Timeout(total=...)``): when the next wait cannot fit it
    gives up at once. It never replays a non-idempotent method unless the request
    carries an ``Idempotency-Key`` (or ``X-Idempotency-Key``) header or
    ``retry_non_idempotent`` is set, and never replays a body it cannot re-read.
    Every discarded response is closed.
    """

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    max_attempts: int = attrs.field(default=3, validator=v.number(minimum=1, integer=True))
    """Attempts in all, the first included."""
    backoff: Backoff = attrs.field(factory=ExponentialBackoff, validator=backoff_validator("Retry"))
    """How long to wait before each retry."""
    budget: RetryBudget | None = attrs.field(
        factory=RetryBudget, validator=v.instance_of(RetryBudget, optional=True)
    )
    """The pipeline-wide retry budget; ``None`` turns it off."""
    retry_non_idempotent: bool = False
    """Replay POST and PATCH (and other non-idempotent methods) too."""
    idempotent_methods: frozenset[str] = attrs.field(default=IDEMPOTENT_METHODS, converter=_methods)
    """Methods replayed without an idempotency key."""
    max_delay: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, optional=True)
    )
    """Cap on any single wait, server hints included (default: the larger of the
    backoff's longest wait (``max_delay``, plus the ratio for proportional jitter)
    and 60 s, so a server's ``Retry-After`` of up to a minute is honoured)."""
    wait_for_half_open: bool = False
    """When the breaker below is open and will half-open before the deadline, wait
    for it (as a retry) instead of failing at once."""
    hold: Hold | None = attrs.field(default=None, validator=v.instance_of(Hold, optional=True))
    """Hold calls that meet an open breaker below (or whose budget is spent while it
    is open) until a probe succeeds, then release them in a ramp, instead of failing
    them (see :class:`Hold`). Default: off, a call fails fast. It takes precedence
    over :attr:`wait_for_half_open`, and does nothing without a breaker below."""

    def bind(self, env: PipelineEnv) -> _RetryHandler:
        bucket: RetryBudgetState | None = None
        if self.budget is not None:
            bucket = env.budget
            if bucket is None:
                bucket = env.budget = self.budget.build(env.clock)
                attach = getattr(bucket, "attach", None)  # a shared budget's telemetry
                if attach is not None:
                    attach(env)
        cap = self.max_delay if self.max_delay is not None else default_cap(self.backoff)
        # Breakers below this layer (bound before it): a retry that an open breaker
        # would reject is not worth its backoff sleep.
        breakers = tuple(env.breakers)
        # Holding needs a breaker below to say when the backend is back.
        hold = self.hold if breakers else None
        # A budget kept in a store (RetryBudget(store=...)) needs awaits: its own
        # handler, so that a pipeline without one runs exactly as before.
        handler = (
            _RetryHandler if type(bucket) is BudgetWindow or bucket is None else _StoreRetryHandler
        )
        return handler(
            self,
            env,
            bucket,
            bind_backoff(self.backoff),
            cap,
            breakers,
            hold,
            self.wait_for_half_open or hold is not None,
        )

    def is_replayable(self, request: httpx.Request) -> GaveUp | None:
        """Why ``request`` must not be replayed, or ``None`` when it may be."""
        if not self.retry_non_idempotent and not is_idempotent(request, self.idempotent_methods):
            return GaveUp.NOT_IDEMPOTENT
        if not body_replayable(request):
            return GaveUp.BODY_NOT_REPLAYABLE
        return None


@attrs.define(eq=False, slots=True)
class _RetryHandler:
    config: Retry
    env: PipelineEnv
    bucket: RetryBudgetState | None
    backoff: Backoff
    """The backoff this pipeline draws from (its own generator)."""
    cap: float
    breakers: tuple[Any, ...] = ()
    hold: Hold | None = None
    on_open: bool = False
    """Whether a call an open breaker rejected may go on (``wait_for_half_open`` or ``hold``)."""
    #: Whether the budget is asked (awaited) after the decision (a store's budget).
    _in_store: ClassVar[bool] = False

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        # Once per logical call: a splitter's re-requests pass here again.
        if self.bucket is not None and call.report.attempts == 0:
            self.bucket.deposit()
        outcome = await call_next(request, call)
        if outcome.verdict.action is not _RETRY and not self.on_open:
            return outcome
        return await self._retry(request, call, call_next, outcome)

    async def _retry(
        self, request: httpx.Request, call: Call, call_next: CallNext, outcome: Outcome
    ) -> Outcome:
        """The attempts after the first failed: decide, wait (or hold), send again."""
        attempt = 1
        previous: float | None = None
        held_since: float | None = None  # when the call was first held
        report = call.report
        max_attempts = self.config.max_attempts
        # Whether the request may be replayed, asked once: its method, headers and
        # body are the same on every attempt (and a body read stays read).
        replay: GaveUp | None = None
        asked = False
        while True:
            verdict = outcome.verdict
            rejected = verdict.action is not _RETRY
            if rejected and not self._may_wait_for(outcome.error):
                return outcome
            hint = verdict.retry_after if not rejected else _retry_after(outcome.error)
            # Why the request may not be sent again, whatever the wait.
            if attempt >= max_attempts:
                gave_up: GaveUp | None = GaveUp.MAX_ATTEMPTS
            elif rejected and attempt == 1:
                # A first attempt the breaker rejected sent nothing: sending it is no replay.
                gave_up = None
            else:
                if not asked:
                    replay = self.config.is_replayable(request)
                    asked = True
                gave_up = replay
            if (
                gave_up is None
                and self.hold is not None
                and (rejected or self._circuit(request) is not None)
            ):
                # The breaker below is open (or half-open with its probe out): hold for
                # a probe to succeed rather than back off blindly. A held call spends no
                # budget: the ramp paces it instead.
                if held_since is None:
                    held_since = self.env.clock.now()
                if not await self._hold(request, call, attempt, held_since):
                    return self._give_up(call, outcome, GaveUp.CIRCUIT_OPEN)
                report.gave_up = None
                await outcome.aclose()
            else:
                decision = (
                    gave_up
                    if gave_up is not None
                    else self._decide(request, call, attempt, hint, previous)
                )
                if self._in_store and not isinstance(decision, GaveUp):
                    decision = await self._take(decision)
                if isinstance(decision, GaveUp):
                    return self._give_up(call, outcome, decision)
                # Retrying after all: what gave up below (a Timeout(total=...) inside
                # this layer) no longer describes the call.
                report.gave_up = None
                response = outcome.response
                if response is not None and not response.is_closed:
                    await outcome.aclose()  # (one read in memory is closed already)
                self._announce(request, call, attempt, verdict, decision)
                if call.cutoff is None and not self.config.wait_for_half_open:
                    # The common wait, inline (no frame more): a zero wait is exactly
                    # one checkpoint, the clock's.
                    clock = self.env.clock
                    started = clock.now()
                    try:
                        await clock.sleep(decision)
                    except BaseException:
                        _cut_short(report.delays, clock.now() - started, decision)
                        raise
                elif not await self._wait(request, call, decision):
                    return self._give_up(call, outcome, GaveUp.DEADLINE)
                previous = decision
            attempt += 1
            outcome = await call_next(request, call)

    def _may_wait_for(self, error: BaseException | None) -> bool:
        """Whether a call an open breaker below rejected may go on (wait or hold)."""
        # An isolated breaker (retry_after infinite) never half-opens.
        return (
            self.on_open
            and isinstance(error, CircuitOpenError)
            and math.isfinite(error.retry_after)
        )

    def _decide(
        self,
        request: httpx.Request,
        call: Call,
        attempt: int,
        hint: float | None,
        previous: float | None,
    ) -> float | GaveUp:
        """Gather the decision's inputs, ask :func:`decide`, and spend the budget on a retry."""
        now = self.env.clock.now()
        deadline = call.deadline
        bucket = self.bucket
        decision = decide(
            attempt,
            max_attempts=self.config.max_attempts,
            backoff=self.backoff.delay(attempt - 1, previous),
            hint=hint,
            cap=self.cap,
            remaining=None if deadline is None else deadline - now,
            budget_ok=bucket is None or bucket.allows(now),
            blocked=self._blocked(request) if self.breakers else 0.0,
            wait_for_blocked=self.config.wait_for_half_open,
        )
        if bucket is not None and not isinstance(decision, GaveUp):
            bucket.try_withdraw(now)
        return decision

    async def _take(self, delay: float) -> float | GaveUp:
        """The retry's share of a store's budget (only :class:`_StoreRetryHandler`)."""
        raise NotImplementedError

    def _give_up(self, call: Call, outcome: Outcome, gave_up: GaveUp) -> Outcome:
        if isinstance(outcome.error, CircuitOpenError):
            gave_up = GaveUp.CIRCUIT_OPEN
        call.report.gave_up = gave_up
        return outcome

    def _announce(
        self, request: httpx.Request, call: Call, attempt: int, verdict: Verdict, delay: float
    ) -> None:
        """Record the retry's wait in the report, and tell hooks, telemetry and the log."""
        call.report.delays.append(delay)
        env = self.env
        # Telemetry records a retry only in a call it records (call.trace): with no
        # hook either, nobody would see the event, and it is not built.
        if env.hooks or (call.trace is not None and env.instrument is not None):
            env.emit(
                RetryScheduled(
                    method=request.method,
                    host=request.url.host,
                    attempt=attempt,
                    delay=delay,
                    verdict=verdict,
                ),
                call,
            )
        if logger.isEnabledFor(logging.DEBUG):
            problem = verdict.problem
            logger.debug(
                "resilience retry: %s %s attempt %d failed (%s), retrying in %.3fs%s",
                request.method,
                request.url.host,
                attempt,
                verdict.reason,
                delay,
                f" request_id={problem.request_id}" if problem and problem.request_id else "",
            )

    async def _wait(self, request: httpx.Request, call: Call, delay: float) -> bool:
        """Sleep ``delay`` (announced), by the call's real-time deadline, and for a
        breaker's half-open when asked; the report says what was waited.

        ``False`` when the call's deadline cut the sleep (the sleep is planned to end
        before it, so only a clock that overruns in real time gets there).
        """
        delays = call.report.delays
        clock = self.env.clock
        started = clock.now()
        cutoff = call.cutoff
        try:
            if cutoff is None or (type(clock) is SystemClock and delay < cutoff - time.monotonic()):
                # No deadline, or the real clock's wait, planned to end before it (its
                # time is the deadline's own): nothing to guard, and no cancel scope
                # (15 to 20 µs) on every retry of a call with a Timeout(total=...).
                await clock.sleep(delay)
            else:
                # The deadline holds in real time too, whatever the clock does: no
                # Timeout(total=...) above keeps a scope of its own (see _timeout.py).
                remaining = cutoff - time.monotonic()
                with anyio.move_on_after(remaining if remaining > 0.0 else 0.0) as scope:
                    await clock.sleep(delay)
                if scope.cancelled_caught:
                    waited = clock.now() - started
                    delays[-1] = min(delay, waited if waited > 0.0 else 0.0)
                    return False
        except BaseException:
            # Cut short (a Timeout(total=...) above, the caller's cancellation): the
            # report says what was waited, not what was planned.
            _cut_short(delays, clock.now() - started, delay)
            raise
        if self.config.wait_for_half_open and self.breakers:
            # A timer may fire a little early (asyncio's clock resolution is 15.6 ms on
            # Windows): finish the wait for the half-open rather than spend an attempt
            # on a breaker that is still open.
            rest = self._blocked(request)
            while 0.0 < rest <= _EARLY_WAKE:
                await clock.sleep(rest)
                rest = self._blocked(request)
        return True

    def _blocked(self, request: httpx.Request) -> float:
        """Seconds until every breaker below would let ``request`` through."""
        longest = 0.0
        for registry in self.breakers:
            wait = registry.blocked_for(request)
            if wait > longest:
                longest = wait
        return longest

    def _circuit(self, request: httpx.Request) -> Any:
        """The circuit below that keeps ``request`` out longest, when one is not closed."""
        found = None
        latest = -math.inf
        now = self.env.clock.now()
        for registry in self.breakers:
            circuit = registry._holding(request)
            if circuit is not None and circuit._next_probe(now) > latest:
                found, latest = circuit, circuit._next_probe(now)
        return found

    async def _hold(self, request: httpx.Request, call: Call, attempt: int, since: float) -> bool:
        """Hold the call until the circuit below recovers and its turn in the ramp
        comes (True), or until holding is hopeless (False: the circuit is isolated,
        the next probe cannot come before the deadline or ``max_wait`` after
        ``since``, when the call was first held, or the circuit holds ``max_calls``
        already). What it waited is one of the report's ``delays``, whatever the
        end (a cancellation included)."""
        hold = self.hold
        circuit = self._circuit(request)
        if hold is None or circuit is None:
            return False
        clock = self.env.clock
        start = clock.now()
        end = since + hold.max_wait
        deadline = call.deadline
        # End a little before the deadline, so that the hold gives up by itself (and
        # the report says so) before a Timeout(total=...) above cuts the call.
        if deadline is not None and deadline - _EARLY_WAKE < end:
            end = deadline - _EARLY_WAKE
        if circuit._next_probe(start) >= end:
            return False
        queue = circuit._hold_queue(hold)
        waiter = queue.join(end, start)
        if waiter is None:
            return False
        method = request.method
        host = request.url.host
        key = circuit.key
        env = self.env
        held = CallHeld(method=method, host=host, key=key, attempt=attempt, held=len(queue))
        env.emit(held, call)
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug(
                "resilience hold: %s %s attempt %d met circuit %s open; held (%d held)",
                method,
                host,
                attempt,
                key,
                held.held,
            )
        how = CANCELLED
        try:
            how = await queue.wait(waiter, circuit, clock)
        finally:
            waited = clock.now() - start
            call.report.delays.append(waited if waited > 0.0 else 0.0)
            env.emit(
                CallReleased(method=method, host=host, key=key, waited=waited, outcome=how), call
            )
            if debug:
                logger.debug(
                    "resilience hold: %s %s on circuit %s ended after %.3fs: %s",
                    method,
                    host,
                    key,
                    waited,
                    how,
                )
        return how in (RECOVERED, PROBE)


@attrs.define(eq=False, slots=True)
class _StoreRetryHandler(_RetryHandler):
    """Retry with a budget kept in a store (``RetryBudget(store=...)``, a
    ``SharedBudget``): the calls reach the store at most once a slot, and a retry
    is taken from the store, awaited, after every other reason to stop was checked
    (the budget is asked last, as :func:`decide` asks it)."""

    _in_store: ClassVar[bool] = True

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        if call.report.attempts == 0:
            budget: Any = self.bucket
            budget.deposit()
            if budget.flush_due():
                await budget.flush()
        outcome = await call_next(request, call)
        if outcome.verdict.action is not _RETRY and not self.on_open:
            return outcome
        return await self._retry(request, call, call_next, outcome)

    def _decide(
        self,
        request: httpx.Request,
        call: Call,
        attempt: int,
        hint: float | None,
        previous: float | None,
    ) -> float | GaveUp:
        """:func:`decide` without the budget: :meth:`_take` asks the store after it."""
        now = self.env.clock.now()
        deadline = call.deadline
        return decide(
            attempt,
            max_attempts=self.config.max_attempts,
            backoff=self.backoff.delay(attempt - 1, previous),
            hint=hint,
            cap=self.cap,
            remaining=None if deadline is None else deadline - now,
            blocked=self._blocked(request) if self.breakers else 0.0,
            wait_for_blocked=self.config.wait_for_half_open,
        )

    async def _take(self, delay: float) -> float | GaveUp:
        budget: Any = self.bucket
        return delay if await budget.take(self.env.clock.now()) else GaveUp.BUDGET
