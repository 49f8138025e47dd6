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
  one process probes for all, the others reject with ``retry_after`` 0 (probes
  busy); the probe's outcome closes the circuit for all, or reopens it for the
  break this process's circuit chose (growth and doubling stay local);
* a process that learns the fleet closed it (its own circuit still open) closes
  its own circuit.

The shared window is always a time window of ``window`` seconds (ten buckets,
the Redis server's clock): ``window_calls`` and slow-call detection stay local.
When Redis is away every step answers ``None`` and the process goes on with its
own circuit alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ._breaker import _BreakerHandler, _checkpoint
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
from .errors import ResilienceError

if TYPE_CHECKING:
    import httpx

    from ._breaker import CircuitBreaker
    from ._circuit import CircuitRegistry
    from ._layer import Call, CallNext, Outcome, PipelineEnv

__all__ = ["StoreBreakerHandler"]

#: The store's answers to a probe request.
_STORE_CLOSED = -1.0
_PROBE_BUSY = -2.0


class StoreBreakerHandler(_BreakerHandler):
    """The bound layer with a store: the local handler, told by the fleet's state."""

    __slots__ = ("_config", "_store", "_ttl", "_width")

    def __init__(self, config: CircuitBreaker, env: PipelineEnv, registry: CircuitRegistry) -> None:
        super().__init__(config, env, registry)
        self._config = config
        self._store: Any = config.store
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
                if answer == _STORE_CLOSED:
                    self._close(circuit, call)
                elif answer == _PROBE_BUSY:
                    return self._reject(request, call, key, 0.0)
                elif answer is not None and answer > 0:
                    self._open(circuit, now, answer, call)
                    return self._reject(request, call, key, answer)
                if circuit._state is not _CLOSED:
                    wait = circuit._admit(now, call)
                    if wait is not None:
                        if answer == 0:
                            await self._quietly(key, None, 0.0)
                        return self._reject(request, call, key, wait)
                    probing = answer == 0
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
        if circuit._state in (_OPEN, _HALF_OPEN):
            circuit._clear()
            circuit._breaks = 0
            circuit._move(_CLOSED, call)

    async def _quietly(self, key: str, succeeded: bool | None, break_for: float) -> None:
        """Free the probe lease; shielded, so that a cancellation still frees it."""
        with anyio.CancelScope(shield=True):
            await self._store.breaker_settle(
                key, succeeded=succeeded, break_for=break_for, ttl=self._ttl
            )
