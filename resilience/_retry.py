"""The Retry layer: backoff with jitter, server hints, deadline, idempotency, budget.

It sits above the breaker and AuthRefresh; it acts only on RETRY verdicts (and, if
asked, on an open breaker below: it waits for its half-open, or holds the call
until a probe succeeds, see ``_hold.py``) and passes every other outcome up
unchanged. Holding lives here, not in the breaker, because a hold is a wait before
the call's next attempt: the deadline, the budget (a held call spends none) and the
report (``delays``, ``gave_up``) are this layer's. Backoff maths is a pure function
of the retry number, so it is testable without any I/O.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Protocol, runtime_checkable

import attrs
import httpx

from . import _validate as v
from ._events import CallHeld, CallReleased, RetryScheduled
from ._hold import CANCELLED, PROBE, RECOVERED, Hold
from ._http import IDEMPOTENT_METHODS, is_idempotent
from ._layer import Call, CallNext, Outcome, PipelineEnv, RetryBudgetState
from ._report import GaveUp
from ._verdict import Action
from .errors import CircuitOpenError, ConfigurationError

__all__ = ["Backoff", "ExponentialBackoff", "Retry", "RetryBudget"]

logger = logging.getLogger("resilience")

#: How early (seconds) a sleep for a breaker's half-open may have woken and still
#: be finished rather than count as an attempt.
_EARLY_WAKE = 0.05

JITTER_MODES = ("none", "full", "equal", "decorrelated", "proportional")

#: Server hints are honoured up to at least this long, whatever the backoff cap.
MIN_HINT_CAP = 60.0


@runtime_checkable
class Backoff(Protocol):
    """Chooses the wait before a retry."""

    @property
    def max_delay(self) -> float:
        """The longest base delay, in seconds (server hints may ask for more)."""
        ...

    def delay(self, retry: int, previous: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry).

        ``previous`` is the wait chosen before the previous retry (``None`` first).
        """
        ...


@attrs.frozen(kw_only=True)
class ExponentialBackoff:
    """``initial * multiplier ** retry``, capped at ``max_delay``, with jitter.

    Jitter modes (the AWS Architecture Blog formulas, plus Tellus's):

    * ``"none"``: exactly the capped exponential.
    * ``"full"``: uniform in ``[0, capped]``.
    * ``"equal"``: ``capped / 2`` plus uniform in ``[0, capped / 2]``.
    * ``"decorrelated"``: uniform in ``[initial, previous * 3]``, capped.
    * ``"proportional"``: ``capped`` plus uniform in ``[0, jitter_ratio * capped]``
      (the wait may then exceed ``max_delay`` by that ratio, as Tellus prescribes).
    """

    initial: float = attrs.field(default=1.0, validator=v.number(minimum=0))
    """The first retry's base delay, in seconds."""
    multiplier: float = attrs.field(default=2.0, validator=v.number(minimum=1))
    """Growth per retry."""
    max_delay: float = attrs.field(default=30.0, validator=v.number(minimum=0))
    """Cap on the base delay, in seconds."""
    jitter: str = attrs.field(default="full", validator=v.one_of(JITTER_MODES))
    """One of ``none``, ``full``, ``equal``, ``decorrelated``, ``proportional``."""
    jitter_ratio: float = attrs.field(default=0.3, validator=v.number(minimum=0, maximum=1))
    """For ``proportional`` jitter: the largest extra, as a fraction of the delay."""
    rng: random.Random = attrs.field(
        factory=random.Random,
        eq=False,
        repr=False,
        validator=v.instance_of(random.Random),
    )
    """Randomness; pass ``random.Random(seed)`` for reproducible delays."""

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.initial:
            raise ConfigurationError(
                f"ExponentialBackoff: max_delay ({self.max_delay}) must be >= initial "
                f"({self.initial})"
            )

    def base(self, retry: int) -> float:
        """The capped exponential delay before jitter."""
        if self.initial == 0:
            return 0.0
        try:
            # Floats: integer arguments would build a huge int that isfinite() rejects.
            raw = float(self.initial) * float(self.multiplier) ** max(retry, 0)
        except OverflowError:
            return float(self.max_delay)
        return min(raw, float(self.max_delay)) if math.isfinite(raw) else float(self.max_delay)

    def delay(self, retry: int, previous: float | None = None) -> float:
        jitter = self.jitter
        if jitter == "decorrelated":
            low = self.initial
            high = max(low, (previous if previous is not None else low) * 3)
            return min(self.max_delay, self.rng.uniform(low, high))
        capped = self.base(retry)
        if jitter == "none":
            return capped
        if jitter == "full":
            return self.rng.uniform(0.0, capped)
        if jitter == "equal":
            return capped / 2 + self.rng.uniform(0.0, capped / 2)
        return capped + self.rng.uniform(0.0, self.jitter_ratio * capped)


@attrs.frozen(kw_only=True)
class RetryBudget:
    """A token bucket that keeps retries to a fraction of the traffic.

    Each logical call deposits ``ratio`` tokens; each retry withdraws one; the bucket
    also refills ``min_per_second`` tokens a second, and starts with ``initial``
    tokens, so a fresh pipeline (or a lone call) is never starved. When the bucket
    is empty, the Retry layer returns the last outcome instead of retrying: during
    an outage the attempts per call tend to ``1 + ratio``.

    The bucket holds the larger of ``capacity`` and ``ratio`` times the calls in
    flight, so a burst of N concurrent calls that all fail can retry about
    ``ratio * N`` times, while a long healthy stream banks no more than
    ``capacity`` (nor the share of what is in flight).
    """

    ratio: float = attrs.field(default=0.2, validator=v.number(minimum=0, maximum=1))
    """Retries allowed per call, on average (0.2: retries add at most 20%)."""
    min_per_second: float = attrs.field(default=1.0, validator=v.number(minimum=0))
    """A floor of retries per second, whatever the traffic."""
    initial: float = attrs.field(default=10.0, validator=v.number(minimum=0))
    """Tokens in a fresh bucket."""
    capacity: float | None = attrs.field(default=None, validator=v.number(minimum=1, optional=True))
    """Tokens the bucket holds whatever the traffic (default: ``max(initial, 10)``);
    with more calls in flight it holds up to ``ratio`` times their number."""

    def __attrs_post_init__(self) -> None:
        if self.capacity is not None and self.initial > self.capacity:
            raise ConfigurationError(
                f"RetryBudget: initial ({self.initial!r}) must be <= capacity ({self.capacity!r})"
            )

    def build(self, now: float) -> TokenBucket:
        """A fresh bucket for one pipeline."""
        capacity = self.capacity if self.capacity is not None else max(self.initial, 10.0)
        return TokenBucket(self, capacity=capacity, tokens=self.initial, last=now)


@attrs.define(eq=False, slots=True)
class TokenBucket:
    """The runtime state of a :class:`RetryBudget`, shared by one pipeline."""

    config: RetryBudget
    capacity: float
    """Tokens held whatever the traffic (the floor of the bucket's size)."""
    tokens: float
    last: float
    in_flight: int = 0
    """Logical calls between :meth:`deposit` and :meth:`finish`."""

    def size(self) -> float:
        """Most tokens the bucket holds now: ``capacity``, or ``ratio`` per call in
        flight when that is more."""
        share = self.config.ratio * self.in_flight
        return share if share > self.capacity else self.capacity

    def deposit(self) -> None:
        """One logical call started: it earns ``ratio`` of a retry (call
        :meth:`finish` when it ends)."""
        self.in_flight += 1
        tokens = self.tokens + self.config.ratio
        size = self.size()
        # Tokens a burst earned beyond the size are cut here, once it has ended.
        self.tokens = tokens if tokens < size else size

    def finish(self) -> None:
        """A logical call that :meth:`deposit` counted has ended."""
        self.in_flight -= 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry's worth; ``False`` when the budget is spent."""
        elapsed = now - self.last
        self.last = now
        if elapsed > 0 and self.config.min_per_second:
            size = self.size()
            if self.tokens < size:
                self.tokens = min(size, self.tokens + elapsed * self.config.min_per_second)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _backoff_validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(getattr(value, "delay", None)) or not isinstance(
        getattr(value, "max_delay", None), (int, float)
    ):
        raise ConfigurationError(
            f"Retry: backoff must have delay() and max_delay, got {type(value).__name__}"
        )


def _methods(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        raise ConfigurationError("Retry: idempotent_methods must be a collection of names")
    return frozenset(str(m).upper() for m in value)


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

    max_attempts: int = attrs.field(default=3, validator=v.number(minimum=1, integer=True))
    """Attempts in all, the first included."""
    backoff: Backoff = attrs.field(factory=ExponentialBackoff, validator=_backoff_validator)
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
                bucket = env.budget = self.budget.build(env.clock.now())
        cap = self.max_delay
        if cap is None:
            longest = float(self.backoff.max_delay)
            if getattr(self.backoff, "jitter", None) == "proportional":
                # Proportional jitter adds on top of the capped delay by design.
                longest *= 1 + float(getattr(self.backoff, "jitter_ratio", 0.0))
            cap = max(longest, MIN_HINT_CAP)
        # Breakers below this layer (bound before it): a retry that an open breaker
        # would reject is not worth its backoff sleep.
        breakers = tuple(env.breakers)
        # Holding needs a breaker below to say when the backend is back.
        hold = self.hold if breakers else None
        return _RetryHandler(
            self, env, bucket, cap, breakers, hold, self.wait_for_half_open or hold is not None
        )

    def is_replayable(self, request: httpx.Request) -> GaveUp | None:
        """Why ``request`` must not be replayed, or ``None`` when it may be."""
        if not self.retry_non_idempotent and not is_idempotent(request, self.idempotent_methods):
            return GaveUp.NOT_IDEMPOTENT
        if not isinstance(request.stream, httpx.ByteStream):
            try:
                request.content  # noqa: B018 - raises when the body was never read
            except httpx.RequestNotRead:
                return GaveUp.BODY_NOT_REPLAYABLE
        return None


@attrs.define(eq=False, slots=True)
class _RetryHandler:
    config: Retry
    env: PipelineEnv
    bucket: RetryBudgetState | None
    cap: float
    breakers: tuple[Any, ...] = ()
    hold: Hold | None = None
    on_open: bool = False
    """Whether a call an open breaker rejected may go on (``wait_for_half_open`` or ``hold``)."""

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        config = self.config
        clock = self.env.clock
        bucket = self.bucket
        # Once per logical call: a splitter's re-requests pass here again.
        counted = bucket if call.report.attempts == 0 else None
        if counted is not None:
            counted.deposit()
        try:
            attempt = 1
            previous: float | None = None
            held_since: float | None = None  # when the call was first held
            while True:
                outcome = await call_next(request, call)
                verdict = outcome.verdict
                if verdict.action is Action.RETRY:
                    hint = verdict.retry_after
                    rejected = False
                elif (
                    self.on_open
                    and isinstance(outcome.error, CircuitOpenError)
                    # An isolated breaker (retry_after infinite) never half-opens.
                    and math.isfinite(outcome.error.retry_after)
                ):
                    hint = outcome.error.retry_after
                    rejected = True
                else:
                    return outcome
                gave_up = None
                holding = False
                if attempt >= config.max_attempts:
                    gave_up = GaveUp.MAX_ATTEMPTS
                elif not (rejected and attempt == 1):
                    # (A first attempt the breaker rejected sent nothing: sending it is
                    # no replay.)
                    gave_up = config.is_replayable(request)
                delay = 0.0
                if gave_up is None:
                    if self.hold is not None and (rejected or self._circuit(request) is not None):
                        # The breaker below is open (or half-open with its probe out): hold
                        # for a probe to succeed, rather than back off blindly.
                        holding = True
                    else:
                        delay = config.backoff.delay(attempt - 1, previous)
                        if hint is not None and hint > delay:
                            delay = hint
                        # "not >= 0" also catches a custom Backoff's NaN, which max() keeps.
                        delay = min(delay if delay >= 0.0 else 0.0, self.cap)
                        blocked = self._blocked(request)
                        if blocked > delay:
                            # The next attempt would meet an open breaker: wait for it to
                            # half-open when asked to (and it will), else stop now rather
                            # than sleep only to be rejected.
                            late = (
                                call.deadline is not None and clock.now() + blocked > call.deadline
                            )
                            if not config.wait_for_half_open or math.isinf(blocked) or late:
                                gave_up = GaveUp.CIRCUIT_OPEN
                            else:
                                delay = blocked
                if gave_up is None and not holding:
                    if call.deadline is not None and clock.now() + delay > call.deadline:
                        gave_up = GaveUp.DEADLINE
                    elif bucket is not None and not bucket.try_withdraw(clock.now()):
                        gave_up = GaveUp.BUDGET
                if holding:
                    # A held call spends no budget: the ramp paces it instead.
                    if held_since is None:
                        held_since = clock.now()
                    if await self._hold(request, call, attempt, held_since):
                        call.report.gave_up = None
                        await outcome.aclose()
                        attempt += 1
                        continue
                    gave_up = GaveUp.CIRCUIT_OPEN
                if gave_up is not None:
                    if isinstance(outcome.error, CircuitOpenError):
                        gave_up = GaveUp.CIRCUIT_OPEN
                    call.report.gave_up = gave_up
                    return outcome
                # Retrying after all: what gave up below (a Timeout(total=...) inside
                # this layer) no longer describes the call.
                call.report.gave_up = None
                await outcome.aclose()
                delays = call.report.delays
                delays.append(delay)
                self.env.emit(
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
                        f" request_id={problem.request_id}"
                        if problem and problem.request_id
                        else "",
                    )
                started = clock.now()
                try:
                    await clock.sleep(delay)
                except BaseException:
                    # Cut short (a Timeout(total=...) above, the caller's cancellation):
                    # the report says what was waited, not what was planned.
                    waited = clock.now() - started
                    if waited < delay:
                        delays[-1] = waited if waited > 0.0 else 0.0
                    raise
                if config.wait_for_half_open and self.breakers:
                    # A timer may fire a little early (asyncio's clock resolution is
                    # 15.6 ms on Windows): finish the wait for the half-open rather than
                    # spend an attempt on a breaker that is still open.
                    rest = self._blocked(request)
                    while 0.0 < rest <= _EARLY_WAKE:
                        await clock.sleep(rest)
                        rest = self._blocked(request)
                previous = delay
                attempt += 1
        finally:
            if counted is not None:
                counted.finish()

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
