"""The RateLimiter layer: a client-side, proactive rate limit per key (GCRA).

A vendor that allows 60 queries a minute per client id answers the 61st with a
429, and a client that learns its limit that way has already spent a round trip,
a retry and some of its budget. This layer keeps the count on the client's side
and paces calls before they leave: each call takes a slot of its key's limit (the
generic cell rate algorithm: one number per key, O(1) per call), sleeps off a
short reservation when the limit is momentarily used up, or fails at once with
:class:`~resilience.errors.RateLimitExceeded` when no slot comes within
``max_wait`` or before the call's deadline.

Where it sits: outermost but ``Timeout(total=...)``, where Polly puts its rate
limiter. Inside the total timeout, so a wait for a slot counts against the call's
deadline (and the layer never waits past it); outside everything else, so a call
it holds back or refuses has taken nothing yet: no retry budget, no breaker
window, no concurrency slot, no token refresh. Above ``Retry`` it paces logical
calls; retries are not counted (they are bounded by the retry budget, and a
vendor's 429 carries its own wait). To pace every attempt instead, place it
below ``Retry``: a refusal is a FAIL verdict, so give it a ``max_wait``.

The state lives in a :class:`~resilience._store.StateStore`: in this process by
default, or shared by every process of a fleet with ``store=RedisStore(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from . import _validate as v
from ._breaker import _function_name, host_key
from ._clock import checkpoint as _checkpoint
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._ratelimit_events import RateLimited
from ._store import MemoryStore, StateStore
from ._verdict import Action, Problem, Verdict
from .errors import ConfigurationError, RateLimitExceeded

__all__ = ["RateLimited", "RateLimiter"]

KeyFunction = Callable[[httpx.Request], str | None]
MatchFunction = Callable[[httpx.Request], bool]


def _name_ok(instance: RateLimiter, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 100):
        raise ConfigurationError(
            f"RateLimiter: name must be a non-empty str of at most 100 characters, got {value!r}"
        )


def _store_ok(instance: RateLimiter, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, StateStore):
        raise ConfigurationError(
            f"RateLimiter: store must be a StateStore (take_slot, update_budget), "
            f"got {type(value).__name__}"
        )


def _function_repr(function: object) -> str:
    return "None" if function is None else _function_name(function)


def _methods(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return v.method_set(value, "RateLimiter", "methods", non_empty=True)


@attrs.frozen(kw_only=True)
class RateLimiter:
    """At most :attr:`burst` calls at once and :attr:`rate` per :attr:`per` seconds, per key.

    ``RateLimiter(rate=60, per=60.0)`` lets one call through a second, on
    average. A call that finds its key's limit used up waits for the next slot when
    that comes within :attr:`max_wait` and the call's deadline; otherwise it fails
    at once with :class:`~resilience.errors.RateLimitExceeded` (``.retry_after``:
    seconds until a slot frees) and a FAIL verdict, so nothing is sent, a Retry
    layer does not retry it and a breaker does not count it.

    Over any span of ``T`` seconds, at most ``burst + rate * T / per`` calls of a
    key get through. To stay under a vendor's "N per minute" whatever its window,
    pick ``burst + rate == N`` (``rate_limits()`` of the vendor plugins do).
    """

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    rate: float = attrs.field(validator=v.number(minimum=0, exclusive_minimum=True))
    """Calls allowed per :attr:`per` seconds, sustained."""
    per: float = attrs.field(default=1.0, validator=v.number(minimum=0, exclusive_minimum=True))
    """The period :attr:`rate` is counted over, in seconds."""
    burst: int = attrs.field(default=1, validator=v.number(minimum=1, integer=True))
    """Calls let through at once after a quiet spell (1: calls are evenly spaced)."""
    max_wait: float | None = attrs.field(default=60.0, validator=v.number(minimum=0, optional=True))
    """Seconds a call may wait for its slot (0: never wait; ``None``: as long as
    the call's deadline allows)."""
    methods: frozenset[str] | None = attrs.field(default=None, converter=_methods)
    """Only requests with these methods are limited (``None``: every request);
    others pass untouched. Two limiters with different methods keep, say, a
    vendor's query and write limits apart."""
    match: MatchFunction | None = attrs.field(
        default=None, validator=v.has_method("__call__", optional=True), repr=_function_repr
    )
    """Only requests for which this returns true are limited (with :attr:`methods`,
    both must agree), e.g. ``lambda r: r.url.path.startswith("/v1/control")``."""
    key: KeyFunction | None = attrs.field(
        default=None, validator=v.has_method("__call__", optional=True), repr=_function_repr
    )
    """Maps a request to its key; ``None`` from it lets the request through
    unlimited. By default: the vendor and :attr:`client_id` when given (vendors
    limit per client id), else ``scheme://host:port``."""
    client_id: str | None = attrs.field(default=None, validator=v.instance_of(str, optional=True))
    """The API client id the vendor counts the limit against (part of the default key)."""
    name: str | None = attrs.field(default=None, validator=_name_ok)
    """Names this limit in events, errors and a shared store's keys (default: its
    methods, ``"GET"`` or ``"DELETE,PATCH,POST,PUT"``, else ``"all"``). Two
    limiters sharing a store need different names."""
    store: StateStore | None = attrs.field(default=None, validator=_store_ok, repr=False)
    """Where the slots live (default: a fresh in-memory store per pipeline; a
    ``RedisStore`` shares them across processes)."""

    @property
    def interval(self) -> float:
        """Seconds between calls at the sustained rate."""
        return self.per / self.rate

    @property
    def label(self) -> str:
        """The name used in events, errors and store keys."""
        if self.name is not None:
            return self.name
        if self.methods is not None:
            return ",".join(sorted(self.methods))
        return "all"

    def bind(self, env: PipelineEnv) -> _RateLimitHandler:
        handler = _RateLimitHandler(self, env)
        # Found by health checks and tests: pipeline.env.rate_limiters.
        env.rate_limiters.append(handler)
        return handler


class _RateLimitHandler:
    """The bound layer: asks the store for a slot, sleeps or refuses."""

    __slots__ = (
        "_burst",
        "_clock",
        "_config",
        "_constant_key",
        "_env",
        "_interval",
        "_key",
        "_key_verdict",
        "_label",
        "_local",
        "_match",
        "_max_wait",
        "_methods",
        "_prefix",
        "_remote",
        "_store",
        "_verdict",
    )

    def __init__(self, config: RateLimiter, env: PipelineEnv) -> None:
        self._config = config
        self._env = env
        self._clock = env.clock
        self._interval = config.interval
        self._burst = config.burst
        self._max_wait = math.inf if config.max_wait is None else config.max_wait
        self._methods = config.methods
        self._match = config.match
        self._label = config.label
        store = config.store if config.store is not None else MemoryStore()
        self._store: StateStore = store
        # The in-memory store answers synchronously: no coroutine per call.
        self._local = store if type(store) is MemoryStore else None
        # A shared store, as this pipeline's layer (its fallbacks in its telemetry).
        bound = getattr(store, "bound", None)
        self._remote: Any = store if bound is None else bound(env, "rate_limiter")
        self._prefix = f"{self._label}|"
        self._key: KeyFunction | None = config.key
        self._constant_key: str | None = None
        if config.key is None and config.client_id is not None:
            self._constant_key = f"{self._prefix}{env.vendor}:{config.client_id}"
        self._verdict = Verdict(
            Action.FAIL,
            problem=Problem(
                vendor=env.vendor, code="rate_limit", title="client rate limit reached"
            ),
            breaker_failure=False,
        )
        self._key_verdict = Verdict(
            Action.FAIL,
            problem=Problem(
                vendor=env.vendor, code="rate_limit_key_error", title="rate limit key failed"
            ),
            breaker_failure=False,
        )

    @property
    def store(self) -> StateStore:
        """Where this layer's slots live."""
        return self._store

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        methods = self._methods
        if methods is not None and request.method not in methods:
            return await call_next(request, call)
        key = self._constant_key
        if key is None:
            try:
                if self._match is not None and not self._match(request):
                    return await call_next(request, call)
                name = host_key(request) if self._key is None else self._key(request)
            except Exception as exc:
                await _checkpoint()
                return self._key_failed(request, exc)
            if name is None:
                return await call_next(request, call)
            key = self._prefix + name
        elif self._match is not None:
            try:
                if not self._match(request):
                    return await call_next(request, call)
            except Exception as exc:
                await _checkpoint()
                return self._key_failed(request, exc)
        limit = self._max_wait
        remaining = call.remaining()
        by_deadline = False
        if remaining is not None and remaining < limit:
            by_deadline = True
            limit = remaining if remaining > 0.0 else 0.0
        clock = self._clock
        local = self._local
        if local is not None:
            admitted, wait = local.take_slot_now(
                key, clock.now(), self._interval, self._burst, limit
            )
        else:
            admitted, wait = await self._remote.take_slot(
                key, clock.now(), self._interval, self._burst, limit
            )
        if not admitted:
            await _checkpoint()
            return self._reject(request, call, key, wait, "deadline" if by_deadline else "max_wait")
        if wait > 0.0:
            self._env.emit(
                RateLimited(
                    limiter=self._label,
                    key=key[len(self._prefix) :],
                    outcome="delayed",
                    wait=wait,
                ),
                call,
            )
            # The slot is reserved: a call cancelled while it sleeps leaves it
            # unused, so the limiter errs towards sending less, never more.
            await clock.sleep(wait)
        return await call_next(request, call)

    def _reject(
        self, request: httpx.Request, call: Call, key: str, retry_after: float, reason: str
    ) -> Outcome:
        config = self._config
        name = key[len(self._prefix) :]
        why = (
            "no slot before the call's deadline"
            if reason == "deadline"
            else f"no slot within max_wait={config.max_wait:g}s"
        )
        error = RateLimitExceeded(
            f"client rate limit {self._label} ({config.rate:g} per {config.per:g}s, "
            f"burst {config.burst}) reached for {name}: {why}, next slot in {retry_after:.3g}s",
            key=name,
            limiter=self._label,
            retry_after=retry_after,
            reason=reason,
            request=request,
            problem=self._verdict.problem,
            report=call.report,
        )
        self._env.emit(
            RateLimited(
                limiter=self._label, key=name, outcome="rejected", wait=retry_after, reason=reason
            ),
            call,
        )
        return Outcome(request, self._verdict, error=error)

    def _key_failed(self, request: httpx.Request, exc: Exception) -> Outcome:
        # The exception's text stays in the chained cause: a key function may read
        # headers, and a typed error's message is logged and traced.
        names = [_function_name(f) for f in (self._match, self._key) if f is not None]
        error = ConfigurationError(
            f"RateLimiter: the match or key function ({', '.join(names)}) raised "
            f"{type(exc).__name__}"
        )
        error.__cause__ = exc
        error._request = request
        return Outcome(request, self._key_verdict, error=error)
