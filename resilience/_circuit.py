"""Circuits: the state of one backend's breaker, its window, and the registry of them.

Where it sits in the flow: the ``CircuitBreaker`` layer (``_breaker.py``) maps each
request to a key and asks that key's :class:`Circuit`, in its
:class:`CircuitRegistry`, whether the call may go, then tells it how the call went.
The registry is also what other layers reach through ``env.breakers``: ``Retry``
asks whether a retry would be refused (and holds calls on a circuit, see
``_hold.py``), the splitter keeps per-part circuits (``"derapi:solis"``) in it.

A circuit is closed (calls pass, outcomes are counted in a sliding window and, if
asked, as a run of consecutive failures), open (calls fail fast, nothing is sent),
half-open (a few probes pass; they close it or reopen it for a longer break) or
isolated (held open by hand until :meth:`Circuit.reset`). A circuit also keeps the
calls a ``Retry(hold=...)`` holds on it (a ``_hold.HoldQueue``, made on the first
hold) and tells them about its transitions: closing releases them in a ramp, a
reopening ends the holds it makes hopeless, isolation ends them all.

The registry creates a circuit on first use and forgets it once it is closed and
idle (or open, its break over and quiet since). Everything a call does to its
circuit is synchronous and O(1): the window is a ring of counters (a tally packs
a bucket's counts into one int), and the registry's sweep of idle circuits does a
bounded amount of work each time a circuit is created.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import httpx

from ._events import CircuitStateChanged
from ._hold import Hold, HoldQueue
from ._layer import Call, PipelineEnv, PipelineLike
from ._verdict import Action, Verdict

__all__ = ["Circuit", "CircuitPolicy", "CircuitRegistry", "CircuitState"]


class CircuitPolicy(Protocol):
    """What circuits read of their configuration (a ``CircuitBreaker`` provides it).

    Circuits sit below the breaker layer: they know the policy by this shape, not
    the layer's module, so the two modules do not import each other.
    """

    @property
    def failure_ratio(self) -> float: ...
    @property
    def minimum_calls(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def window_calls(self) -> int | None: ...
    @property
    def break_duration(self) -> float: ...
    @property
    def max_break_duration(self) -> float | None: ...
    @property
    def break_growth(self) -> float | None: ...
    @property
    def consecutive_failures(self) -> int | None: ...
    @property
    def half_open_calls(self) -> int: ...
    @property
    def slow_call_duration(self) -> float | None: ...
    @property
    def slow_call_ratio(self) -> float: ...
    @property
    def key(self) -> Callable[[httpx.Request], str | None]: ...
    @property
    def longest_break(self) -> float: ...
    @property
    def quiet_period(self) -> float: ...
    def break_for(self, reopenings: int, age: float = 0.0) -> float: ...


logger = logging.getLogger("resilience")

#: A time window is kept as this many buckets, so it slides in steps of a tenth.
BUCKETS = 10
#: Circuits the registry examines for forgetting each time it creates one.
SWEEP_STEP = 2
#: The longest count window: its ring costs one byte per call, per circuit.
MAX_WINDOW_CALLS = 10_000
#: The shortest time window (seconds): its buckets are a tenth of it.
MIN_WINDOW = 0.01

# A tally packs (calls, failures, slow calls) into one int, 32 bits each: a bucket
# then costs one list slot (and nothing more while its counts stay small, since
# CPython caches small ints), and a bucket is added to or taken from the totals in
# one operation. 2**32 calls in one bucket are out of reach.
_CALL = 1
_FAILURE = 1 << 32
_SLOW = 1 << 64
_MASK = (1 << 32) - 1

# The outcome of one call, as bits: 0 counts neither way (FAIL, REFRESH_AUTH, an
# error from an inner layer, a cancelled call).
_COUNTED = 1
_FAILED = 2
_SLOWED = 4
_TALLY = tuple(
    (_CALL if code & _COUNTED else 0)
    + (_FAILURE if code & _FAILED else 0)
    + (_SLOW if code & _SLOWED else 0)
    for code in range(8)
)


class CircuitState(str, enum.Enum):
    """The state of one circuit (a ``str``, so ``state == "open"`` works too)."""

    CLOSED = "closed"
    """Calls pass; their outcomes are counted."""
    OPEN = "open"
    """Calls fail fast until the break is over."""
    HALF_OPEN = "half_open"
    """A limited number of probes pass; the rest fail fast."""
    ISOLATED = "isolated"
    """Held open by hand (:meth:`Circuit.isolate`) until :meth:`Circuit.reset`."""

    def __repr__(self) -> str:
        return f"CircuitState.{self.name}"


# Module constants: looking an enum member up on its class costs more, per call.
_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED
_ACCEPT = Action.ACCEPT
_SPLIT = Action.SPLIT


#: A break with this little left (seconds) is over. Sleeping exactly the
#: ``retry_after`` a circuit gave can land a few ulps short of its end, since
#: ``now + (until - now)`` need not round back to ``until``.
_SLACK = 1e-6


def _remaining(until: float, now: float) -> float:
    """Seconds of a break left at ``now`` (0.0 once within :data:`_SLACK` of its end)."""
    wait = until - now
    return wait if wait > _SLACK else 0.0


def _counted(verdict: Verdict) -> int:
    """How a verdict counts: as a failure, a success, or neither (0)."""
    if verdict.breaker_failure:
        return _COUNTED | _FAILED
    action = verdict.action
    if action is _ACCEPT or action is _SPLIT:
        return _COUNTED
    return 0


class Circuit:
    """The breaker of one key: its state, its window, its probes.

    Get one from :meth:`CircuitRegistry.get`; read :attr:`state`,
    :attr:`failure_ratio` and :attr:`retry_after` for health checks, and take
    manual control with :meth:`isolate` and :meth:`reset`. A circuit the registry
    has forgotten (closed and idle) is the same as a new one, and its methods act
    on whatever circuit the registry now holds for its key.
    """

    # Slots, no dict: a registry may hold many thousands of these.
    __slots__ = (
        "_breaks",
        "_gen",
        "_head",
        "_held",
        "_key",
        "_opened_at",
        "_passed",
        "_probes",
        "_registry",
        "_run",
        "_run_at",
        "_state",
        "_total",
        "_until",
    )

    _key: str
    _registry: CircuitRegistry
    _state: CircuitState
    _gen: int
    """Bumped on every transition: an outcome of a call admitted in an earlier
    state (a probe of a reset circuit, a call that outlived a break) is ignored."""
    _total: int
    """The tally of the whole window."""
    _head: int
    """Time window: the newest bucket's number. Count window: the next call's slot."""
    _until: float
    """When open: the clock time at which it half-opens."""
    _breaks: int
    """Consecutive reopenings since it last closed (lengthens the break)."""
    _probes: int
    """Half-open probes in flight."""
    _passed: int
    """Half-open probes that succeeded."""
    _run: int
    """Closed: failures in a row (with ``consecutive_failures``)."""
    _run_at: float
    """Clock time of the run's latest failure."""
    _opened_at: float
    """When not closed: the clock time it first opened in this outage (the age of
    the outage sets the break, with ``break_growth``)."""
    _held: HoldQueue | None
    """Calls held waiting for it to recover (``Retry(hold=...)``); made on the first hold."""

    def __init__(self, key: str, registry: CircuitRegistry, now: float) -> None:
        self._key = key
        self._registry = registry
        self._state = _CLOSED
        self._gen = 0
        self._total = 0
        self._until = 0.0
        self._breaks = 0
        self._probes = 0
        self._passed = 0
        self._run = 0
        self._run_at = 0.0
        self._opened_at = 0.0
        self._held = None

    # -- the window (per kind of window) --

    def _count(self, code: int, call: Call | None) -> None:
        """Add a counted outcome (``code`` != 0) to the window; open if it says so."""
        raise NotImplementedError

    def _expire(self, now: float) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def _empty_at(self, now: float) -> bool:
        raise NotImplementedError

    # -- public, read-only --

    @property
    def key(self) -> str:
        """The circuit's key."""
        return self._key

    @property
    def state(self) -> CircuitState:
        """The current state (an open circuit whose break is over reads half-open)."""
        live = self._live()
        live._poll(live._registry._clock.now())
        return live._state

    @property
    def failure_ratio(self) -> float:
        """Failures over counted calls in the window (0.0 when the window is empty)."""
        return self._ratio(1)

    @property
    def slow_call_ratio(self) -> float:
        """Slow calls over counted calls in the window (0.0 when the window is empty)."""
        return self._ratio(2)

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row while closed (0 when the last counted call succeeded,
        or when nothing was counted for longer than the window)."""
        live = self._live()
        if live._state is not _CLOSED:
            return 0
        return live._current_run(live._registry._clock.now())

    @property
    def calls(self) -> int:
        """Counted calls in the window."""
        live = self._live()
        live._expire(live._registry._clock.now())
        return live._total & _MASK

    @property
    def held(self) -> int:
        """Calls held now waiting for it to recover (``Retry(hold=Hold())``)."""
        held = self._live()._held
        return 0 if held is None else len(held)

    @property
    def retry_after(self) -> float:
        """Seconds until it half-opens: 0 unless open; infinite when isolated."""
        live = self._live()
        live._poll(live._registry._clock.now())
        if live._state is _OPEN:
            return _remaining(live._until, live._registry._clock.now())
        if live._state is _ISOLATED:
            return math.inf
        return 0.0

    # -- manual control --

    def isolate(self) -> None:
        """Hold the circuit open (every call fails fast) until :meth:`reset`."""
        live = self._live()
        if live._state is not _ISOLATED:
            live._move(_ISOLATED, None)

    def reset(self) -> None:
        """Close the circuit and forget its window and its past breaks (calls held
        on it go, in a ramp, as after a successful probe)."""
        live = self._live()
        live._clear()
        live._breaks = 0
        live._run = 0
        if live._state is not _CLOSED:
            live._move(_CLOSED, None)

    def __repr__(self) -> str:
        return f"Circuit({self._key!r}, state={self._state.value!r})"

    # -- internals --

    def _live(self) -> Circuit:
        registry = self._registry
        live = registry._circuits.get(self._key)
        if live is None:
            # Forgotten: it was closed with an empty window, which is what a new
            # circuit is, so it can simply be taken back.
            registry._adopt(self)
            return self
        return live

    def _current_run(self, now: float) -> int:
        """The run of failures, unless a pause longer than the window ended it."""
        if self._run and now - self._run_at > self._registry._window:
            return 0
        return self._run

    def _ratio(self, field: int) -> float:
        live = self._live()
        live._expire(live._registry._clock.now())
        total = live._total
        calls = total & _MASK
        if not calls:
            return 0.0
        return ((total >> (32 * field)) & _MASK) / calls

    def _poll(self, now: float) -> None:
        if self._state is _OPEN and self._until - now <= _SLACK:
            self._move(_HALF_OPEN, None)

    def _admit(self, now: float, call: Call | None) -> float | None:
        """Let a call through (``None``) or say how long until it may be (seconds)."""
        state = self._state
        if state is _CLOSED:
            return None
        if state is _OPEN:
            wait = self._until - now
            if wait > _SLACK:
                return wait
            self._move(_HALF_OPEN, call)
            if self._state is not _HALF_OPEN:  # a hook isolated or reset it
                return self._admit(now, call)
        elif state is _ISOLATED:
            return math.inf
        if self._probes < self._registry._half_open_calls:
            self._probes += 1
            return None
        return 0.0

    def _complete(self, gen: int | None, code: int, call: Call | None) -> None:
        """Settle a call that was admitted (in generation ``gen``; ``None``: now)."""
        if gen is not None and gen != self._gen:
            return
        state = self._state
        if state is _CLOSED:
            if code:
                self._count(code, call)
                registry = self._registry
                if registry._consecutive:
                    if not code & _FAILED:
                        self._run = 0
                    elif self._state is _CLOSED:  # the window did not open it
                        now = registry._clock.now()
                        run = self._current_run(now) + 1
                        self._run = run
                        self._run_at = now
                        if run >= registry._consecutive:
                            self._trip(now, 0, call)
        elif state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1
            if not code:
                held = self._held
                if held is not None:
                    held.nudge()  # the probe slot is free again: a held call may take it
                return
            if code & (_FAILED | _SLOWED):
                self._trip(self._registry._clock.now(), self._breaks + 1, call)
            else:
                self._passed += 1
                if self._passed >= self._registry._half_open_calls:
                    self._clear()
                    self._breaks = 0
                    self._move(_CLOSED, call)

    def _judge(self, total: int, now: float, call: Call | None) -> None:
        """Open if the window's tally (with failures or slow calls) says so."""
        registry = self._registry
        calls = total & _MASK
        if calls < registry._minimum_calls:
            return
        failures = (total >> 32) & _MASK
        slow = total >> 64
        if (failures and failures / calls >= registry._failure_ratio) or (
            slow and slow / calls >= registry._slow_call_ratio
        ):
            self._trip(now, 0, call)

    def _trip(self, now: float, breaks: int, call: Call | None) -> None:
        if not breaks:
            self._opened_at = now
        self._breaks = breaks
        self._until = now + self._registry._config.break_for(breaks, now - self._opened_at)
        self._move(_OPEN, call)

    def _move(self, new: CircuitState, call: Call | None) -> None:
        old = self._state
        self._state = new
        self._gen += 1
        self._probes = 0
        self._passed = 0
        self._run = 0
        self._registry._changed(self._key, old, new, call)
        held = self._held
        if held is not None and self._state is new:  # a hook may have moved it on
            if new is _CLOSED:
                held.recovered(self._registry._clock.now())
            elif new is _OPEN:
                held.reopened(self._until)
            elif new is _ISOLATED:
                held.isolated()

    # -- for held calls (see _hold.py) --

    def _hold_queue(self, config: Hold) -> HoldQueue:
        """The queue of calls held on this circuit (made with the first one's settings)."""
        held = self._held
        if held is None:
            held = self._held = HoldQueue(config)
        return held

    def _next_probe(self, now: float) -> float:
        state = self._state
        if state is _OPEN:
            return self._until if self._until - now > _SLACK else now
        if state is _ISOLATED:
            return math.inf
        return now

    def _probe_free(self, now: float) -> bool:
        state = self._state
        if state is _OPEN:
            return self._until - now <= _SLACK
        if state is _HALF_OPEN:
            return self._probes < self._registry._half_open_calls
        return state is _CLOSED

    def _accepting(self) -> bool:
        return self._state is _CLOSED

    def _idle_at(self, now: float) -> bool:
        """Whether the registry may forget this circuit: a new one would act the same
        (closed, nothing in its window or run), or it opened and nobody has asked for
        it for a quiet period since its break ended."""
        state = self._state
        if state is _CLOSED:
            return self._empty_at(now) and not self._current_run(now)
        if state is _ISOLATED or self._probes or (self._held is not None and len(self._held)):
            return False
        return now - self._until >= self._registry._quiet

    def _forget(self) -> None:
        """Reset an opened circuit the registry lets go, so a handle kept on it reads
        closed, and say so (gauges of open circuits go back down)."""
        self._clear()
        self._breaks = 0
        if self._state is not _CLOSED:
            self._move(_CLOSED, None)


class _TimeCircuit(Circuit):
    """A circuit whose window is the last ``window`` seconds, in ten buckets."""

    __slots__ = ("_current", "_ring")

    _current: int
    """The tally of the newest bucket (number ``_head``)."""
    _ring: list[int] | None
    """Tallies of the older buckets, slot ``n % BUCKETS`` for bucket ``n``; only
    allocated once the window spans two buckets, so a circuit that saw a burst of
    calls and went quiet stays small."""

    def __init__(self, key: str, registry: CircuitRegistry, now: float) -> None:
        super().__init__(key, registry, now)
        self._head = int((now - registry._origin) / registry._width)
        self._current = 0
        self._ring = None

    def _count(self, code: int, call: Call | None) -> None:
        registry = self._registry
        now = registry._clock.now()
        bucket = int((now - registry._origin) / registry._width)
        if bucket > self._head:
            self._roll(bucket)
        tally = _TALLY[code]
        self._current += tally
        total = self._total + tally
        self._total = total
        if total > _MASK:  # failures or slow calls in the window: judge it
            self._judge(total, now, call)

    def _expire(self, now: float) -> None:
        registry = self._registry
        bucket = int((now - registry._origin) / registry._width)
        if bucket > self._head:
            self._roll(bucket)

    def _roll(self, bucket: int) -> None:
        head = self._head
        total = self._total
        self._head = bucket
        if not total or bucket - head >= BUCKETS:
            # Everything aged out (a clock jump of hours lands here): start afresh.
            self._total = 0
            self._current = 0
            self._ring = None
            return
        ring = self._ring
        if ring is None:
            ring = self._ring = [0] * BUCKETS
        # At most BUCKETS - 1 buckets leave the window (gap < BUCKETS above).
        for number in range(head + 1, bucket + 1):
            slot = number % BUCKETS
            total -= ring[slot]
            ring[slot] = 0
        ring[head % BUCKETS] = self._current
        self._current = 0
        self._total = total
        if not total:
            self._ring = None

    def _clear(self) -> None:
        self._total = 0
        self._current = 0
        self._ring = None

    def _empty_at(self, now: float) -> bool:
        if not self._total:
            return True
        registry = self._registry
        return int((now - registry._origin) / registry._width) - self._head >= BUCKETS


class _CountCircuit(Circuit):
    """A circuit whose window is the last ``window_calls`` calls."""

    __slots__ = ("_last", "_ring")

    _last: float
    """Clock time of the newest counted call."""
    _ring: bytearray | None
    """One outcome code per call, oldest at ``_head``; allocated on the first call."""

    def __init__(self, key: str, registry: CircuitRegistry, now: float) -> None:
        super().__init__(key, registry, now)
        self._head = 0
        self._last = now
        self._ring = None

    def _count(self, code: int, call: Call | None) -> None:
        now = self._registry._clock.now()
        self._expire(now)
        self._last = now
        ring = self._ring
        if ring is None:
            ring = self._ring = bytearray(self._registry._window_calls)
        head = self._head
        old = ring[head]
        ring[head] = code
        total = self._total + _TALLY[code] - _TALLY[old]
        self._total = total
        head += 1
        self._head = 0 if head == len(ring) else head
        if total > _MASK:
            self._judge(total, now, call)

    def _expire(self, now: float) -> None:
        if self._ring is not None and now - self._last > self._registry._window:
            self._clear()

    def _clear(self) -> None:
        self._total = 0
        self._head = 0
        self._ring = None

    def _empty_at(self, now: float) -> bool:
        return not self._total or now - self._last > self._registry._window


class CircuitRegistry:
    """The circuits of one :class:`CircuitBreaker` layer, by key.

    Made when the pipeline is built (:meth:`of` finds it); the innermost
    breaker's registry is also where the PartialFailureSplitter records per-part
    outcomes. A circuit is created on
    first use and forgotten once it is closed and its window is empty (nothing
    counted for a whole window), or once it opened, its break is over and nobody
    asked for it for :attr:`CircuitBreaker.quiet_period` (it then reports a
    change to closed), so memory follows the keys in recent use. Each
    creation examines the two least recently examined circuits, so forgetting
    costs O(1) per new key.

    The key-based methods (:meth:`allow`, :meth:`record`, :meth:`release`) are for
    code that guards its own calls; the layer itself also tells a probe from a call
    admitted before the breaker opened, which these cannot.
    """

    __slots__ = (
        "_circuits",
        "_clock",
        "_config",
        "_consecutive",
        "_env",
        "_factory",
        "_failure_ratio",
        "_half_open_calls",
        "_minimum_calls",
        "_order",
        "_origin",
        "_quiet",
        "_slow_call_duration",
        "_slow_call_ratio",
        "_width",
        "_window",
        "_window_calls",
        "fleet_look",
    )

    def __init__(self, config: CircuitPolicy, env: PipelineEnv) -> None:
        self.fleet_look: Callable[[Any, float], Awaitable[bool]] | None = None
        """How a held call looks at the fleet's state of a circuit shared through a
        store (set by the breaker with a store; ``None``: this process alone)."""
        self._config = config
        self._env = env
        self._clock = env.clock
        self._circuits: dict[str, Circuit] = {}
        # Keys in the order the sweep will examine them (each key once).
        self._order: collections.deque[str] = collections.deque()
        # Copied out of the configuration: read on every call.
        self._failure_ratio = config.failure_ratio
        self._minimum_calls = config.minimum_calls
        self._half_open_calls = config.half_open_calls
        self._consecutive = config.consecutive_failures or 0
        self._quiet = config.quiet_period
        self._slow_call_duration = config.slow_call_duration
        self._slow_call_ratio = config.slow_call_ratio
        self._window = config.window
        self._window_calls = config.window_calls or 0
        self._width = config.window / BUCKETS
        self._origin = env.clock.now()
        self._factory: type[Circuit] = _CountCircuit if config.window_calls else _TimeCircuit

    @staticmethod
    def of(pipeline: PipelineLike, layer: CircuitPolicy | None = None) -> CircuitRegistry:
        """The registry of a built pipeline's breaker.

        Args:
            pipeline: the pipeline.
            layer: which :class:`CircuitBreaker` layer (the very object passed to
                the pipeline); by default the innermost one.

        Raises:
            LookupError: the pipeline has no such breaker layer.
        """
        for registry in pipeline.env.breakers:
            if isinstance(registry, CircuitRegistry) and (
                layer is None or registry.config is layer
            ):
                return registry
        raise LookupError(f"{pipeline!r} has no such CircuitBreaker layer")

    @property
    def config(self) -> CircuitPolicy:
        """The layer configuration its circuits follow."""
        return self._config

    def get(self, key: str) -> Circuit:
        """The circuit for ``key``, created (closed) if there is none."""
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._create(key)
        return circuit

    def allow(self, key: str) -> float | None:
        """May a call for ``key`` proceed?

        Returns:
            ``None`` when it may (when half-open, it then holds a probe slot until
            :meth:`record` or :meth:`release`); otherwise the seconds until the
            circuit half-opens (0 when half-open with no probe slot free,
            infinite when isolated).
        """
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._create(key)
        if circuit._state is _CLOSED:
            return None
        return circuit._admit(self._clock.now(), None)

    def record(self, key: str, verdict: Verdict, *, duration: float | None = None) -> None:
        """Count the outcome of a call :meth:`allow` let through; free its probe slot.

        Args:
            key: the circuit's key.
            verdict: the call's verdict (``breaker_failure``: a failure; ACCEPT or
                SPLIT: a success; anything else counts neither way).
            duration: seconds the call took, for slow-call detection.
        """
        self.get(key)._complete(None, self._code(verdict, duration), None)

    def _holding(self, request: httpx.Request) -> Circuit | None:
        """The circuit ``request`` would meet, when it is not closed (for ``Retry`` to
        hold the call on); ``None`` when closed, unknown or bypassed."""
        try:
            key = self._config.key(request)
        except Exception:
            return None
        circuit = None if key is None else self._circuits.get(key)
        if circuit is None or circuit._state is _CLOSED:
            return None
        return circuit

    def blocked_for(self, request: httpx.Request) -> float:
        """Seconds before a call for ``request`` could pass this breaker (0: now).

        A read-only look (no circuit is created, no probe slot taken): the
        ``Retry`` layer above uses it not to sleep a backoff only to be rejected.
        Infinite when the circuit is isolated.
        """
        try:
            key = self._config.key(request)
        except Exception:
            return 0.0  # the layer itself reports a failing key function
        circuit = None if key is None else self._circuits.get(key)
        if circuit is None:
            return 0.0
        state = circuit._state
        if state is _OPEN:
            return _remaining(circuit._until, self._clock.now())
        if state is _ISOLATED:
            return math.inf
        return 0.0

    def release(self, key: str) -> None:
        """A call :meth:`allow` let through ended without an outcome (e.g. cancelled).

        It frees the call's probe slot and counts nothing.
        """
        circuit = self._circuits.get(key)
        if circuit is not None:
            circuit._complete(None, 0, None)

    def __len__(self) -> int:
        return len(self._circuits)

    def __contains__(self, key: object) -> bool:
        return key in self._circuits

    def __iter__(self) -> Iterator[str]:
        """The keys of the circuits held now (a snapshot)."""
        return iter(list(self._circuits))

    def __repr__(self) -> str:
        return f"CircuitRegistry({len(self._circuits)} circuit(s), {self._config!r})"

    # -- internals --

    def _code(self, verdict: Verdict, duration: float | None) -> int:
        code = _counted(verdict)
        limit = self._slow_call_duration
        if code and limit is not None and duration is not None and duration > limit:
            code |= _SLOWED
        return code

    def _create(self, key: str) -> Circuit:
        now = self._clock.now()
        self._sweep(now)
        circuit = self._factory(key, self, now)
        self._circuits[key] = circuit
        self._order.append(key)
        return circuit

    def _adopt(self, circuit: Circuit) -> None:
        self._circuits[circuit._key] = circuit
        self._order.append(circuit._key)

    def _sweep(self, now: float) -> None:
        # Second chance, in creation order: an idle circuit goes, a busy one goes to
        # the back. Examining a fixed number per creation keeps the registry
        # shrinking as fast as it grows once keys fall idle.
        order = self._order
        circuits = self._circuits
        for _ in range(min(SWEEP_STEP, len(order))):
            key = order.popleft()
            circuit = circuits.get(key)
            if circuit is None:
                continue
            if circuit._idle_at(now):
                del circuits[key]
                if circuit._state is not _CLOSED:
                    circuit._forget()
            else:
                order.append(key)

    def _changed(self, key: str, old: CircuitState, new: CircuitState, call: Call | None) -> None:
        env = self._env
        if env.instrument is None:
            # With telemetry on, the telemetry logs the change (with the vendor).
            logger.info("resilience circuit breaker %s: %s -> %s", key, old.value, new.value)
        env.emit(CircuitStateChanged(key=key, old=old.value, new=new.value), call)
