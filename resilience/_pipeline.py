"""The engine: layers bound around an innermost step that sends and classifies.

Where it sits in the flow: ``ResilientTransport`` (and ``AsyncClient``) hand each
request to :meth:`Pipeline.handle`, which runs the bound layers outermost first
(the contract they follow is in ``_layer.py``). The innermost step sends one
attempt with the inner transport, reads the body when the classifier needs it
(bounded: ``_bodies.py``), and asks the classifier for exactly one
:class:`Verdict` per attempt. What comes out of the top is returned (ACCEPT,
SPLIT) or raised as a typed error (``errors.py`` words it). With telemetry on,
the call and each attempt run inside the pipeline's :class:`Instrument`
(``_telemetry.py``, imported when the first pipeline with telemetry is built).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import httpx

from . import errors
from ._bodies import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ERROR_BODY_BYTES,
    aclose_quietly,
    buffer_response,
)
from ._classifier import Classifier
from ._clock import Clock, SystemClock, default_clock, scope_after
from ._layer import Call, CallNext, Handler, Instrument, Layer, Outcome, PipelineEnv
from ._loader import resolve_classifier
from ._order import check_layer_order
from ._report import GaveUp
from ._telemetry_names import CALL_CODES, CURRENT_PIPELINE, check_known_methods, check_name
from ._timeout import _TimeoutHandler
from ._verdict import ACCEPT, Action, Verdict
from ._watchdog import arm

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._events import Event

__all__ = ["Pipeline"]

#: Attempts a transport may send without reporting a connection before the
#: engine stops watching its attempts for pool waits (``Pipeline._watch_pool``).
_SILENT_AFTER = 64
_ACCEPT = Action.ACCEPT
_SPLIT = Action.SPLIT


class Pipeline:
    """Layers, a classifier and a clock, bound into one runtime.

    Args:
        layers: outermost first.
        classifier: an entry-point name (``"http"``, ``"tellus"``, ...) or any
            :class:`Classifier`.
        clock: where time comes from (default: the real clock, or the virtual one
            a test switched on: :func:`resilience.testing.virtual_time`).
        raise_on_failure: when ``False``, a failed call returns its final response
            (with the report) instead of raising; calls with no response still raise.
        hooks: callables that receive every event (retries, breaker changes, ...),
            or a single one. Hooks are called synchronously: an ``async def`` hook
            is refused (``ConfigurationError``).
        max_body_bytes: the most of a success body (2xx/3xx) a classifier that
            reads them (``needs_body``) is shown, decoded (default 16 MiB). A longer
            body still reaches the caller whole; the classifier sees its first
            ``max_body_bytes``, marked ``extensions["resilience.body_truncated"]``.
        max_error_body_bytes: the most of an error body (status >= 400) that is
            read and decoded (default 1 MiB); the classifier and the error's
            ``.response`` see only that much.
        telemetry: ``False`` switches OpenTelemetry off entirely.
        tracer_provider: the OpenTelemetry tracer provider (default: the global one,
            resolved lazily).
        meter_provider: the OpenTelemetry meter provider (default: the global one).
        name: the pipeline's name (default: the classifier's vendor name, e.g.
            ``"http"``, ``"tellus"``), on every span (``resilience.pipeline``),
            metric point and log record (``record.resilience_pipeline``) of its
            calls, so that two pipelines for one vendor can be told apart. A
            non-empty printable string.
        known_methods: the HTTP methods telemetry records as themselves; any other
            is ``_OTHER`` (default: those ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``
            names, else the conventions' ten).
    """

    def __init__(
        self,
        layers: Sequence[Layer] = (),
        *,
        classifier: str | Classifier = "http",
        clock: Clock | None = None,
        raise_on_failure: bool = True,
        hooks: Sequence[Callable[[Event], object]] | Callable[[Event], object] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_error_body_bytes: int = DEFAULT_MAX_ERROR_BODY_BYTES,
        telemetry: bool = True,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        name: str | None = None,
        known_methods: Iterable[str] | None = None,
    ) -> None:
        checked_name = None if name is None else check_name(name)
        methods = None if known_methods is None else check_known_methods(known_methods)
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise errors.ConfigurationError(
                f"layers must be a sequence of layers, got {type(layers).__name__}"
            )
        for index, layer in enumerate(layers):
            if not callable(getattr(layer, "bind", None)):
                raise errors.ConfigurationError(
                    f"layers[{index}] ({type(layer).__name__}) is not a layer: it has no bind()"
                )
        check_layer_order(layers)
        if clock is not None and not isinstance(clock, Clock):
            raise errors.ConfigurationError(
                f"clock must have now() and async sleep(), got {type(clock).__name__}"
            )
        checked_hooks = _checked_hooks(hooks)
        for name, limit in (
            ("max_body_bytes", max_body_bytes),
            ("max_error_body_bytes", max_error_body_bytes),
        ):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise errors.ConfigurationError(
                    f"{name} must be a positive integer (bytes), got {limit!r}"
                )
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.classifier: Classifier = resolve_classifier(classifier)
        self.clock: Clock = clock if clock is not None else default_clock()
        self._real_clock = type(self.clock) is SystemClock
        self.raise_on_failure = raise_on_failure
        instrument: Instrument | None = None
        if telemetry:
            # Imported here: OpenTelemetry is not loaded for a pipeline without it.
            from ._telemetry import Instrumentation

            instrument = Instrumentation(
                vendor=str(getattr(self.classifier, "vendor", "http")),
                name=checked_name,
                known_methods=methods,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
            )
        self.env = PipelineEnv(
            clock=self.clock,
            classifier=self.classifier,
            hooks=checked_hooks,
            instrument=instrument,
            max_body_bytes=max_body_bytes,
            max_error_body_bytes=max_error_body_bytes,
        )
        if checked_name is not None:
            self.env.name = checked_name
        self.name: str = self.env.name
        self._needs_body: bool = bool(getattr(self.classifier, "needs_body", True))
        # The generic classifier as it comes accepts every answer below 400 (see
        # _classify_unread): it says so itself.
        self._generic = getattr(self.classifier, "_accepts_below_400", False) is True
        # Whether a layer may run work in tasks of its own (see handle).
        self._in_tasks = not all(
            getattr(type(layer), "_in_caller_task", False) is True for layer in self.layers
        )
        self._max_body = max_body_bytes
        self._max_error_body = max_error_body_bytes
        # Inner transports seen reporting connection progress through the "trace"
        # extension: for those, an attempt cut before any report was queueing here.
        self._tracing: weakref.WeakSet[httpx.AsyncBaseTransport] = weakref.WeakSet()
        self._quiet: weakref.ref[httpx.AsyncBaseTransport] | None = None
        # Attempts of other transports that reported nothing (see _watch_pool).
        self._silent: weakref.WeakKeyDictionary[httpx.AsyncBaseTransport, int] = (
            weakref.WeakKeyDictionary()
        )
        # Timeout layers the engine keeps itself (_build_chain): the outermost
        # total, and the nearest attempt limit.
        self._total: float | None = None
        self._attempt_limit: float | None = None
        # The outermost handler and what it calls next (None: no layer is linked).
        self._top: Handler | None = None
        self._top_next: CallNext = self._send
        self._chain: CallNext = self._build_chain()

    def _build_chain(self) -> CallNext:
        call_next: CallNext = self._send
        # Whether every layer below the one being bound ends its waits by the call's
        # deadline: a Timeout(total=...) above only such layers needs no cancel
        # scope of its own, as the engine cuts each attempt at the deadline.
        aware = True
        # Bind innermost first, so an outer layer can find what an inner one shares.
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            handler = layer.bind(self.env)
            if isinstance(handler, _TimeoutHandler):
                if handler.total is None:
                    # An attempt limit bounds every attempt, wherever it sits (all
                    # are sent below it): the engine keeps it, with no frame of its own.
                    self._attempt_limit = _nearer(self._attempt_limit, handler.attempt)
                    continue
                if aware:
                    handler.scoped = False
                    if index == 0:
                        # The outermost deadline: the engine sets it as the call starts.
                        self._total = handler.total
                        self._attempt_limit = _nearer(self._attempt_limit, handler.attempt)
                        continue
            aware = aware and getattr(type(layer), "_deadline_aware", False) is True
            self._top, self._top_next = handler, call_next
            call_next = _link(handler, call_next)
        return call_next

    def __repr__(self) -> str:
        names = ", ".join(type(layer).__name__ for layer in self.layers)
        named = "" if self.name == self.env.vendor else f", name={self.name!r}"
        return f"Pipeline([{names}], classifier={self.env.vendor!r}{named})"

    async def handle(
        self, request: httpx.Request, inner: httpx.AsyncBaseTransport
    ) -> httpx.Response:
        """Run one logical call through the layers; return the response or raise."""
        call = Call(self.env, inner, request)
        total = self._total
        if total is not None:
            cutoff = call.cutoff = _monotonic() + total
            # The real clock is monotonic() itself: one reading serves both.
            call.deadline = cutoff if self._real_clock else self.clock.now() + total
            call.total_timeout = total
        # Every copy a layer makes carries it, so a classifier reads the call's
        # history here (report_of(request)) instead of keeping any of its own.
        extensions = request.extensions
        outer = extensions.get("resilience")
        extensions["resilience"] = call.report
        instrument = self.env.instrument
        # The name the library's log records of this call carry (_telemetry_names).
        # A call's own task finds it on the stack (CALL_CODES); only a pipeline with
        # a layer that may run work in other tasks (Hedge, a layer of your own)
        # puts the name in the context, for those tasks to inherit. (Set only when
        # it changes: a nested call of the same pipeline costs nothing.)
        named = (
            None
            if not self._in_tasks or CURRENT_PIPELINE.get() == self.name
            else CURRENT_PIPELINE.set(self.name)
        )
        try:
            # records() is a cheap check: with no OpenTelemetry SDK nothing records,
            # and the call takes the same path as with telemetry off.
            if instrument is not None and instrument.records():
                return await instrument.run_call(call, self._run)
            top = self._top
            # The outermost handler is called as it is, not through its link.
            outcome = await (
                self._send(request, call) if top is None else top(request, call, self._top_next)
            )
            response = outcome.response
            if response is not None:
                action = outcome.verdict.action
                if action is _ACCEPT or action is _SPLIT:
                    # The success path, without another frame: what _finish does first.
                    response.extensions["resilience"] = call.report
                    return response
                del response
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
        finally:
            if named is not None:
                CURRENT_PIPELINE.reset(named)
            # The caller's request must not keep the report (and its problems)
            # alive after the call; an enclosing pipeline's report comes back.
            if outer is None:
                extensions.pop("resilience", None)
            else:
                extensions["resilience"] = outer

    async def _run(self, call: Call) -> httpx.Response:
        outcome = await self._chain(call.request, call)
        return await self._finish(call, outcome)

    def _send(self, request: httpx.Request, call: Call) -> Awaitable[Outcome]:
        """The innermost step: one attempt over the network, classified once.

        Not a coroutine function: it counts the attempt and hands back the
        attempt's own awaitable, so an attempt costs one coroutine, not two.
        """
        call.report.attempts += 1
        # call.trace is set by the instrumentation when it records.
        if call.trace is not None and self.env.instrument is not None:
            return self.env.instrument.run_attempt(call, request, self._attempt)
        return self._attempt(request, call)

    def _attempt(self, request: httpx.Request, call: Call) -> Awaitable[Outcome]:
        """One attempt, limited when a limit or a deadline applies (its awaitable)."""
        if (
            call.attempt_timeout is not None
            or call.cutoff is not None
            or self._attempt_limit is not None
        ):
            return self._attempt_limited(request, call)
        return self._attempt_once(request, call)

    async def _attempt_limited(self, request: httpx.Request, call: Call) -> Outcome:
        """One attempt, cut at the nearer of its own limit and the call's deadline.

        The Timeout layers only set ``call.attempt_timeout`` and the call's
        deadline (``call.cutoff`` in real time) or were folded into the engine:
        this is the one place an attempt is cut, by the loop's watchdog under
        asyncio (``_watchdog.py``), else by one anyio scope.
        """
        limit = call.attempt_timeout
        folded = self._attempt_limit
        if limit is None or (folded is not None and folded < limit):
            limit = folded
        cutoff = call.cutoff
        by_deadline = False
        if cutoff is not None:
            remaining = cutoff - _monotonic()
            if limit is None or remaining < limit:
                limit = remaining if remaining > 0.0 else 0.0
                by_deadline = True
        assert limit is not None
        inner = call.inner
        quiet = self._quiet
        progress = (
            None
            if (quiet is not None and quiet() is inner) or not self._watch_pool(inner)
            else _Progress(request.extensions)
        )
        watch = arm(limit)
        try:
            if watch is None:
                with scope_after(limit):
                    return await self._attempt_once(request, call)
            else:
                try:
                    # _attempt_once, inline: a frame less on every limited attempt.
                    try:
                        response = await inner.handle_async_request(request)
                    except Exception as exc:
                        outcome = self._failed(request, call, exc)
                    else:
                        status = response.status_code
                        if status >= 400 or self._needs_body:
                            outcome = await self._classify_read(request, call, response, status)
                        else:
                            outcome = self._classify_unread(request, call, response)
                except BaseException as exc:
                    # Only the watchdog's own cancellation, and no other, is a timeout.
                    if not (watch.fired and watch.cut(exc)):
                        raise
                else:
                    if watch.fired:
                        # Cut as it ended (the transport swallowed the cancellation):
                        # it ended all the same, so the cut is taken back.
                        watch.task.uncancel()
                    return outcome
                finally:
                    watch.end()
        finally:
            if progress is not None:
                progress.restore()
                if progress.reached:
                    self._tracing.add(inner)
        if (
            progress is not None
            and not progress.reached
            and (isinstance(inner, httpx.AsyncHTTPTransport) or inner in self._tracing)
        ):
            # The transport reports each request that gets a connection, and this
            # one never got one: the time went waiting in our own pool.
            pooled = httpx.PoolTimeout(
                f"no connection within the attempt timeout of {limit:g}s", request=request
            )
            return call.classify_local(request, pooled)
        if by_deadline:
            total = call.total_timeout
            error = httpx.TimeoutException(
                "the call reached its deadline"
                if total is None
                else f"call exceeded its total timeout of {total:g}s",
                request=request,
            )
            # The caller's time ran out, which says nothing of the backend: never a
            # breaker failure (as when a Timeout(total=...) scope cancels an attempt).
            return call.classify_local(request, error)
        else:
            error = httpx.TimeoutException(f"attempt timed out after {limit:g}s", request=request)
        return call.classify_unfinished(request, error)

    def _watch_pool(self, inner: httpx.AsyncBaseTransport) -> bool:
        """Whether to watch this attempt for a connection (see :class:`_Progress`).

        httpx's own transport, and any transport seen reporting, always; another
        one until it has sent :data:`_SILENT_AFTER` attempts that reported nothing
        (a mock, a transport that does not pass the ``trace`` extension on): then
        it never will, and the watch is not worth its cost.
        """
        if isinstance(inner, httpx.AsyncHTTPTransport) or inner in self._tracing:
            return True
        silent = self._silent.get(inner, 0)
        if silent >= _SILENT_AFTER:
            self._quiet = weakref.ref(inner)  # the next attempt asks once, cheaply
            return False
        self._silent[inner] = silent + 1
        return True

    async def _attempt_once(self, request: httpx.Request, call: Call) -> Outcome:
        try:
            response = await call.inner.handle_async_request(request)
        except Exception as exc:
            return self._failed(request, call, exc)
        status = response.status_code
        if status >= 400 or self._needs_body:
            return await self._classify_read(request, call, response, status)
        return self._classify_unread(request, call, response)

    def _classify_unread(
        self, request: httpx.Request, call: Call, response: httpx.Response
    ) -> Outcome:
        """An answer below 400 whose body the classifier does not read, classified.

        The generic classifier as it comes (no status of its own) accepts every one:
        its verdict is known here without asking it (three calls less per attempt).
        """
        if self._generic:
            call.report.verdicts.append(ACCEPT)
            return Outcome(request, ACCEPT, response=response)
        return Outcome(request, call.classify(request, response, None), response=response)

    @staticmethod
    def _failed(request: httpx.Request, call: Call, exc: Exception) -> Outcome:
        if isinstance(exc, httpx.PoolTimeout):
            return call.classify_local(request, exc)
        return Outcome(request, call.classify(request, None, exc), error=exc)

    async def _classify_read(
        self, request: httpx.Request, call: Call, response: httpx.Response, status: int
    ) -> Outcome:
        """Read the body (bounded) for the classifier, then classify."""
        limit = self._max_error_body if status >= 400 else self._max_body
        try:
            view = await buffer_response(response, request, limit)
        except Exception as exc:
            await aclose_quietly(response)
            return Outcome(request, call.classify(request, None, exc), error=exc)
        except BaseException:
            await aclose_quietly(response)
            raise
        verdict = call.classify(request, view, None)
        return Outcome(request, verdict, response=response, view=view)

    async def _finish(self, call: Call, outcome: Outcome) -> httpx.Response:
        """Turn what came out of the top into a response or a typed error."""
        report = call.report
        cutoff = call.cutoff
        if (
            self._total is not None
            and outcome.response is None
            and report.gave_up is None
            and cutoff is not None
            and _monotonic() >= cutoff
        ):
            # The engine cut the last attempt at the outermost Timeout(total=...).
            report.gave_up = GaveUp.DEADLINE
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
        view = None
        if response is not None:
            view = await outcome.read_view(self.env.body_limit(response.status_code))
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


# Log records written in a call find its pipeline on the stack (_telemetry_names).
CALL_CODES.add(Pipeline.handle.__code__)


class _Progress:
    """A ``trace`` extension callback noting that an attempt reached a connection.

    httpcore reports each step of a request through the request's ``trace``
    extension (``connection.connect_tcp.started``,
    ``http11.send_request_headers.started``, ...), and only once the pool has
    handed the request a connection. The first report is all this needs: it then
    puts back the callback that was there before (a user's, another
    instrumentation's), which it also hands every report it sees.
    """

    __slots__ = ("_extensions", "_previous", "reached")

    def __init__(self, extensions: dict[str, Any]) -> None:
        self._extensions = extensions
        self._previous = extensions.get("trace")
        self.reached = False
        extensions["trace"] = self

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if not self.reached:
            self.reached = True
            self.restore()
        if self._previous is not None:
            await self._previous(name, info)

    def restore(self) -> None:
        extensions = self._extensions
        if extensions.get("trace") is self:
            if self._previous is None:
                del extensions["trace"]
            else:
                extensions["trace"] = self._previous


def _checked_hooks(hooks: Any) -> tuple[Callable[[Event], object], ...]:
    """``hooks`` as a tuple of plain callables, or a ConfigurationError naming it."""
    if callable(hooks):
        hooks = (hooks,)  # a single hook (hooks=print)
    elif isinstance(hooks, (str, bytes)) or not isinstance(hooks, (Sequence, set, frozenset)):
        raise errors.ConfigurationError(
            f"hooks must be a callable or a sequence of callables, got {type(hooks).__name__}"
        )
    checked = tuple(hooks)
    for index, hook in enumerate(checked):
        if not callable(hook):
            raise errors.ConfigurationError(
                f"hooks[{index}] must be callable, got {type(hook).__name__}"
            )
        if _is_async(hook):
            raise errors.ConfigurationError(
                f"hooks[{index}] ({_name_of(hook)}) is async: hooks are called "
                "synchronously and never awaited; pass a plain function (it may start "
                "a task of its own)"
            )
    return checked


def _is_async(hook: Any) -> bool:
    if inspect.iscoroutinefunction(hook) or inspect.isasyncgenfunction(hook):
        return True
    # An object whose __call__ is async (inspect does not look through instances).
    if inspect.isroutine(hook) or isinstance(hook, type):
        return False
    call = type(hook).__call__
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def _name_of(hook: Any) -> str:
    return str(getattr(hook, "__qualname__", None) or type(hook).__name__)


def _with_call(error: errors.ResilienceError, call: Call) -> errors.ResilienceError:
    """``error`` with the call's report, and the caller's request when it had none."""
    error.report = call.report
    if error._request is None:
        error._request = call.request
    return error


def _error_for(call: Call, verdict: Verdict, view: httpx.Response | None) -> errors.ResilienceError:
    # errors.py owns the wording (method, URL, attempts and why it gave up).
    return errors._from_verdict(verdict, call.request, view, call.report)


def _nearer(limit: float | None, other: float | None) -> float | None:
    """The shorter of two optional limits."""
    if limit is None:
        return other
    if other is None or limit <= other:
        return limit
    return other


def _link(handler: Handler, call_next: CallNext) -> CallNext:
    # Not a coroutine function: it hands back the handler's own awaitable, so each
    # layer costs one coroutine per call, not two.
    def step(request: httpx.Request, call: Call) -> Awaitable[Outcome]:
        return handler(request, call, call_next)

    return step
