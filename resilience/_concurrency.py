"""The ConcurrencyLimit layer (a bulkhead): at most N calls in flight per key.

Where it sits decides what it counts: above Retry, a logical call holds its slot
through its retries and their sleeps; below Retry, each attempt takes a slot of its
own. Each request maps to a key (by default ``scheme://host:port``, as for the
breaker). A call that finds its key's slots all taken queues, first come first
served, up to ``max_queued`` calls and for at most ``max_wait`` seconds (cut by the
call's deadline); beyond that it fails fast with
:class:`~resilience.errors.ConcurrencyLimitExceeded` and nothing is sent.

Keys never share a lock or a queue: the only shared state is two dicts, touched
synchronously. A key's entries exist only while it has calls in flight or queued,
so many keys cost nothing once they go quiet. A freed slot is handed straight to
the oldest waiter, so a newcomer can never overtake the queue.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable

import anyio
import attrs
import httpx

from . import _validate as v
from ._breaker import _function_name, host_key
from ._clock import checkpoint as _checkpoint
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._layer_events import ConcurrencyLimitReached
from ._verdict import Action, Problem, Verdict
from .errors import ConcurrencyLimitExceeded, ConfigurationError

__all__ = ["ConcurrencyLimit"]

KeyFunction = Callable[[httpx.Request], str | None]


@attrs.frozen(kw_only=True)
class ConcurrencyLimit:
    """At most :attr:`limit` calls in flight per key; a bounded, fair queue for more.

    A call over the limit waits in its key's queue (first in, first served) when
    fewer than :attr:`max_queued` calls already wait, for at most :attr:`max_wait`
    seconds and never past the call's deadline (``Timeout(total=...)`` above). A
    call that cannot queue, or waits too long, fails at once with
    :class:`~resilience.errors.ConcurrencyLimitExceeded` (``.key``, ``.limit``,
    ``.reason``; ``.retry_after`` is ``None``) and a FAIL verdict, so a Retry
    layer above does not retry it. The slot is held until the layers below have
    answered; a response body the caller streams afterwards is not counted.
    """

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    limit: int = attrs.field(validator=v.number(minimum=1, integer=True))
    """Calls (or attempts, below Retry) in flight at once, per key."""
    max_queued: int = attrs.field(default=0, validator=v.number(minimum=0, integer=True))
    """Calls that may wait for a slot, per key (0: fail at once when full)."""
    max_wait: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Seconds a queued call waits at most (``None``: until a slot frees or the
    call's deadline)."""
    key: KeyFunction = attrs.field(
        default=host_key,
        validator=v.has_method("__call__"),
        repr=lambda key: getattr(key, "__qualname__", None) or repr(key),
    )
    """Maps a request to its key (default: ``scheme://host:port``); returning
    ``None`` lets that request bypass the limit."""

    def bind(self, env: PipelineEnv) -> _LimitHandler:
        handler = _LimitHandler(self, env)
        # Found by health checks and tests: pipeline.env.concurrency_limits.
        env.concurrency_limits.append(handler)
        return handler


class _Waiter:
    """A queued call: woken with a slot already counted for it (``granted``)."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class _LimitHandler:
    """The bound layer: counts slots per key, queues and hands slots on."""

    __slots__ = (
        "_active",
        "_clock",
        "_config",
        "_env",
        "_key",
        "_key_verdict",
        "_limit",
        "_queues",
        "_verdict",
    )

    def __init__(self, config: ConcurrencyLimit, env: PipelineEnv) -> None:
        self._config = config
        self._env = env
        self._clock = env.clock
        self._key = config.key
        self._limit = config.limit
        self._active: dict[str, int] = {}
        """Slots taken per key (granted waiters included); absent when none."""
        self._queues: dict[str, collections.deque[_Waiter]] = {}
        """Waiters per key, oldest first; absent when none wait."""
        self._verdict = Verdict(
            Action.FAIL,
            problem=Problem(
                vendor=env.vendor, code="concurrency_limit", title="concurrency limit reached"
            ),
            breaker_failure=False,
        )
        self._key_verdict = Verdict(
            Action.FAIL,
            problem=Problem(
                vendor=env.vendor, code="concurrency_key_error", title="concurrency key failed"
            ),
            breaker_failure=False,
        )

    def in_flight(self, key: str) -> int:
        """Slots of ``key`` taken now (0 for a key not seen or gone quiet)."""
        return self._active.get(key, 0)

    def queued(self, key: str) -> int:
        """Calls of ``key`` waiting for a slot now."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    def keys(self) -> int:
        """How many keys this layer holds state for (only those busy or queued)."""
        return len(self._active.keys() | self._queues.keys())

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        try:
            key = self._key(request)
        except Exception as exc:
            await _checkpoint()
            return self._key_failed(request, exc)
        if key is None:
            return await call_next(request, call)
        active = self._active
        taken = active.get(key, 0)
        if taken < self._limit and key not in self._queues:
            active[key] = taken + 1
        else:
            reason = await self._wait(key, call)
            if reason is not None:
                return self._reject(request, call, key, reason)
        try:
            return await call_next(request, call)
        finally:
            self._release(key)

    async def _wait(self, key: str, call: Call) -> str | None:
        """Queue for a slot of ``key``; ``None`` once it holds one, else why not."""
        config = self._config
        queue = self._queues.get(key)
        if (len(queue) if queue is not None else 0) >= config.max_queued:
            await _checkpoint()
            return "queue_full"
        wait = config.max_wait
        reason = "max_wait"
        remaining = call.remaining()
        if remaining is not None and (wait is None or remaining < wait):
            wait, reason = remaining, "deadline"
            if wait <= 0:
                await _checkpoint()
                return reason
        if queue is None:
            queue = self._queues[key] = collections.deque()
        waiter = _Waiter()
        queue.append(waiter)
        try:
            if wait is None:
                await waiter.event.wait()
            else:
                await self._wait_at_most(waiter, wait)
        except BaseException:
            if waiter.granted:
                self._release(key)  # cancelled as the slot came: pass it on
            else:
                self._leave(key, waiter)
            raise
        if waiter.granted:
            return None
        self._leave(key, waiter)
        return reason

    async def _wait_at_most(self, waiter: _Waiter, seconds: float) -> None:
        """Wait for ``waiter``'s slot, at most ``seconds`` on the pipeline's clock."""
        clock = self._clock
        async with anyio.create_task_group() as group:

            async def expire() -> None:
                await clock.sleep(seconds)
                group.cancel_scope.cancel()

            group.start_soon(expire)
            await waiter.event.wait()
            group.cancel_scope.cancel()

    def _leave(self, key: str, waiter: _Waiter) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        # Only a waiter still queued gets here: a granted one was popped already.
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._queues[key]

    def _release(self, key: str) -> None:
        """Free a slot of ``key``: to the oldest waiter, or back to the key."""
        queue = self._queues.get(key)
        if queue:
            waiter = queue.popleft()
            if not queue:
                del self._queues[key]
            # The slot changes hands without ever being free: nobody can overtake.
            waiter.granted = True
            waiter.event.set()
            return
        taken = self._active[key] - 1
        if taken:
            self._active[key] = taken
        else:
            del self._active[key]

    def _reject(self, request: httpx.Request, call: Call, key: str, reason: str) -> Outcome:
        config = self._config
        if reason == "queue_full":
            detail = f"{config.limit} in flight and {config.max_queued} queued"
        elif reason == "max_wait":
            detail = f"no slot within max_wait={config.max_wait:g}s"
        else:
            detail = "no slot before the call's deadline"
        error = ConcurrencyLimitExceeded(
            f"concurrency limit of {config.limit} reached for {key} ({detail})",
            key=key,
            limit=config.limit,
            reason=reason,
            request=request,
            problem=self._verdict.problem,
            report=call.report,
        )
        self._env.emit(ConcurrencyLimitReached(key=key, limit=config.limit, reason=reason), call)
        return Outcome(request, self._verdict, error=error)

    def _key_failed(self, request: httpx.Request, exc: Exception) -> Outcome:
        # The exception's text stays in the chained cause: a key function may read
        # headers, and a typed error's message is logged and traced.
        error = ConfigurationError(
            f"ConcurrencyLimit: the key function {_function_name(self._key)} raised "
            f"{type(exc).__name__}"
        )
        error.__cause__ = exc
        error._request = request
        return Outcome(request, self._key_verdict, error=error)
