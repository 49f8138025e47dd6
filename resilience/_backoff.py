"""Backoff and the retry budget: how long to wait before sending again, and whether to.

Where it sits in the flow: every layer that sends a request again after a failure
(``Retry`` between attempts, the ``PartialFailureSplitter`` between rounds, ``Hedge``
for its extra attempts) takes its rules from here. The configuration is frozen
(:class:`ExponentialBackoff`, :class:`RetryBudget`); what changes at run time is
owned by the bound pipeline: each handler draws its jitter from its own
``random.Random`` (:meth:`ExponentialBackoff.sampler`) and the pipeline's budget
keeps its window in a :class:`BudgetWindow` (``env.budget``).

The decision itself is :func:`decide`, a pure function of numbers the caller
gathered (the attempt, the drawn backoff, the server's hint, the caps, the time
left, the budget's answer). It does no I/O and reads no clock, so its rules are
tested as properties (``tests/test_backoff.py``); the layers only sleep, send and
report what it says.
"""

from __future__ import annotations

import collections
import copy
import math
import random
import time
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import attrs

from . import _validate as v
from ._clock import Clock, SystemClock
from ._report import GaveUp
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._shared_budget import SharedBudget

__all__ = [
    "MIN_HINT_CAP",
    "Backoff",
    "BudgetWindow",
    "Decision",
    "ExponentialBackoff",
    "JitterMode",
    "RetryBudget",
    "backoff_validator",
    "bind_backoff",
    "decide",
    "default_cap",
    "wait_for",
]

JitterMode = Literal["none", "full", "equal", "decorrelated", "proportional"]
"""The jitter modes of :class:`ExponentialBackoff` (a type checker catches ``"ful"``)."""
JITTER_MODES: tuple[JitterMode, ...] = get_args(JitterMode)

#: Server hints are honoured up to at least this long, whatever the backoff cap.
MIN_HINT_CAP = 60.0

#: What :meth:`ExponentialBackoff.delay` draws from when called on a configuration
#: that names no generator (pipelines draw from their own, see ``sampler``).
_SHARED = random.Random()


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


def _rng_validator(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, random.Random):
        raise ConfigurationError(
            f"ExponentialBackoff: rng must be a random.Random or None, got {type(value).__name__}"
        )


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

    The configuration holds no random state. Each pipeline it is bound into draws
    from its own generator (:meth:`sampler`): a fresh ``random.Random()``, or one
    seeded with :attr:`seed`, or a copy of :attr:`rng`. So pipelines built from one
    configuration never disturb each other's delays, and a seeded configuration
    gives every pipeline the same reproducible sequence.
    """

    initial: float = attrs.field(default=1.0, validator=v.number(minimum=0))
    """The first retry's base delay, in seconds."""
    multiplier: float = attrs.field(default=2.0, validator=v.number(minimum=1))
    """Growth per retry."""
    max_delay: float = attrs.field(default=30.0, validator=v.number(minimum=0))
    """Cap on the base delay, in seconds."""
    jitter: JitterMode = attrs.field(default="full", validator=v.one_of(JITTER_MODES))
    """One of ``none``, ``full``, ``equal``, ``decorrelated``, ``proportional``."""
    jitter_ratio: float = attrs.field(default=0.3, validator=v.number(minimum=0, maximum=1))
    """For ``proportional`` jitter: the largest extra, as a fraction of the delay."""
    seed: int | None = attrs.field(
        default=None, validator=v.number(integer=True, minimum=0, optional=True)
    )
    """Seed for the jitter of each pipeline (reproducible delays); ``None``: random."""
    rng: random.Random | None = attrs.field(
        default=None, eq=False, repr=False, validator=_rng_validator
    )
    """A generator to draw the jitter from, for reproducible delays: each pipeline
    draws from its own copy, taken when it is built (a ``random.SystemRandom``,
    which has no state to copy, is used as it is). Calling :meth:`delay` on the
    configuration draws from it directly."""

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.initial:
            raise ConfigurationError(
                f"ExponentialBackoff: max_delay ({self.max_delay}) must be >= initial "
                f"({self.initial})"
            )
        if self.seed is not None and self.rng is not None:
            raise ConfigurationError("ExponentialBackoff: pass seed or rng, not both")

    @property
    def longest(self) -> float:
        """The longest wait it can choose (``max_delay``, plus the ratio for
        proportional jitter)."""
        if self.jitter == "proportional":
            return float(self.max_delay) * (1.0 + float(self.jitter_ratio))
        return float(self.max_delay)

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

    def delay(
        self, retry: int, previous: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry``, jitter drawn from ``rng``
        (default: :attr:`rng`, else the :mod:`random` module's generator)."""
        if rng is None:
            rng = self.rng if self.rng is not None else _SHARED
        jitter = self.jitter
        if jitter == "decorrelated":
            low = self.initial
            high = max(low, (previous if previous is not None else low) * 3)
            return min(self.max_delay, rng.uniform(low, high))
        capped = self.base(retry)
        if jitter == "none":
            return capped
        if jitter == "full":
            return rng.uniform(0.0, capped)
        if jitter == "equal":
            return capped / 2 + rng.uniform(0.0, capped / 2)
        return capped + rng.uniform(0.0, self.jitter_ratio * capped)

    def sampler(self) -> Backoff:
        """This backoff with a generator of its own, for one bound pipeline."""
        if self.seed is not None:
            return _Sampler(self, random.Random(self.seed))
        if self.rng is None:
            return _Sampler(self, random.Random())
        try:
            own = copy.copy(self.rng)
        except NotImplementedError:  # SystemRandom: no state, nothing to share
            own = self.rng
        return _Sampler(self, own)


class _Sampler:
    """An :class:`ExponentialBackoff` bound to one pipeline's generator."""

    __slots__ = ("_config", "_rng")

    def __init__(self, config: ExponentialBackoff, rng: random.Random) -> None:
        self._config = config
        self._rng = rng

    @property
    def max_delay(self) -> float:
        return float(self._config.max_delay)

    def delay(self, retry: int, previous: float | None = None) -> float:
        return self._config.delay(retry, previous, self._rng)


def bind_backoff(backoff: Backoff) -> Backoff:
    """What one pipeline draws its waits from: an :class:`ExponentialBackoff` gets a
    generator of its own; any other :class:`Backoff` is used as it is."""
    return backoff.sampler() if isinstance(backoff, ExponentialBackoff) else backoff


def default_cap(backoff: Backoff) -> float:
    """The longest single wait when the layer sets none: the backoff's longest wait
    (its jitter included, so proportional jitter is never clipped) or 60 s, whichever
    is more, so a server's ``Retry-After`` of up to a minute is honoured."""
    longest = backoff.longest if isinstance(backoff, ExponentialBackoff) else backoff.max_delay
    return max(float(longest), MIN_HINT_CAP)


def backoff_validator(owner: str, *, optional: bool = False) -> v.Validator:
    """An attrs validator: a :class:`Backoff` (``delay()`` and a numeric ``max_delay``)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not callable(getattr(value, "delay", None)) or not isinstance(
            getattr(value, "max_delay", None), (int, float)
        ):
            raise ConfigurationError(
                f"{owner}: {attribute.name} must have delay() and max_delay, "
                f"got {type(value).__name__}"
            )

    return check


# --- the decision ------------------------------------------------------------------


def wait_for(backoff: float, hint: float | None, cap: float) -> float:
    """The wait before a retry: the longer of the backoff's and the server's, at most
    ``cap``. A negative or NaN backoff (a custom :class:`Backoff` gone wrong) is no
    wait; a NaN hint is ignored."""
    delay = backoff if backoff >= 0.0 else 0.0  # "not >= 0" also catches NaN
    if hint is not None and hint > delay:
        delay = hint
    return cap if delay > cap else delay


Decision = float | GaveUp
"""What :func:`decide` says: send again after this many seconds (a ``float``), or
stop, for this reason (a :class:`GaveUp`)."""


def decide(
    attempt: int,
    *,
    max_attempts: int,
    backoff: float,
    hint: float | None,
    cap: float,
    remaining: float | None = None,
    budget_ok: bool = True,
    blocked: float = 0.0,
    wait_for_blocked: bool = False,
) -> Decision:
    """Whether to send again after attempt number ``attempt`` failed, and after how long.

    Args:
        attempt: attempts made so far (1 after the first failed).
        max_attempts: attempts allowed in all.
        backoff: the wait the backoff drew for this retry; a negative or NaN wait
            (a custom :class:`Backoff` gone wrong) is no wait.
        hint: the server's wait (``Retry-After``, or what the classifier read), or
            ``None``. The longer of it and ``backoff`` is waited; NaN is ignored.
        cap: the longest wait, hints included (:func:`default_cap`).
        remaining: seconds left before the call's deadline (``None``: none). A wait
            that would end past it is not started.
        budget_ok: the retry budget's answer (``True`` when there is none).
        blocked: seconds before the breaker below lets the retry through (0: now;
            ``inf``: never by itself).
        wait_for_blocked: wait for that breaker (when it opens up before the
            deadline) instead of stopping; such a wait may exceed ``cap``.

    The reasons are checked in this order: attempts, the breaker, the deadline,
    the budget; the budget is asked last, so that its answer is only spent on a
    retry that happens (the caller withdraws after a ``float`` answer).
    """
    if attempt >= max_attempts:
        return GaveUp.MAX_ATTEMPTS
    delay = wait_for(backoff, hint, cap)
    if blocked > delay:
        # The next attempt would meet an open breaker: wait for it when asked to
        # (and it will open up in time), else stop now rather than sleep only to
        # be refused.
        late = remaining is not None and blocked > remaining
        if not wait_for_blocked or blocked == math.inf or late:
            return GaveUp.CIRCUIT_OPEN
        delay = blocked
    if remaining is not None and delay > remaining:
        return GaveUp.DEADLINE
    if not budget_ok:
        return GaveUp.BUDGET
    return delay


# --- the retry budget --------------------------------------------------------------

#: The call window is kept as this many slots of a second each.
_SLOTS = 20


def _budget_store_ok(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(getattr(value, "update_budget", None)):
        raise ConfigurationError(
            "RetryBudget: store must be a StateStore (MemoryStore, RedisStore) or None, "
            f"got {type(value).__name__}"
        )


@attrs.frozen(kw_only=True)
class RetryBudget:
    """Keeps retries to a share of the traffic, at every moment.

    The rule: in any one second, the pipeline sends at most
    ``max(min_per_second, ratio * calls)`` retries, ``calls`` being the logical
    calls that started in that second. So at low traffic a call always has
    ``min_per_second`` retries to draw on (a lone call is never starved), and at
    high traffic retries add exactly ``ratio`` to the load, also in the first
    second of an outage: nothing is banked during healthy traffic to be spent at
    once when it fails. A burst of N concurrent calls that fail together gets about
    ``ratio * N`` retries.

    When the second's allowance is spent, the Retry layer returns the last outcome
    instead of retrying (``gave_up == "budget"``): during an outage the attempts
    per call tend to ``1 + ratio`` (above ``min_per_second / ratio`` calls a
    second). Hedges and the splitter's rounds draw on the same allowance.
    """

    ratio: float = attrs.field(default=0.2, validator=v.number(minimum=0, maximum=1))
    """Retries allowed per call (0.2: retries add at most 20% to the load)."""
    min_per_second: float = attrs.field(default=10.0, validator=v.number(minimum=0))
    """Retries allowed in any second whatever the traffic (the floor; not added to
    the ratio's share)."""
    initial: float = attrs.field(default=0.0, validator=v.number(minimum=0))
    """Retries a fresh pipeline may make beyond the per-second allowance, once (a
    reserve that never refills; none by default)."""
    store: Any = attrs.field(default=None, validator=_budget_store_ok, repr=False)
    """A state store (``RedisStore``) holding the window for every process that
    shares it: the rule then holds for the fleet's calls and retries together.
    ``None`` (the default): this pipeline's own window, in memory."""
    key: str = attrs.field(default="default", validator=v.instance_of(str))
    """Names the window in the store: pipelines that share a store and should keep
    separate budgets (one per vendor) need different keys."""

    def build(self, clock: Clock) -> BudgetWindow | SharedBudget:
        """The runtime state for one pipeline (a ``SharedBudget`` with a store)."""
        if self.store is not None:
            from ._shared_budget import SharedBudget

            return SharedBudget(self, clock)
        return BudgetWindow(self, clock)


class BudgetWindow:
    """The runtime state of a :class:`RetryBudget`, shared by one pipeline
    (``env.budget``): the calls and the retries of the last second."""

    __slots__ = (
        "_current",
        "_floor",
        "_now",
        "_past",
        "_ratio",
        "_reserve",
        "_retries",
        "_ring",
        "_slot",
        "_slot_end",
    )

    def __init__(self, config: RetryBudget, clock: Clock) -> None:
        # The real clock's now() is time.monotonic behind a method call: read it
        # directly, as every call's deposit reads it.
        self._now = time.monotonic if type(clock) is SystemClock else clock.now
        self._ratio = float(config.ratio)
        self._floor = float(config.min_per_second)
        self._reserve = float(config.initial)
        # Calls are counted per slot of 1/_SLOTS s: the window is the current slot
        # and the 19 before it, so it spans a little less than a second and never
        # counts a call more than a second old (an undercount only lowers the
        # allowance). The current slot's count is a plain field, so that a call's
        # deposit costs one clock read, one comparison and one addition; the ring
        # holds the 19 slots before it (by slot number modulo _SLOTS), ``_past``
        # their sum.
        self._slot = math.floor(self._now() * _SLOTS)
        self._slot_end = (self._slot + 1) / _SLOTS
        self._current = 0
        self._ring = [0] * _SLOTS
        self._past = 0
        # The time of each retry of the last second: exact, and no longer than the
        # allowance.
        self._retries: collections.deque[float] = collections.deque()

    def deposit(self) -> None:
        """A logical call started: it counts in the window for a second."""
        now = self._now()
        if now >= self._slot_end:
            self._advance(now)
        self._current += 1

    def _advance(self, now: float) -> None:
        slot = math.floor(now * _SLOTS)
        if slot <= self._slot:
            return
        ring = self._ring
        if slot - self._slot >= _SLOTS:
            # A second or more went by: nothing is recent.
            for index in range(_SLOTS):
                ring[index] = 0
            self._past = 0
        else:
            ring[self._slot % _SLOTS] = self._current
            self._past += self._current
            for gone in range(self._slot + 1, slot + 1):
                # The entry a slot reuses is the one of the slot a second before it.
                index = gone % _SLOTS
                self._past -= ring[index]
                ring[index] = 0
        self._current = 0
        self._slot = slot
        self._slot_end = (slot + 1) / _SLOTS

    def calls(self, now: float) -> int:
        """Logical calls that started within the last second."""
        if now >= self._slot_end:
            self._advance(now)
        return self._past + self._current

    def retries(self, now: float) -> int:
        """Retries withdrawn within the last second."""
        retries = self._retries
        while retries and retries[0] <= now - 1.0:
            retries.popleft()
        return len(retries)

    def allowance(self, now: float) -> float:
        """Retries allowed in the second that ends now."""
        share = self._ratio * self.calls(now)
        return share if share > self._floor else self._floor

    def allows(self, now: float) -> bool:
        """Whether a retry may go now (asking takes nothing)."""
        return self.retries(now) + 1 <= self.allowance(now) or self._reserve >= 1.0

    def try_withdraw(self, now: float) -> bool:
        """Take one retry; ``False`` when the budget is spent."""
        if self.retries(now) + 1 <= self.allowance(now):
            self._retries.append(now)
            return True
        if self._reserve >= 1.0:
            self._reserve -= 1.0
            return True
        return False
