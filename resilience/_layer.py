"""The layer contract: what a layer is given, what it hands back, what it shares.

Where it sits in the flow: a layer is configuration whose ``bind(env)`` returns a
handler; the engine (``_pipeline.py``) binds the layers once, chains the handlers
outermost first and ends the chain with its own step that sends one attempt and
classifies it. Each handler gets the request, the :class:`Call` (one logical call
in flight: report, deadline, telemetry state) and ``call_next``, and hands back
an :class:`Outcome` that travels up. :class:`PipelineEnv` is the pipeline as its
layers see it: clock, classifier, hooks, telemetry, and the runtime state layers
share (the retry budget, the breaker registries), in typed fields.

Every layer module and the engine import this module; it imports no layer, no
engine and no telemetry. The protocols at the end are how one part reaches
another without importing it: telemetry provides an :class:`Instrument`,
``Retry`` the :class:`RetryBudgetState`, ``CircuitBreaker`` a
:class:`BreakerRegistry`, ``ConcurrencyLimit`` a :class:`ConcurrencyState`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import httpx

from ._bodies import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ERROR_BODY_BYTES,
    aclose_quietly,
    buffer_response,
)
from ._classifier import Classifier, classify_error, fallback_verdict, raised_fault
from ._clock import Clock
from ._report import CallReport
from ._verdict import ACCEPT, Action, Verdict, verdict_fault

if TYPE_CHECKING:
    # Annotations only: the event classes load with the first layer that emits one.
    from ._events import Event

__all__ = [
    "BreakerRegistry",
    "Call",
    "CallNext",
    "CallTrace",
    "ConcurrencyState",
    "Handler",
    "Instrument",
    "Layer",
    "Outcome",
    "PipelineEnv",
    "PipelineLike",
    "RetryBudgetState",
    "well_formed",
]

logger = logging.getLogger("resilience")


@attrs.define(eq=False, slots=True)
class Outcome:
    """The result of an attempt (or of a layer's work), travelling up the pipeline."""

    request: httpx.Request
    """The request that was sent (or would have been)."""
    verdict: Verdict
    """What the classifier (or a layer) decided."""
    response: httpx.Response | None = None
    """The response to hand to the caller, unread (its body is buffered when read)."""
    error: BaseException | None = None
    """The exception of the attempt, or an error a layer produced instead of sending."""
    view: httpx.Response | None = None
    """A read copy of ``response`` (what the classifier saw), when the body was read."""

    async def aclose(self) -> None:
        """Release the response's connection (safe to call more than once)."""
        if self.response is not None:
            await aclose_quietly(self.response)

    async def read_view(self, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> httpx.Response | None:
        """A read copy of the response, reading it now (at most ``max_bytes``) if nobody did."""
        if self.view is None and self.response is not None:
            try:
                self.view = await buffer_response(self.response, self.request, max_bytes)
            except Exception:
                await aclose_quietly(self.response)
                return None
        return self.view


CallNext = Callable[[httpx.Request, "Call"], Awaitable[Outcome]]
"""``await call_next(request, call)``: run the rest of the pipeline once."""
Handler = Callable[[httpx.Request, "Call", CallNext], Awaitable[Outcome]]
"""A bound layer: ``await handler(request, call, call_next)``."""


@runtime_checkable
class Layer(Protocol):
    """A pipeline layer: configuration that binds into a handler.

    ``bind`` is called once when the :class:`Pipeline` is built; runtime state
    (windows, caches, budgets) belongs to the handler it returns, so one layer
    configuration can serve many pipelines independently.
    """

    def bind(self, env: PipelineEnv) -> Handler: ...


@attrs.define(eq=False, kw_only=True)
class PipelineEnv:
    """What layers can see of the pipeline they are bound into."""

    clock: Clock
    """The pipeline's clock: every wait and deadline goes through it."""
    classifier: Classifier
    """The pipeline's classifier."""
    hooks: tuple[Callable[[Event], object], ...] = ()
    """Callables that receive every event."""
    instrument: Instrument | None = None
    """The telemetry instrumentation, or ``None`` when telemetry is off."""
    budget: RetryBudgetState | None = None
    """The pipeline's retry budget: made by the first ``Retry`` bound (the
    innermost) and drawn on by every layer that sends again (Retry, Hedge, the
    splitter); ``None`` when no Retry keeps one."""
    breakers: list[BreakerRegistry] = attrs.field(factory=list)
    """The registries of the ``CircuitBreaker`` layers, innermost first (so an outer
    layer's ``breakers[0]`` is the breaker nearest the network):
    :meth:`CircuitRegistry.of <resilience.CircuitRegistry.of>` finds them."""
    concurrency_limits: list[ConcurrencyState] = attrs.field(factory=list)
    """The bound ``ConcurrencyLimit`` layers, innermost first, for health checks."""
    rate_limiters: list[Handler] = attrs.field(factory=list)
    """The bound ``RateLimiter`` layers, innermost first."""
    name: str = attrs.field(
        default=attrs.Factory(
            lambda env: str(getattr(env.classifier, "vendor", "http")), takes_self=True
        )
    )
    """The pipeline's name (``Pipeline(name=...)``; by default the vendor's): on
    every span, metric point and log record of its calls."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """The most of a success body read to classify it (see :class:`Pipeline`)."""
    max_error_body_bytes: int = DEFAULT_MAX_ERROR_BODY_BYTES
    """The most of an error body read (see :class:`Pipeline`)."""
    _warned_hooks: set[int] = attrs.field(factory=set, init=False, repr=False)

    @property
    def vendor(self) -> str:
        """The classifier's vendor name (``"http"`` for the generic one)."""
        return str(getattr(self.classifier, "vendor", type(self.classifier).__name__))

    def body_limit(self, status: int) -> int:
        """The most of a body with this status the pipeline reads."""
        return self.max_error_body_bytes if status >= 400 else self.max_body_bytes

    def emit(self, event: Event, call: Call | None = None) -> None:
        """Hand ``event`` to every hook and to telemetry; never raises."""
        if self.instrument is not None:
            try:
                self.instrument.on_event(event, call)
            except Exception:  # pragma: no cover - defensive
                logger.exception("resilience telemetry failed on %s", type(event).__name__)
        for hook in self.hooks:
            try:
                result = hook(event)
                if result is not None and inspect.isawaitable(result):
                    self._unawaited(hook, result)
            except Exception:
                logger.exception("resilience hook %r raised on %s", hook, type(event).__name__)

    def _unawaited(self, hook: Callable[[Event], object], result: Awaitable[Any]) -> None:
        """A hook handed back an awaitable: hooks are called, never awaited.

        An async hook is refused when the pipeline is built; one that slips through
        (a sync wrapper returning a coroutine) has its coroutine closed, so it neither
        runs half-way nor warns that it was never awaited. A task or future is left
        alone: it was scheduled by the hook and runs on its own.
        """
        close = getattr(result, "close", None)
        if inspect.iscoroutine(result) and callable(close):
            close()
        if id(hook) not in self._warned_hooks:
            self._warned_hooks.add(id(hook))
            logger.warning(
                "resilience hook %r returned an awaitable: hooks are called synchronously "
                "and it was not awaited (pass a plain function)",
                hook,
            )


@attrs.define(eq=False, slots=True)
class Call:
    """One logical call in flight: its report, deadline, and pipeline."""

    env: PipelineEnv
    """The pipeline the call runs in."""
    inner: httpx.AsyncBaseTransport
    """The transport that sends attempts over the network."""
    request: httpx.Request
    """The caller's original request."""
    report: CallReport = attrs.field(factory=CallReport)
    """What has happened so far."""
    deadline: float | None = None
    """Clock time by which the whole call must end (set by ``Timeout(total=...)``)."""
    attempt_timeout: float | None = None
    """Seconds one attempt may take (set by ``Timeout(attempt=...)``)."""
    total_timeout: float | None = None
    """The ``Timeout(total=...)`` that set :attr:`deadline`, for messages."""
    cutoff: float | None = None
    """When that total timeout ends in real time (:func:`time.monotonic`): the
    engine cuts attempts there, and the layers' own waits end by it, whatever
    the pipeline's clock says (a virtual clock's time passes without any)."""
    trace: CallTrace | None = None
    """Telemetry state of this call, when telemetry records (layers only ask
    whether there is one: ``call.trace is not None``)."""

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` when there is none."""
        if self.deadline is None:
            return None
        return self.deadline - self.env.clock.now()

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        """Ask the classifier about one attempt and record the verdict.

        A classifier that raises or returns something else (or a malformed
        :class:`Verdict`: a ``problem`` that is no :class:`Problem`, a
        ``breaker_failure`` that is no bool) is logged (by name) and the generic
        status-code reading is used instead.
        """
        env = self.env
        try:
            verdict = env.classifier.classify(request, response, error)
        except Exception as exc:
            verdict = fallback_verdict(
                raised_fault(exc), response, error, vendor=env.vendor, fallback_vendor="http"
            )
        else:
            # The shared ACCEPT (what most classifiers answer a success with) is known
            # sound; anything else is checked, and a fault logged and replaced.
            if verdict is not ACCEPT:
                fault = verdict_fault(verdict)
                if fault is not None:
                    verdict = fallback_verdict(
                        fault, response, error, vendor=env.vendor, fallback_vendor="http"
                    )
        self.report.verdicts.append(verdict)
        return verdict

    def classify_local(self, request: httpx.Request, error: BaseException) -> Outcome:
        """Classify an attempt that never reached a connection (it queued in the pool).

        The classifier reads ``error`` (an ``httpx.PoolTimeout``) as usual, but the
        wait was ours, not the backend's: the verdict is never a breaker failure.
        """
        verdict = self.classify(request, None, error)
        if verdict.breaker_failure:
            verdict = attrs.evolve(verdict, breaker_failure=False)
            self.report.verdicts[-1] = verdict
        return Outcome(request, verdict, error=error)

    def classify_unfinished(self, request: httpx.Request, error: BaseException) -> Outcome:
        """Classify an attempt that was cut short (a timeout) if nobody did yet.

        When every attempt already has its verdict (the time ran out during a
        backoff sleep), the classifier is not asked again: each attempt is
        classified exactly once. The call then ends on the last attempt's RETRY
        verdict, whose problem (status, code, request id) says more than the
        timeout does; without one, on the generic reading of ``error``.
        """
        report = self.report
        verdicts = report.verdicts
        if len(verdicts) < report.attempts:
            verdict = self.classify(request, None, error)
        elif verdicts and verdicts[-1].action is Action.RETRY:
            verdict = verdicts[-1]
        else:
            verdict = classify_error(self.env.vendor, error)
        return Outcome(request, verdict, error=error)


def well_formed(verdict: object) -> bool:
    """Whether ``verdict`` is a :class:`Verdict` every layer can read without failing."""
    return verdict_fault(verdict) is None


# --- what one part provides another, without importing it ----------------------------


class CallTrace(Protocol):
    """Telemetry's state of one recorded call (``call.trace``).

    Opaque to layers: they only ask whether a call records (``call.trace is not
    None``) before they pay for something only telemetry needs.
    """


class Instrument(Protocol):
    """What telemetry provides a pipeline (``env.instrument``).

    The engine asks :meth:`records` before each call and, when it does, runs the
    call inside :meth:`run_call` and each attempt inside :meth:`run_attempt` (the
    start and end of the call's and the attempt's spans and metrics);
    :meth:`PipelineEnv.emit` hands it every event; ``AuthRefresh`` registers
    each token it attaches (:meth:`withhold`) and wraps each fetch
    (:meth:`token_refresh`). None of these may break a call.
    """

    def records(self) -> bool:
        """Whether a call started now would record anything (cheap)."""
        ...

    async def run_call(
        self, call: Call, fn: Callable[[Call], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        """Run ``fn(call)``, the whole call, as one recorded call (``call.trace`` set)."""
        ...

    async def run_attempt(self, call: Call, request: httpx.Request, fn: CallNext) -> Outcome:
        """Run ``fn(request, call)``, one attempt (send and classify), recorded."""
        ...

    def on_event(self, event: Event, call: Call | None = None) -> None:
        """Record a layer's event (in ``call``, when there is one)."""
        ...

    def withhold(self, call: Call, secret: str) -> None:
        """Never record ``secret`` (nor a text quoting it) for the rest of ``call``."""
        ...

    def token_refresh(self, call: Call | None, trigger: str) -> AbstractContextManager[None]:
        """A context manager around one token fetch (``trigger``: why it ran)."""
        ...


class PipelineLike(Protocol):
    """A built pipeline, as a layer module names it without importing the engine:
    anything with the :class:`PipelineEnv` its layers were bound into."""

    @property
    def env(self) -> PipelineEnv:
        """What its layers see."""
        ...


class RetryBudgetState(Protocol):
    """A pipeline's retry budget at run time (``env.budget``, a
    ``_backoff.BudgetWindow``): the calls and retries of the last second."""

    def deposit(self) -> None:
        """A logical call started: it counts towards the retries allowed."""
        ...

    def allows(self, now: float) -> bool:
        """Whether a retry may go now (asking takes nothing)."""
        ...

    def try_withdraw(self, now: float) -> bool:
        """Take one retry; ``False`` when the budget is spent."""
        ...


class BreakerRegistry(Protocol):
    """The circuits of one breaker layer by key (``env.breakers``), as other layers use
    them: the splitter keeps a circuit per part (``"<vendor>:<part>"``) in the
    innermost one, and ``Retry`` asks whether a retry would be refused."""

    @property
    def config(self) -> object:
        """The breaker layer (configuration) the registry belongs to."""
        ...

    def allow(self, key: str) -> float | None:
        """``None`` when a call for ``key`` may go (it took a slot), else the seconds
        until the circuit half-opens."""
        ...

    def record(self, key: str, verdict: Verdict, *, duration: float | None = None) -> None:
        """Count the outcome of a call :meth:`allow` let through."""
        ...

    def release(self, key: str) -> None:
        """Give back the slot of a call :meth:`allow` let through, counting nothing."""
        ...

    def blocked_for(self, request: httpx.Request) -> float:
        """Seconds before a call for ``request`` would be let through (0: now)."""
        ...


class ConcurrencyState(Protocol):
    """A bound concurrency limit (``env.concurrency_limits``), read by health checks."""

    def in_flight(self, key: str) -> int:
        """Calls holding a slot for ``key``."""
        ...

    def queued(self, key: str) -> int:
        """Calls waiting for a slot for ``key``."""
        ...

    def keys(self) -> int:
        """How many keys the limit holds state for."""
        ...
