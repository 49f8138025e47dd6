"""The CircuitBreaker layer: stop calling a backend that keeps failing.

It sits below Retry (so every attempt is counted, and an open breaker is final for
the call) and above AuthRefresh. Each request maps to a key (by default
``scheme://host:port``); a :class:`CircuitRegistry` holds one :class:`Circuit` per
key, creates it on first use and forgets it once it is closed and idle (or open,
its break over and quiet since). A circuit is closed (calls pass, outcomes are
counted in a sliding window and, if asked, as a run of consecutive failures), open
(calls fail fast with :class:`~resilience.errors.CircuitOpenError`, nothing is
sent, and the call still passes a checkpoint), half-open (a few probes pass; they
close it or reopen it for a longer break) or isolated (held open by hand until
:meth:`Circuit.reset`). A circuit also keeps the calls a ``Retry(hold=...)`` above
holds on it (a ``_hold.HoldQueue``, made on the first hold) and tells them about
its transitions: closing releases them in a ramp, a reopening ends the holds it
makes hopeless, isolation ends them all.

What counts comes from the verdict: ``breaker_failure`` (RETRY by default) is a
failure, ACCEPT and SPLIT are successes, anything else counts neither way. The
registry is also shared with the PartialFailureSplitter through ``env.breakers``,
where it keys per-part circuits (``"derapi:solis"``).

Everything a call does to its circuit is synchronous and O(1): the window is a ring
of counters, the registry's sweep of idle circuits does a bounded amount of work
each time a circuit is created.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
from collections.abc import Callable, Iterator
from math import ceil as _ceil
from math import inf as _INF
from typing import Any

import anyio.lowlevel
import attrs
import httpx
from sniffio import current_async_library

from . import _validate as v
from ._events import CircuitStateChanged
from ._hold import Hold, HoldQueue
from ._http import DEFAULT_PORTS as _DEFAULT_PORTS
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._pipeline import Pipeline
from ._report import CallReport
from ._verdict import Action, Problem, Verdict
from .errors import CircuitOpenError, ConfigurationError, ResilienceError

__all__ = ["Circuit", "CircuitBreaker", "CircuitRegistry", "CircuitState"]

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


def host_key(request: httpx.Request) -> str:
    """The default breaker key: ``scheme://host:port``, the port always spelled out.

    ``https://api.example.com/v1/x`` has the key ``https://api.example.com:443``.
    """
    if _PARSED_URLS:
        # httpx keeps the parsed URL; its raw scheme, host and port decide the key.
        # Reading them and looking the key up costs a third of building it.
        ref = request.url._uri_reference
        parts = (ref.scheme, ref.host, ref.port)
        key = _host_keys.get(parts)
        if key is None:
            if len(_host_keys) >= _HOST_KEYS_KEPT:
                _host_keys.clear()
            key = _host_keys[parts] = _format_host_key(request.url)
        return key
    return _format_host_key(request.url)  # pragma: no cover - a different httpx


def _format_host_key(url: httpx.URL) -> str:
    scheme = url.scheme
    host = url.host
    port = url.port
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _parsed_urls_work() -> bool:
    """Whether httpx.URL still keeps its parse as ``_uri_reference`` (scheme, host, port)."""
    try:
        ref = httpx.URL("http://[::1]:8080/x")._uri_reference
        return (ref.scheme, ref.host, ref.port) == ("http", "::1", 8080)
    except Exception:  # pragma: no cover - a different httpx
        return False


_PARSED_URLS = _parsed_urls_work()
#: Keys already built, by (scheme, raw host, port); emptied when it grows this big.
_HOST_KEYS_KEPT = 1024
_host_keys: dict[tuple[str, str, int | None], str] = {}


KeyFunction = Callable[[httpx.Request], str | None]
"""Maps a request to its breaker key; ``None`` lets the request bypass the breaker."""


async def _checkpoint() -> None:
    """Yield to the scheduler and take any pending cancellation, as cheaply as the
    running loop allows: a rejected call must not monopolise the loop (a task that
    retries on CircuitOpenError would starve the probe that closes the circuit)."""
    if current_async_library() == "asyncio":
        # What anyio's checkpoint does under asyncio, without its dispatch.
        await asyncio.sleep(0)
    else:
        await anyio.lowlevel.checkpoint()


def _function_name(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or type(function).__name__)


def _max_break_after(instance: CircuitBreaker, attribute: Any, value: float | None) -> None:
    if value is not None and value < instance.break_duration:
        raise ConfigurationError(
            f"CircuitBreaker: max_break_duration ({value!r}) must be >= break_duration "
            f"({instance.break_duration!r})"
        )


def _window_calls_fit(instance: CircuitBreaker, attribute: Any, value: int | None) -> None:
    if value is not None and value < instance.minimum_calls:
        raise ConfigurationError(
            f"CircuitBreaker: window_calls ({value!r}) must be >= minimum_calls "
            f"({instance.minimum_calls!r}), or the breaker could never open"
        )


@attrs.frozen(kw_only=True)
class CircuitBreaker:
    """Fails fast on backends whose recent calls mostly failed.

    Per key (by default per ``scheme://host:port``), outcomes are counted in a
    sliding window: the last :attr:`window` seconds, or the last
    :attr:`window_calls` calls. Once the window holds at least
    :attr:`minimum_calls` calls and the share of failures reaches
    :attr:`failure_ratio` (or the share of slow calls reaches
    :attr:`slow_call_ratio`), or when :attr:`consecutive_failures` calls in a row
    failed, the circuit opens: calls fail with
    :class:`~resilience.errors.CircuitOpenError` without touching the network.
    After :attr:`break_duration` it half-opens: :attr:`half_open_calls` probes
    pass; if they all succeed it closes, if one fails (or is slow) it opens again
    for twice as long as the previous break, up to :attr:`max_break_duration`
    (or, with :attr:`break_growth`, for a break that grows with the age of the
    outage).

    A verdict with ``breaker_failure`` (RETRY by default: server errors, timeouts,
    connection errors) is a failure; ACCEPT and SPLIT are successes; FAIL (the
    caller's own mistakes), REFRESH_AUTH, errors made by an inner layer and
    cancelled calls count neither way.

    Reach the circuits of a built pipeline with :meth:`CircuitRegistry.of`.
    """

    failure_ratio: float = attrs.field(default=0.5, validator=v.number(minimum=0, maximum=1))
    """Share of failures in the window that opens the circuit (0: any failure)."""
    minimum_calls: int = attrs.field(default=20, validator=v.number(minimum=1, integer=True))
    """Calls the window must hold before the circuit may open."""
    window: float = attrs.field(default=30.0, validator=v.number(minimum=MIN_WINDOW))
    """Seconds of history the window holds (kept as a ring of ten buckets; at least
    0.01). With :attr:`window_calls`, a pause longer than this empties the window."""
    window_calls: int | None = attrs.field(
        default=None,
        validator=[
            v.number(minimum=1, maximum=MAX_WINDOW_CALLS, integer=True, optional=True),
            _window_calls_fit,
        ],
    )
    """When set, the window is the last this many calls instead of a time span (at
    most 10,000: the window costs a byte per call in each circuit that uses it)."""
    break_duration: float = attrs.field(
        default=30.0, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds an opened circuit stays open before it half-opens."""
    max_break_duration: float | None = attrs.field(
        default=None,
        validator=[v.number(minimum=0, exclusive_minimum=True, optional=True), _max_break_after],
    )
    """Longest break after consecutive reopenings (default: ten times
    :attr:`break_duration`; equal to it for a constant break)."""
    break_growth: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """When set, a break after a failed probe lasts this share of the outage's age
    (the seconds since the circuit first opened, the last time it was closed),
    between :attr:`break_duration` and :attr:`max_break_duration`, instead of
    doubling: with 0.1, 1 s and 30 s, an outage is probed every second for its
    first ten seconds, and every 30 s once it is five minutes old. So a short
    outage costs about one :attr:`break_duration` once the backend is back, and a
    long one is probed rarely. Default: off (each failed probe doubles the break)."""
    consecutive_failures: int | None = attrs.field(
        default=None, validator=v.number(minimum=1, integer=True, optional=True)
    )
    """When set, this many failures in a row also open the circuit, whatever the
    window holds and before :attr:`minimum_calls` (a total outage trips at once
    instead of waiting for earlier successes to leave the window). A success ends
    the run, as does a pause longer than :attr:`window`. Default: off."""
    half_open_calls: int = attrs.field(default=1, validator=v.number(minimum=1, integer=True))
    """Probes let through at once when half-open; all must succeed to close."""
    slow_call_duration: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Calls taking longer than this many seconds are slow (default: no slow-call
    detection)."""
    slow_call_ratio: float = attrs.field(default=1.0, validator=v.number(minimum=0, maximum=1))
    """Share of slow calls in the window that opens the circuit."""
    key: KeyFunction = attrs.field(
        default=host_key,
        validator=v.has_method("__call__"),
        repr=lambda key: getattr(key, "__qualname__", None) or repr(key),
    )
    """Maps a request to its circuit's key (default: ``scheme://host:port``);
    returning ``None`` lets that request bypass the breaker."""

    def break_for(self, reopenings: int, age: float = 0.0) -> float:
        """Seconds of break after ``reopenings`` consecutive reopenings (0: first opening).

        ``age`` is the seconds since the circuit first opened in this outage: with
        :attr:`break_growth` the break is ``break_growth * age`` within
        [:attr:`break_duration`, :attr:`longest_break`], whatever ``reopenings``.
        """
        growth = self.break_growth
        if growth is not None:
            grown = growth * age if age > 0 else 0.0
            return min(max(grown, self.break_duration), self.longest_break)
        # 2**64 already exceeds any sane cap; past it the power would overflow.
        return min(self.break_duration * 2.0 ** min(max(reopenings, 0), 64), self.longest_break)

    @property
    def longest_break(self) -> float:
        """The longest break: :attr:`max_break_duration`, by default ten breaks."""
        longest = self.max_break_duration
        return 10 * self.break_duration if longest is None else longest

    @property
    def quiet_period(self) -> float:
        """Seconds after its break ends that an open circuit nobody asked for is
        kept: the longer of :attr:`window` and :attr:`longest_break`. It is then
        forgotten like an idle closed one."""
        return max(self.window, self.longest_break)

    def bind(self, env: PipelineEnv) -> _BreakerHandler:
        """Create this layer's registry in ``env`` and return its handler."""
        registry = CircuitRegistry(self, env)
        # Bound innermost first: env.breakers[0] is the innermost breaker's (the
        # splitter records its per-part outcomes there); each is found by its layer.
        env.breakers.append(registry)
        return _BreakerHandler(self, env, registry)


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
    )

    def __init__(self, config: CircuitBreaker, env: PipelineEnv) -> None:
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
    def of(pipeline: Pipeline, layer: CircuitBreaker | None = None) -> CircuitRegistry:
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
    def config(self) -> CircuitBreaker:
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


def _construct_open_error(
    message: str,
    key: str,
    retry_after: float,
    request: httpx.Request,
    problem: Problem | None,
    report: CallReport,
) -> CircuitOpenError:
    return CircuitOpenError(
        message, key=key, retry_after=retry_after, request=request, problem=problem, report=report
    )


def _assemble_open_error(
    message: str,
    key: str,
    retry_after: float,
    request: httpx.Request,
    problem: Problem | None,
    report: CallReport,
) -> CircuitOpenError:
    error: CircuitOpenError = BaseException.__new__(CircuitOpenError, message)
    error._request = request
    error.response = None
    error.problem = problem
    error.report = report
    error.key = key
    error.retry_after = retry_after
    return error


def _choose_open_error() -> Callable[..., CircuitOpenError]:
    # The errors' Python-level __new__ and __init__ chain costs about 1 µs, a third
    # of the fast-fail budget. Assembling the error directly is equivalent only
    # while the constructor sets exactly these attributes: check once, and fall back
    # to the constructor the day it sets anything else.
    request = httpx.Request("GET", "https://check.invalid/")
    report = CallReport()
    made = _construct_open_error("m", "k", 1.0, request, None, report)
    assembled = _assemble_open_error("m", "k", 1.0, request, None, report)
    if (
        type(made) is type(assembled)
        and made.args == assembled.args
        and vars(made) == vars(assembled)
    ):
        return _assemble_open_error
    return _construct_open_error  # pragma: no cover - errors.py changed its attributes


_open_error = _choose_open_error()


class _BreakerHandler:
    """The bound layer: admits, rejects and settles each call."""

    __slots__ = ("_circuits", "_clock", "_key", "_key_verdict", "_registry", "_timed", "_verdict")

    def __init__(self, config: CircuitBreaker, env: PipelineEnv, registry: CircuitRegistry) -> None:
        self._registry = registry
        self._circuits = registry._circuits
        self._clock = env.clock
        self._key = config.key
        self._timed = config.slow_call_duration is not None
        # One verdict for every rejection: frozen, so it can be shared.
        self._verdict = Verdict(
            Action.FAIL,
            problem=Problem(vendor=env.vendor, code="circuit_open", title="circuit breaker open"),
            breaker_failure=False,
        )
        self._key_verdict = Verdict(
            Action.FAIL,
            problem=Problem(
                vendor=env.vendor, code="breaker_key_error", title="circuit breaker key failed"
            ),
            breaker_failure=False,
        )

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        try:
            key = self._key(request)
        except Exception as exc:
            await _checkpoint()
            return self._key_failed(request, exc)
        if key is None:
            return await call_next(request, call)
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._registry._create(key)
        if circuit._state is not _CLOSED:
            wait = circuit._admit(self._clock.now(), call)
            if wait is not None:
                await _checkpoint()
                return self._reject(request, call, key, wait)
        gen = circuit._gen
        start = self._clock.now() if self._timed else 0.0
        try:
            outcome = await call_next(request, call)
        except BaseException:
            # Cancelled (anyio cancellation is a BaseException) or failed without an
            # outcome: free the probe slot, count nothing.
            self._settle(key, circuit, gen, 0, call)
            raise
        error = outcome.error
        if error is not None and isinstance(error, ResilienceError):
            code = 0  # made by an inner layer (an inner breaker, AuthRefresh): not ours
        elif self._timed:
            code = self._registry._code(outcome.verdict, self._clock.now() - start)
        else:
            code = _counted(outcome.verdict)
        self._settle(key, circuit, gen, code, call)
        return outcome

    def _settle(self, key: str, circuit: Circuit, gen: int, code: int, call: Call) -> None:
        if self._circuits.get(key) is circuit:
            circuit._complete(gen, code, call)
        elif code and circuit._gen == gen:
            # The registry forgot the (closed, idle) circuit while the call ran:
            # count the outcome in the circuit it holds for the key now, but only
            # while that one is closed too. A call admitted before a break must
            # not settle the probes of a later half-open.
            live = self._registry.get(key)
            if live._state is _CLOSED:
                live._complete(None, code, call)

    def _key_failed(self, request: httpx.Request, exc: Exception) -> Outcome:
        # The exception's own text is left to the chained cause: a key function may
        # read headers, and the message of a typed error is logged and traced.
        error = ConfigurationError(
            f"CircuitBreaker: the key function {_function_name(self._key)} raised "
            f"{type(exc).__name__}"
        )
        error.__cause__ = exc
        error._request = request
        return Outcome(request, self._key_verdict, error=error)

    def _reject(self, request: httpx.Request, call: Call, key: str, wait: float) -> Outcome:
        # The error is returned, never raised here: no traceback is built until the
        # pipeline raises it once, and nothing is kept between rejections.
        if wait == _INF:
            message = f"circuit breaker {key} is isolated"
        elif wait > 0:
            # Whole seconds, rounded up (the exact figure is .retry_after): formatting
            # a float costs a tenth of the whole rejection.
            message = f"circuit breaker {key} is open; it half-opens in {_ceil(wait)}s"
        else:
            message = f"circuit breaker {key} is half-open and its probes are busy"
        error = _open_error(message, key, wait, request, self._verdict.problem, call.report)
        return Outcome(request, self._verdict, error=error)
