"""The pipeline: layers around an innermost step that sends and classifies.

``ResilientTransport`` hands each request to :meth:`Pipeline.handle`, which runs
the bound layers outermost first. Each layer is an async middleware
``handler(request, call, call_next) -> Outcome``; the innermost step sends the
request with the inner transport, reads the body when the classifier needs it,
and asks the classifier for exactly one :class:`Verdict` per attempt. What comes
out of the top is returned (ACCEPT, SPLIT) or raised as a typed error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs
import httpx

from . import errors
from ._classifier import HTTP_CLASSIFIER, Classifier, classify_error, resolve_classifier
from ._clock import SYSTEM_CLOCK, Clock
from ._events import Event
from ._report import CallReport
from ._verdict import Action, Verdict

__all__ = ["Call", "CallNext", "Handler", "Layer", "Outcome", "Pipeline", "PipelineEnv"]

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

    async def read_view(self) -> httpx.Response | None:
        """A read copy of the response, reading it now if nobody did."""
        if self.view is None and self.response is not None:
            try:
                self.view = await buffer_response(self.response, self.request)
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
    shared: dict[str, Any] = attrs.field(factory=dict)
    """Runtime state layers share (the retry budget, the breaker registry)."""
    instrument: Any = None
    """The telemetry instrumentation, or ``None`` when telemetry is off."""

    @property
    def vendor(self) -> str:
        """The classifier's vendor name (``"http"`` for the generic one)."""
        return str(getattr(self.classifier, "vendor", type(self.classifier).__name__))

    def emit(self, event: Event, call: Call | None = None) -> None:
        """Hand ``event`` to every hook and to telemetry; never raises."""
        if self.instrument is not None:
            try:
                self.instrument.on_event(event, call)
            except Exception:  # pragma: no cover - defensive
                logger.exception("resilience telemetry failed on %s", type(event).__name__)
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("resilience hook %r raised on %s", hook, type(event).__name__)


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
    trace: Any = None
    """Telemetry state of this call, when telemetry records."""

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

        A classifier that raises or returns something else is logged (by name)
        and the generic status-code reading is used instead.
        """
        classifier = self.env.classifier
        try:
            verdict = classifier.classify(request, response, error)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"classify() returned {type(verdict).__name__}, not a Verdict")
        except Exception as exc:
            logger.warning(
                "resilience classifier %r raised %s: %s; using the status-code reading",
                getattr(classifier, "vendor", type(classifier).__name__),
                type(exc).__name__,
                exc,
            )
            verdict = HTTP_CLASSIFIER.classify(request, response, error)
        self.report.verdicts.append(verdict)
        return verdict

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


async def aclose_quietly(response: httpx.Response) -> None:
    """Close a response, shielded from cancellation, ignoring transport errors."""
    if isinstance(response.stream, httpx.ByteStream):
        # A buffered body: closing it never waits, so no (costly) shielded scope.
        await response.aclose()
        return
    with anyio.CancelScope(shield=True):
        try:
            await response.aclose()
        except Exception:  # pragma: no cover - a transport failing to close
            logger.debug("resilience: closing a discarded response failed", exc_info=True)


async def buffer_response(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """Read the whole body once; return a read copy, leave ``response`` re-readable.

    ``response`` keeps its headers and extensions and gets a stream over the raw
    bytes, so the client reads (and decodes) it as if nothing happened; the copy is
    what a classifier or an error's ``.response`` looks at.
    """
    stream = response.stream
    if isinstance(stream, httpx.ByteStream):
        # Already in memory (mock and ASGI transports, a buffered replay): no I/O,
        # no connection to release, and nothing to replace.
        raw = b"".join(stream)
    else:
        chunks: list[bytes] = []
        try:
            async for chunk in stream:  # type: ignore[union-attr]
                chunks.append(chunk)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[union-attr]
        raw = b"".join(chunks)
        response.stream = httpx.ByteStream(raw)
    view = httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        request=request,
        extensions=response.extensions,
    )
    if _IDENTITY_SHORTCUT and "content-encoding" not in response.headers:
        # Nothing to decode: the raw bytes are the content. httpx's read() would spend
        # ~6 µs on decoders and chunkers to arrive at the same bytes.
        view._content = raw
        return view
    try:
        view.read()  # in memory: the sync read decodes without async-generator overhead
    except httpx.DecodingError:
        if response.status_code < 400 or not _IDENTITY_SHORTCUT:
            raise
        # An error page that does not decode (a proxy's HTML under a gzip header):
        # the whole body arrived, so the status still says what happened. The view
        # holds the raw bytes, which a classifier reads as a body it cannot parse.
        view._content = raw
    return view


def _identity_shortcut_works() -> bool:
    """Whether setting a response's content directly is what httpx's read() gives.

    Checked once at import, so a future httpx that stores content differently makes
    :func:`buffer_response` fall back to ``read()`` instead of misbehaving.
    """
    try:
        probe = httpx.Response(200, stream=httpx.ByteStream(b"{}"))
        probe._content = b'{"ok": 1}'
        return probe.content == b'{"ok": 1}' and probe.json() == {"ok": 1}
    except Exception:  # pragma: no cover - a different httpx
        return False


_IDENTITY_SHORTCUT = _identity_shortcut_works()


class Pipeline:
    """Layers, a classifier and a clock, bound into one runtime.

    Args:
        layers: outermost first.
        classifier: an entry-point name (``"http"``, ``"tellus"``, ...) or any
            :class:`Classifier`.
        clock: where time comes from (default: the real clock).
        raise_on_failure: when ``False``, a failed call returns its final response
            (with the report) instead of raising; calls with no response still raise.
        hooks: callables that receive every event (retries, breaker changes, ...).
        telemetry: ``False`` switches OpenTelemetry off entirely.
        tracer_provider: the OpenTelemetry tracer provider (default: the global one,
            resolved lazily).
        meter_provider: the OpenTelemetry meter provider (default: the global one).
    """

    def __init__(
        self,
        layers: Sequence[Any] = (),
        *,
        classifier: str | Classifier = "http",
        clock: Clock | None = None,
        raise_on_failure: bool = True,
        hooks: Sequence[Callable[[Event], object]] = (),
        telemetry: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise errors.ConfigurationError(
                f"layers must be a sequence of layers, got {type(layers).__name__}"
            )
        for index, layer in enumerate(layers):
            if not callable(getattr(layer, "bind", None)):
                raise errors.ConfigurationError(
                    f"layers[{index}] ({type(layer).__name__}) is not a layer: it has no bind()"
                )
        if clock is not None and not isinstance(clock, Clock):
            raise errors.ConfigurationError(
                f"clock must have now() and async sleep(), got {type(clock).__name__}"
            )
        self.layers: tuple[Any, ...] = tuple(layers)
        self.classifier: Classifier = resolve_classifier(classifier)
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.raise_on_failure = raise_on_failure
        instrument = None
        if telemetry:
            from ._telemetry import make_instrumentation

            instrument = make_instrumentation(
                vendor=str(getattr(self.classifier, "vendor", "http")),
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
            )
        self.env = PipelineEnv(
            clock=self.clock, classifier=self.classifier, hooks=tuple(hooks), instrument=instrument
        )
        self._needs_body: bool = bool(getattr(self.classifier, "needs_body", True))
        self._chain: CallNext = self._build_chain()

    def _build_chain(self) -> CallNext:
        call_next: CallNext = self._send
        # Bind innermost first, so an outer layer can find what an inner one shares.
        for layer in reversed(self.layers):
            call_next = _link(layer.bind(self.env), call_next)
        return call_next

    def __repr__(self) -> str:
        names = ", ".join(type(layer).__name__ for layer in self.layers)
        return f"Pipeline([{names}], classifier={self.env.vendor!r})"

    async def handle(
        self, request: httpx.Request, inner: httpx.AsyncBaseTransport
    ) -> httpx.Response:
        """Run one logical call through the layers; return the response or raise."""
        call = Call(self.env, inner, request)
        instrument = self.env.instrument
        # records() is a cheap check: with no OpenTelemetry SDK nothing records,
        # and the call takes the same path as with telemetry off.
        if instrument is not None and instrument.records():
            return await instrument.run_call(call, self._run)  # type: ignore[no-any-return]
        outcome = await self._chain(request, call)
        if outcome.response is None and isinstance(outcome.error, errors.ResilienceError):
            # A layer's own error with nothing to release (an open breaker): raise it
            # here, without another coroutine frame on the fast-fail path.
            error = outcome.error
            del outcome
            try:
                raise _with_call(error, call)
            finally:
                del error  # see _finish: no frame -> error -> traceback -> frame cycle
        return await self._finish(call, outcome)

    async def _run(self, call: Call) -> httpx.Response:
        outcome = await self._chain(call.request, call)
        return await self._finish(call, outcome)

    async def _send(self, request: httpx.Request, call: Call) -> Outcome:
        """The innermost step: one attempt over the network, classified once."""
        call.report.attempts += 1
        if call.trace is not None:  # set by the instrumentation when it records
            return await self.env.instrument.run_attempt(call, request, self._attempt)  # type: ignore[no-any-return]
        return await self._attempt(request, call)

    async def _attempt(self, request: httpx.Request, call: Call) -> Outcome:
        limit = call.attempt_timeout
        if limit is None:
            return await self._attempt_once(request, call)
        with anyio.move_on_after(limit):
            return await self._attempt_once(request, call)
        error = httpx.TimeoutException(f"attempt timed out after {limit:g}s", request=request)
        return call.classify_unfinished(request, error)

    async def _attempt_once(self, request: httpx.Request, call: Call) -> Outcome:
        try:
            response = await call.inner.handle_async_request(request)
        except Exception as exc:
            return Outcome(request, call.classify(request, None, exc), error=exc)
        view: httpx.Response | None = None
        if self._needs_body or response.status_code >= 400:
            try:
                view = await buffer_response(response, request)
            except Exception as exc:
                await aclose_quietly(response)
                return Outcome(request, call.classify(request, None, exc), error=exc)
            except BaseException:
                await aclose_quietly(response)
                raise
        verdict = call.classify(request, view if view is not None else response, None)
        return Outcome(request, verdict, response=response, view=view)

    async def _finish(self, call: Call, outcome: Outcome) -> httpx.Response:
        """Turn what came out of the top into a response or a typed error."""
        report = call.report
        action = outcome.verdict.action
        response = outcome.response
        if response is not None and (action is Action.ACCEPT or action is Action.SPLIT):
            response.extensions["resilience"] = report
            return response
        error = outcome.error
        # The raised error's traceback holds this frame and the callers'; a local in
        # any of them still pointing at the error (directly or through the outcome)
        # would make a reference cycle, and the error, its response and its report
        # would wait for the garbage collector. So the spent outcome lets go of it.
        if isinstance(error, errors.ResilienceError):
            if response is not None and response is not error.response:
                await outcome.aclose()  # the error does not hand it on: release it
            if error.response is not None:
                error.response.request = call.request
            outcome.error = None
            del outcome
            try:
                raise _with_call(error, call)
            finally:
                del error
        if response is not None and not self.raise_on_failure:
            response.extensions["resilience"] = report
            return response
        view = await outcome.read_view()
        await outcome.aclose()
        if view is not None:
            view.extensions = {**view.extensions, "resilience": report}
            # The caller's request, as httpx's client gives a response: the one
            # sent may be a layer's copy carrying a token (an API key header
            # shows in a repr).
            view.request = call.request
        verdict = outcome.verdict
        del outcome
        raise _error_for(call, verdict, view) from error


def _with_call(error: errors.ResilienceError, call: Call) -> errors.ResilienceError:
    """``error`` with the call's report, and the caller's request when it had none."""
    error.report = call.report
    if error._request is None:
        error._request = call.request
    return error


def _error_for(call: Call, verdict: Verdict, view: httpx.Response | None) -> errors.ResilienceError:
    problem = verdict.problem
    kind: type[errors.ResilienceError]
    extra: str | None = None
    if verdict.action is Action.RETRY:
        kind = errors.RetriesExhausted
        extra = f"{call.report.attempts} attempt(s)"
        if call.report.gave_up:
            extra += f", gave up: {call.report.gave_up}"
    elif verdict.action is Action.REFRESH_AUTH:
        kind = errors.AuthenticationError
        extra = "credentials rejected"
    else:
        kind = errors.PermanentError
    message = errors.describe_failure(kind.__name__, problem, extra)
    return kind(message, request=call.request, response=view, problem=problem, report=call.report)


def _link(handler: Handler, call_next: CallNext) -> CallNext:
    # Not a coroutine function: it hands back the handler's own awaitable, so each
    # layer costs one coroutine per call, not two.
    def step(request: httpx.Request, call: Call) -> Awaitable[Outcome]:
        return handler(request, call, call_next)

    return step
