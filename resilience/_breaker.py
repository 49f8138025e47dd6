"""The CircuitBreaker layer: stop calling a backend that keeps failing.

It sits below Retry (so every attempt is counted, and an open breaker is final for
the call) and above AuthRefresh. Each request maps to a key (by default
``scheme://host:port``, :func:`host_key`); the layer's :class:`CircuitRegistry`
(``_circuit.py``, with the circuits, their windows and states) holds one
:class:`Circuit` per key. This module holds the configuration, the key function,
the bound handler that admits, rejects and settles each call, and the
:class:`~resilience.errors.CircuitOpenError` a rejected call gets (nothing is
sent, and the call still passes a checkpoint).

What counts comes from the verdict: ``breaker_failure`` (RETRY by default) is a
failure, ACCEPT and SPLIT are successes, anything else counts neither way. The
registry is also shared with the PartialFailureSplitter and Retry through
``env.breakers``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from math import ceil as _ceil
from math import inf as _INF
from typing import Any

import attrs
import httpx

from . import _validate as v
from ._circuit import (
    _CLOSED,
    _COUNTED,
    MAX_WINDOW_CALLS,
    MIN_WINDOW,
    Circuit,
    CircuitRegistry,
    _counted,
)
from ._clock import checkpoint as _checkpoint
from ._http import DEFAULT_PORTS as _DEFAULT_PORTS
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._report import CallReport
from ._verdict import Action, Problem, Verdict
from .errors import CircuitOpenError, ConfigurationError, ResilienceError

__all__ = ["CircuitBreaker", "host_key"]

logger = logging.getLogger("resilience")


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


_ACCEPT = Action.ACCEPT

KeyFunction = Callable[[httpx.Request], str | None]
"""Maps a request to its breaker key; ``None`` lets the request bypass the breaker."""


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


def _breaker_store_ok(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not callable(getattr(value, "breaker_record", None)):
        raise ConfigurationError(
            "CircuitBreaker: store must be a RedisStore (a store with breaker_record) "
            f"or None, got {type(value).__name__}"
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

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

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

    store: Any = attrs.field(default=None, validator=_breaker_store_ok, repr=False)
    """A ``RedisStore`` sharing the circuits' state with every process that uses it
    (one process's failures open the circuit for all; one process probes for all;
    see ``docs/shared-state.md``). ``None`` (the default): this process's circuits
    alone, with no store step on any call."""

    def bind(self, env: PipelineEnv) -> _BreakerHandler:
        """Create this layer's registry in ``env`` and return its handler."""
        registry = CircuitRegistry(self, env)
        # Bound innermost first: env.breakers[0] is the innermost breaker's (the
        # splitter records its per-part outcomes there); each is found by its layer.
        env.breakers.append(registry)
        if self.store is not None:
            from ._shared_breaker import StoreBreakerHandler

            return StoreBreakerHandler(self, env, registry)
        return _BreakerHandler(self, env, registry)


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
        verdict = outcome.verdict
        if (
            error is None
            and verdict.action is _ACCEPT
            and not verdict.breaker_failure
            and not self._timed
            and circuit._state is _CLOSED
            and circuit._gen == gen
            and self._circuits.get(key) is circuit
        ):
            # The common case, inline: a success of a closed circuit (what _settle,
            # _complete and _counted come to for it).
            circuit._count(_COUNTED, call)
            circuit._run = 0
            return outcome
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
