"""One circuit breaker for a fleet: ``CircuitBreaker(store=RedisStore(...))``.

Where it sits: it is the bound ``CircuitBreaker`` layer when the layer has a
store, a subclass of the in-process handler. Each process keeps its own
circuits (``CircuitRegistry``) as without a store: they hold calls, emit
``CircuitStateChanged`` and answer ``Retry``'s ``blocked_for``. The store keeps,
per key, a window of time buckets, the run of consecutive failures and
``until``, the end of the fleet's break:

* every counted outcome of a call admitted while closed is recorded by one
  script, which also evaluates the window and the run and answers the time left
  in the fleet's break: a process whose own circuit is closed learns "open" from
  that answer and opens its circuit for the same time (one
  ``CircuitStateChanged`` per process). While its circuit is closed a call costs
  that one round trip and no other; an open circuit rejects without asking;
* when its break is over, a process asks the store who probes (``SET NX PX``):
  one process probes for all; the others keep their circuit open until their
  next look (``RedisStore.probe_poll``, at most the probe's lease left) and
  reject until then with that ``retry_after``; the probe's outcome closes the
  circuit for all, or reopens it for the break this process's circuit chose
  (growth and doubling stay local);
* a process that learns the fleet closed it (its own circuit still open) closes
  its own circuit. Calls held there (``Retry(hold=Hold())``) are held as on a
  local open circuit: the longest held looks at the fleet's state at each
  ``probe_poll`` (there is no wake-up across processes) and goes as the probe
  when it is free; a look that finds the fleet closed releases them in a ramp.

Round trips: a success's outcome is not sent by itself but waits (at most
``RedisStore.flush_delay``) to ride along with the next round trip, usually the
next call's rate-limit slot, whose answer also says whether the fleet's circuit
is open: a process whose circuit is closed reads that (no round trip) before
each call and fails fast once the fleet opened. A failure's outcome, and a key's
first outcome, go at once.

The shared window is always a time window of ``window`` seconds (ten buckets,
the Redis server's clock): ``window_calls`` and slow-call detection stay local.
When Redis is away every step answers ``None`` and the process goes on with its
own circuit alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ._breaker import _BreakerHandler, _open_error
from ._circuit import (
    _CLOSED,
    _FAILED,
    _HALF_OPEN,
    _ISOLATED,
    _OPEN,
    _SLACK,
    _SLOWED,
    BUCKETS,
    Circuit,
    _counted,
)
from ._clock import checkpoint as _checkpoint
from ._layer import Outcome
from .errors import ResilienceError

if TYPE_CHECKING:
    import httpx

    from ._breaker import CircuitBreaker
    from ._circuit import CircuitRegistry
    from ._layer import Call, CallNext, PipelineEnv

__all__ = ["StoreBreakerHandler", "poll_fleet"]

#: The store's answers to a probe request (``RedisStore.breaker_probe``).
_STORE_CLOSED = -1
_PROBE_BUSY = -2
_PROBE_MINE = 0
_STORE_OPEN = 1
#: The shortest wait before looking at a busy fleet probe again (seconds).
_LEAST_LOOK = 0.001


def _never_open(key: str) -> float:
    return 0.0


class StoreBreakerHandler(_BreakerHandler):
    """The bound layer with a store: the local handler, told by the fleet's state."""

    __slots__ = ("_config", "_fleet_open", "_store", "_ttl", "_width")

    def __init__(self, config: CircuitBreaker, env: PipelineEnv, registry: CircuitRegistry) -> None:
        super().__init__(config, env, registry)
        # Held calls on these circuits look at the fleet this way (_hold.py).
        registry.fleet_look = poll_fleet
        self._config = config
        store = config.store
        bound = getattr(store, "bound", None)
        self._store: Any = store if bound is None else bound(env, "circuit_breaker")
        self._fleet_open = getattr(store, "fleet_open", _never_open)
        self._width = config.window / BUCKETS
        # The hash outlives the longest break and a whole window after it.
        self._ttl = config.window + config.longest_break + 1.0

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
        probing = False
        if circuit._state is not _CLOSED:
            now = self._clock.now()
            state = circuit._state
            if state is _ISOLATED or (state is _OPEN and circuit._until - now > _SLACK):
                wait = circuit._admit(now, call)
                if wait is not None:
                    await _checkpoint()
                    return self._reject(request, call, key, wait)
            else:
                answer = await self._store.breaker_probe(key, lease=self._config.break_duration)
                code = None if answer is None else answer[0]
                if code == _STORE_CLOSED:
                    self._close(circuit, call)
                elif code == _PROBE_BUSY:
                    assert answer is not None
                    wait = _look_again(circuit, now, self._store.probe_poll, answer[1])
                    return self._busy(request, call, key, wait)
                elif code == _STORE_OPEN:
                    assert answer is not None
                    self._open(circuit, now, answer[1], call)
                    return self._reject(request, call, key, answer[1])
                if code == _PROBE_MINE and circuit._state is _OPEN:
                    # The fleet's probe is this call's. A look by another call of this
                    # process while the lease was being taken saw the lease (whose, it
                    # cannot tell) and kept the circuit open for another poll: that
                    # must not refuse the probe it saw, or the two go round for ever.
                    circuit._until = min(circuit._until, now)
                if circuit._state is not _CLOSED:
                    wait = circuit._admit(now, call)
                    if wait is not None:
                        if code == _PROBE_MINE:
                            await self._quietly(key, None, 0.0)
                        return self._reject(request, call, key, wait)
                    probing = code == _PROBE_MINE
        else:
            # What the last round trip (usually this call's rate-limit slot) said of
            # the fleet: a break another process started stops this call here.
            left = self._fleet_open(key)
            if left > 0.0:
                self._open(circuit, self._clock.now(), left, call)
                await _checkpoint()
                return self._reject(request, call, key, left)
        gen = circuit._gen
        start = self._clock.now() if self._timed else 0.0
        try:
            outcome = await call_next(request, call)
        except BaseException:
            self._settle(key, circuit, gen, 0, call)
            if probing:
                await self._quietly(key, None, 0.0)
            raise
        error = outcome.error
        if error is not None and isinstance(error, ResilienceError):
            code = 0
        elif self._timed:
            code = self._registry._code(outcome.verdict, self._clock.now() - start)
        else:
            code = _counted(outcome.verdict)
        self._settle(key, circuit, gen, code, call)
        if probing:
            if not code:
                await self._quietly(key, None, 0.0)
            elif code & (_FAILED | _SLOWED):
                now = self._clock.now()
                await self._store.breaker_settle(
                    key, succeeded=False, break_for=max(circuit._until - now, 0.0), ttl=self._ttl
                )
            elif circuit._state is _CLOSED:
                await self._store.breaker_settle(key, succeeded=True, break_for=0.0, ttl=self._ttl)
            else:
                # More probes to pass locally (half_open_calls > 1): the lease goes,
                # the fleet stays half-open until this process closes it.
                await self._quietly(key, None, 0.0)
        elif code:
            # Recorded even when this very outcome opened the local circuit: the
            # store counts the fleet's outcomes (and ignores those of an open one).
            config = self._config
            wait = await self._store.breaker_record(
                key,
                failed=bool(code & _FAILED),
                width=self._width,
                minimum_calls=config.minimum_calls,
                failure_ratio=config.failure_ratio,
                consecutive=config.consecutive_failures or 0,
                break_for=config.break_duration,
                ttl=self._ttl,
            )
            if wait is not None and wait > 0:
                self._open(circuit, self._clock.now(), wait, call)
        return outcome

    def _open(self, circuit: Circuit, now: float, wait: float, call: Call) -> None:
        """The fleet's circuit is open for ``wait`` s more: so is this process's."""
        live = self._circuits.get(circuit._key, circuit)
        if live._state is _ISOLATED:
            return
        if live._state is _OPEN:
            live._until = max(live._until, now + wait)
            return
        if live._state is _CLOSED:
            live._opened_at = now
        live._until = now + wait
        live._move(_OPEN, call)

    def _close(self, circuit: Circuit, call: Call) -> None:
        """The fleet closed it (another process's probe passed): so does this process."""
        _close(circuit, call)

    def _busy(self, request: httpx.Request, call: Call, key: str, wait: float) -> Outcome:
        """Refused: another process probes; this one looks again in ``wait`` s."""
        error = _open_error(
            f"circuit breaker {key} is half-open and another process probes it; "
            f"looking again in {wait:.3g}s",
            key,
            wait,
            request,
            self._verdict.problem,
            call.report,
        )
        return Outcome(request, self._verdict, error=error)

    async def _quietly(self, key: str, succeeded: bool | None, break_for: float) -> None:
        """Free the probe lease; shielded, so that a cancellation still frees it."""
        with anyio.CancelScope(shield=True):
            await self._store.breaker_settle(
                key, succeeded=succeeded, break_for=break_for, ttl=self._ttl
            )


def _close(circuit: Circuit, call: Call | None) -> None:
    if circuit._state in (_OPEN, _HALF_OPEN):
        circuit._clear()
        circuit._breaks = 0
        circuit._move(_CLOSED, call)


def _look_again(circuit: Circuit, now: float, poll: float, lease: float) -> float:
    """Another process probes: keep this process's circuit open until its next
    look at the fleet (``poll``, or the probe's lease left if sooner); that wait."""
    wait = max(min(poll, lease), _LEAST_LOOK)
    if circuit._state is _OPEN:
        circuit._until = max(circuit._until, now + wait)
    return wait


async def poll_fleet(circuit: Circuit, now: float) -> bool:
    """A look at the fleet's state for a call held on ``circuit`` (its local break
    over, see ``_hold.py``): ``True`` when the call may go as the probe (the fleet's
    probe is free, or Redis is away). Otherwise ``circuit`` now says what the fleet
    does: closed (its held calls are released in a ramp), or open until the end of
    the fleet's break or the next look (another process probes)."""
    if circuit._state is not _OPEN:
        return True
    config: Any = circuit._registry._config
    store: Any = config.store
    answer = await store.breaker_probe(circuit._key, lease=config.break_duration, take=False)
    if answer is None or answer[0] == _PROBE_MINE:
        return True
    code, value = answer
    if code == _STORE_CLOSED:
        _close(circuit, None)
    elif code == _STORE_OPEN:
        circuit._until = max(circuit._until, now + value)
    else:
        _look_again(circuit, now, store.probe_poll, value)
    return False
