"""OpenTelemetry instrumentation of a pipeline: spans, span events, metrics and logs.

Where it sits in the flow of a request: :meth:`Pipeline.handle` runs each logical
call inside :meth:`Instrumentation.run_call` (the INTERNAL span ``resilience.call``),
the innermost step runs each attempt inside :meth:`Instrumentation.run_attempt` (a
CLIENT span per attempt, following the HTTP client semantic conventions),
``env.emit`` hands every layer event to :meth:`Instrumentation.on_event` (span
events, metrics, log lines), and ``AuthRefresh`` wraps each token fetch in
:meth:`Instrumentation.token_refresh` (the INTERNAL span ``resilience.auth.refresh``).
The names are those of ``TELEMETRY.md``; ``docs/telemetry.md`` is the user's guide.
:class:`Instrumentation` is what the ``Instrument`` protocol of ``_layer.py``
describes: this module reads the layer contract and never imports the engine,
which imports it only when it builds a pipeline with telemetry.

Cost. With the OpenTelemetry API but no SDK, the API hands out non-recording spans,
yet ``start_as_current_span`` still costs 13 to 19 µs and ``start_span`` about
1.4 µs. So the pipeline asks :meth:`Instrumentation.records` before each call (two
identity checks while the global providers are unset or no-op) and, when nothing
records, runs the call exactly as with telemetry off: no span, no attribute
dictionary, no context change. The global providers are resolved lazily (one may be
set after import, or after the pipeline was built); providers passed to the
pipeline are used as given.

What a sampler sees. The attributes the HTTP conventions want at creation (method,
``server.address``, ``server.port``, ``url.full``, the resend count) and the
pipeline's identity (``resilience.vendor``, ``resilience.pipeline``) are given to
``start_span``; what only the answer tells is added as the attempt ends. A token
``AuthRefresh`` attached is registered on the call (:meth:`Instrumentation.withhold`),
because the attempt's span is written before that layer cleans what a vendor echoed.

Next to ``opentelemetry-instrumentation-httpx``. Its global ``instrument()``
patches ``httpx.AsyncHTTPTransport``, the inner transport: its CLIENT span then
nests under this module's attempt span (the attempt's context is made current
while the attempt runs), and :func:`request_hook` copies the resend count onto it.
This module's attempt span stays: it covers the whole attempt (body read and
classification included) and carries the verdict, whatever the inner transport.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar, cast
from urllib.parse import unquote_plus

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import errors
from ._events import (
    CallHeld,
    CallReleased,
    CircuitStateChanged,
    ConcurrencyLimitReached,
    Event,
    FallbackUsed,
    HedgeSent,
    PartialFailureReported,
    RateLimited,
    RetryScheduled,
)
from ._http import DEFAULT_PORTS
from ._report import GaveUp
from ._secret import WITHHELD, _needles, mentions
from ._telemetry_names import (
    DEFAULT_KNOWN_METHODS,
    HTTP_RESEND_COUNT,
    RESEND_COUNT_EXTENSION,
    known_methods_from_env,
    request_hook,
)
from ._verdict import Action

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
    from opentelemetry.util.types import AttributeValue

    from ._layer import Call, CallNext, Outcome

__all__ = [
    "RESEND_COUNT_EXTENSION",
    "Instrumentation",
    "redact_url",
    "request_hook",
]

logger = logging.getLogger("resilience")

_RESEND_ORIGIN_EXTENSION = "resilience.resend_origin"
"""``id()`` of the caller's request whose call wrote the resend count: a request
carrying a count written for another request is a redirect (httpx copies the
extensions into the request it follows a redirect with); the same request sent
again is a new call and starts from zero."""

SCOPE = "resilience"
"""The instrumentation scope of every tracer and meter."""

REDACTED = "REDACTED"

# Attribute names: the HTTP semantic conventions, then ours (TELEMETRY.md).
HTTP_METHOD = "http.request.method"
HTTP_METHOD_ORIGINAL = "http.request.method_original"
HTTP_STATUS = "http.response.status_code"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
URL_FULL = "url.full"
ERROR_TYPE = "error.type"
PROTOCOL_VERSION = "network.protocol.version"
VENDOR = "resilience.vendor"
PIPELINE = "resilience.pipeline"
OUTCOME = "resilience.outcome"
ATTEMPT_COUNT = "resilience.attempt.count"
VERDICT = "resilience.verdict"
PROBLEM_CODE = "resilience.problem.code"
PROBLEM_REQUEST_ID = "resilience.problem.request_id"
RETRY_ATTEMPT = "resilience.retry.attempt"
RETRY_DELAY = "resilience.retry.delay"
RETRY_REASON = "resilience.retry.reason"
BREAKER_KEY = "resilience.circuit_breaker.key"
BREAKER_STATE = "resilience.circuit_breaker.state"
BREAKER_PREVIOUS_STATE = "resilience.circuit_breaker.previous_state"
AUTH_TRIGGER = "resilience.auth.trigger"
PARTIAL_FAILED = "resilience.partial.failed"
PARTIAL_COUNT = "resilience.partial.count"

CALL_SPAN = "resilience.call"
REFRESH_SPAN = "resilience.auth.refresh"
RETRY_EVENT = "resilience.retry"
BREAKER_EVENT = "resilience.circuit_breaker.state_change"
PARTIAL_EVENT = "resilience.partial"
HOLD_EVENT = "resilience.hold"
RELEASE_EVENT = "resilience.hold.release"
HOLD_KEY = "resilience.hold.key"
HOLD_COUNT = "resilience.hold.count"
HOLD_WAITED = "resilience.hold.waited"
HOLD_OUTCOME = "resilience.hold.outcome"
HEDGE_EVENT = "resilience.hedge"
HEDGE_NUMBER = "resilience.hedge.number"
HEDGE_ELAPSED = "resilience.hedge.elapsed"
HEDGE_TRIGGER = "resilience.hedge.trigger"
LIMIT_EVENT = "resilience.concurrency_limit.rejected"
LIMIT_KEY = "resilience.concurrency_limit.key"
LIMIT_LIMIT = "resilience.concurrency_limit.limit"
LIMIT_REASON = "resilience.concurrency_limit.reason"
FALLBACK_EVENT = "resilience.fallback"
RATE_LIMIT_EVENT = "resilience.rate_limit"
RATE_LIMIT_LIMITER = "resilience.rate_limit.limiter"
RATE_LIMIT_KEY = "resilience.rate_limit.key"
RATE_LIMIT_OUTCOME = "resilience.rate_limit.outcome"
RATE_LIMIT_WAIT = "resilience.rate_limit.wait"
RATE_LIMIT_REASON = "resilience.rate_limit.reason"
FALLBACK = "resilience.fallback"
"""On the call span: the class name of the error a ``Fallback`` answer replaced."""

# The methods the HTTP conventions know; any other is reported as ``_OTHER``
# (``Pipeline(known_methods=...)`` or OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS replace them).
KNOWN_METHODS = DEFAULT_KNOWN_METHODS

# Query parameters whose values never leave the process: exact names, and name
# fragments (``X-Amz-Security-Token``, ``subscription_api_key``, ``refresh_token``).
SENSITIVE_QUERY_NAMES = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "assertion",
        "auth",
        "awsaccesskeyid",
        "authorization",
        "client_assertion",
        "client_secret",
        "code",
        "key",
        "password",
        "secret",
        "session",
        "sig",
        "signature",
        "token",
    }
)
SENSITIVE_QUERY_PARTS = ("token", "secret", "passw", "signature", "apikey", "api_key", "credential")

_HTTP_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
_CALL_DURATION_BUCKETS = (*_HTTP_DURATION_BUCKETS, 15.0, 30.0, 60.0, 120.0, 300.0)
_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)

_FAILED_ACTIONS = frozenset({Action.RETRY, Action.FAIL, Action.REFRESH_AUTH})

P = TypeVar("P")
V = TypeVar("V")

_UNSEEN = object()
_NO_SCOPE: contextlib.nullcontext[None] = contextlib.nullcontext()

# Set by ``suppress_instrumentation()``: instrumentations then record nothing.
_SUPPRESS_KEY: str = getattr(
    otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation"
)


# --- resolving providers cheaply -------------------------------------------------


class _Resolved(Generic[P, V]):
    """What a provider yields (a tracer, meters), resolved lazily and cached.

    With an explicit provider the value is built once. With the global one, the
    API's getter costs about 0.7 µs (it probes ``os.environ`` on every call while
    nothing is set), far too much for every call; so the module global the getter
    reads is compared by identity instead, and the value is rebuilt through the
    public getter only when that global changed (a provider was set). If a future
    API renames the global, the public getter is used on every call: slower, still
    correct.
    """

    __slots__ = ("_build", "_getter", "_module", "_name", "_seen", "_value", "_watch")

    def __init__(
        self,
        provider: P | None,
        *,
        module: object,
        name: str,
        getter: Callable[[], P],
        build: Callable[[P], V | None],
    ) -> None:
        self._build = build
        self._getter = getter
        self._module = module
        self._name = name if hasattr(module, name) else None
        self._watch = provider is None
        self._seen: object = _UNSEEN
        self._value: V | None = None if provider is None else build(provider)

    def get(self) -> V | None:
        """The current value, or ``None`` when nothing would record."""
        if not self._watch:
            return self._value
        name = self._name
        raw = getattr(self._module, name) if name is not None else self._getter()
        if raw is self._seen:
            return self._value
        return self._refresh()

    def _refresh(self) -> V | None:
        provider = self._getter()  # also loads a provider named by OTEL_PYTHON_*_PROVIDER
        name = self._name
        self._seen = getattr(self._module, name) if name is not None else provider
        self._value = self._build(provider)
        return self._value


def _version() -> str | None:
    return getattr(sys.modules.get("resilience"), "__version__", None)


def _build_tracer(provider: trace.TracerProvider) -> trace.Tracer | None:
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    tracer = provider.get_tracer(SCOPE, _version())
    if isinstance(tracer, (trace.NoOpTracer, trace.ProxyTracer)):
        return None  # e.g. an SDK switched off by OTEL_SDK_DISABLED
    return tracer


class _Meters:
    """The instruments of one meter."""

    __slots__ = (
        "attempt_duration",
        "breaker_state",
        "call_duration",
        "fallbacks",
        "hedges",
        "limit_rejections",
        "rate_limited",
        "refreshes",
        "rejections",
        "retries",
        "retry_delay",
        "store_fallbacks",
    )

    def __init__(self, meter: Meter) -> None:
        self.call_duration: Histogram = meter.create_histogram(
            "resilience.client.call.duration",
            unit="s",
            description="Duration of logical calls through a pipeline, retries included.",
            explicit_bucket_boundaries_advisory=_CALL_DURATION_BUCKETS,
        )
        self.retries: Counter = meter.create_counter(
            "resilience.client.call.retries",
            unit="{retry}",
            description="Retries scheduled by the Retry layer.",
        )
        self.retry_delay: Histogram = meter.create_histogram(
            "resilience.client.call.retry_delay",
            unit="s",
            description="Wait before each retry.",
            explicit_bucket_boundaries_advisory=_DELAY_BUCKETS,
        )
        self.rejections: Counter = meter.create_counter(
            "resilience.circuit_breaker.rejections",
            unit="{call}",
            description="Calls that failed fast because a circuit breaker was open.",
        )
        self.breaker_state: UpDownCounter = meter.create_up_down_counter(
            "resilience.circuit_breaker.state",
            unit="{breaker}",
            description="Circuit breakers currently away from closed, by state.",
        )
        self.refreshes: Counter = meter.create_counter(
            "resilience.auth.refreshes",
            unit="{refresh}",
            description="Token fetches by AuthRefresh.",
        )
        self.hedges: Counter = meter.create_counter(
            "resilience.client.call.hedges",
            unit="{hedge}",
            description="Extra attempts sent by the Hedge layer.",
        )
        self.fallbacks: Counter = meter.create_counter(
            "resilience.client.call.fallbacks",
            unit="{call}",
            description="Failed calls the Fallback layer answered instead.",
        )
        self.limit_rejections: Counter = meter.create_counter(
            "resilience.concurrency_limit.rejections",
            unit="{call}",
            description="Calls that failed fast because a concurrency limit had no slot.",
        )
        self.rate_limited: Counter = meter.create_counter(
            "resilience.rate_limit.calls",
            unit="{call}",
            description="Calls a RateLimiter held back (delayed) or refused (rejected).",
        )
        self.store_fallbacks: Counter = meter.create_counter(
            "resilience.store.fallbacks",
            unit="{operation}",
            description="State store steps answered from local state (Redis away or slow).",
        )
        self.attempt_duration: Histogram = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (one per attempt).",
            explicit_bucket_boundaries_advisory=_HTTP_DURATION_BUCKETS,
        )


def _build_meters(provider: otel_metrics.MeterProvider) -> _Meters | None:
    if isinstance(provider, otel_metrics.NoOpMeterProvider) or _is_proxy_meter_provider(provider):
        return None
    meter = provider.get_meter(SCOPE, _version())
    if isinstance(meter, otel_metrics.NoOpMeter):
        return None
    return _Meters(meter)


def _is_proxy_meter_provider(provider: object) -> bool:
    # The API's proxy class is private; its name has been stable since 1.12.
    return type(provider).__name__ == "_ProxyMeterProvider"


# The module holding the global meter provider (private; see ``_Resolved``).
_metrics_module: object = sys.modules.get("opentelemetry.metrics._internal", otel_metrics)


# --- helpers: names, URLs, error types ------------------------------------------------


def redact_url(url: httpx.URL) -> str:
    """``url`` for ``url.full``: credentials and sensitive query values redacted.

    Userinfo becomes ``REDACTED:REDACTED``; the value of every query parameter
    whose name looks secret (``token``, ``access_token``, ``api_key``, ``key``,
    ``sig``, ``signature``, ``password``, ``secret``, ``client_secret``, ``code``,
    ``AWSAccessKeyId`` and names containing ``token``, ``secret``, ``signature``, ...) becomes
    ``REDACTED``. The fragment is kept, as the conventions ask (it is never sent,
    but it is known), with the same rule for its ``name=value`` pairs: an OAuth
    implicit grant returns ``#access_token=...``.

    Args:
        url: the request's URL.

    Returns:
        The absolute URL, safe to record.
    """
    raw_path, _, query = url.raw_path.decode("ascii", "replace").partition("?")
    userinfo = f"{REDACTED}:{REDACTED}@" if url.userinfo else ""
    text = f"{url.scheme}://{userinfo}{url.netloc.decode('ascii', 'replace')}{raw_path}"
    if query:
        text += "?" + _redact_pairs(query)
    if url.fragment:
        text += "#" + _redact_pairs(str(url).partition("#")[2])  # as sent: still encoded
    return text


def _redact_pairs(text: str) -> str:
    return "&".join(_redact_pair(pair) for pair in text.split("&"))


def _redact_pair(pair: str) -> str:
    name, eq, _ = pair.partition("=")
    if eq and _is_sensitive(name):
        return f"{name}={REDACTED}"
    return pair


@functools.lru_cache(maxsize=1024)
def _is_sensitive(name: str) -> bool:
    lowered = unquote_plus(name).strip().lower()
    if lowered in SENSITIVE_QUERY_NAMES:
        return True
    flat = lowered.replace("-", "_")
    return any(part in flat for part in SENSITIVE_QUERY_PARTS)


def _method_name(method: str, known: frozenset[str] = KNOWN_METHODS) -> tuple[str, str]:
    """The span name and the ``http.request.method`` value of ``method``."""
    if method in known:
        return method, method
    return "HTTP", "_OTHER"


def _method_attributes(
    method: str, known: frozenset[str], attributes: dict[str, AttributeValue]
) -> str:
    """Write ``http.request.method`` (and the original of an unknown one); return the span name."""
    name, value = _method_name(method, known)
    attributes[HTTP_METHOD] = value
    if value == "_OTHER":
        attributes[HTTP_METHOD_ORIGINAL] = method
    return name


# httpx's ``http_version`` values (from httpcore), as ``network.protocol.version``.
_PROTOCOL_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/2": "2", b"HTTP/1.0": "1.0", b"HTTP/3": "3"}


def _protocol_version(response: httpx.Response) -> str | None:
    """``network.protocol.version`` of ``response``: "HTTP/2" -> "2".

    Read as ``response.http_version`` reads it (a response with no
    ``http_version`` extension, from a mock say, is HTTP/1.1), which is also what
    opentelemetry-instrumentation-httpx records. An unexpected value is kept only
    when short: it came from the server.
    """
    raw = response.extensions.get("http_version", b"HTTP/1.1")
    known = _PROTOCOL_VERSIONS.get(raw) if isinstance(raw, bytes) else None
    if known is not None:
        return known
    text = response.http_version
    text = text[5:] if text.startswith("HTTP/") else text
    return text if 0 < len(text) <= 8 and text.isprintable() else None


def _scrub(attributes: dict[str, AttributeValue], needles: tuple[str, ...]) -> None:
    """Withhold every string value that quotes a credential sent in this call."""
    for key, value in attributes.items():
        if isinstance(value, str) and mentions(value, needles):
            attributes[key] = WITHHELD


def _port(url: httpx.URL) -> int | None:
    port = url.port
    return port if port is not None else DEFAULT_PORTS.get(url.scheme)


def _error_name(error: BaseException) -> str:
    return type(error).__qualname__


def _attempt_error_type(outcome: Outcome) -> str | None:
    """``error.type`` of a failed attempt, or ``None`` when it did not fail."""
    if outcome.error is not None:
        return _error_name(outcome.error)
    response = outcome.response
    if response is not None and response.status_code >= 400:
        return str(response.status_code)
    verdict = outcome.verdict
    if verdict.action in _FAILED_ACTIONS:
        return verdict.reason  # e.g. an error envelope in a 200
    return None


def _is_timeout(error: BaseException, gave_up: GaveUp | None) -> bool:
    return (
        gave_up == GaveUp.DEADLINE
        or isinstance(error, httpx.TimeoutException)
        or isinstance(error.__cause__, httpx.TimeoutException)
    )


def _request_id_text(request_id: str | None) -> str:
    return f" request_id={request_id}" if request_id else ""


class _CallTrace:
    """Telemetry state of one call (``call.trace``), only when something records."""

    __slots__ = (
        "labels",
        "meters",
        "needles",
        "recording",
        "resend_base",
        "secrets",
        "span",
        "started",
        "token",
        "tracer",
    )

    def __init__(self, tracer: trace.Tracer | None, meters: _Meters | None) -> None:
        self.tracer = tracer
        self.meters = meters
        self.span: trace.Span | None = None
        self.recording = False
        self.token: Token[Context] | None = None
        self.labels: dict[str, AttributeValue] = {}
        self.resend_base = 0  # resends before this call: a redirect's call goes on counting
        self.started = time.perf_counter()
        # Credentials this call sent (``Instrumentation.withhold``), and every form
        # of them a server may echo: no attribute written for the call quotes one.
        self.secrets: tuple[str, ...] = ()
        self.needles: tuple[str, ...] = ()


def _trace_of(call: Call) -> _CallTrace | None:
    """``call.trace``, which only this module sets: a :class:`_CallTrace` or ``None``."""
    return cast("_CallTrace | None", call.trace)


# --- the instrumentation -----------------------------------------------------------------


class Instrumentation:
    """Spans, events, metrics and log lines of one pipeline.

    Built by the pipeline (``Pipeline(telemetry=True)``, the default); layers reach
    it as ``env.instrument``. Everything it does is wrapped so that observing a
    call can never break it.

    Args:
        vendor: the classifier's vendor name (``resilience.vendor``).
        name: the pipeline's name (``resilience.pipeline``; default: ``vendor``).
        known_methods: the methods recorded as themselves (default: those
            ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` names, read once, here;
            else the conventions' list); any other is ``_OTHER``.
        tracer_provider: a tracer provider, or ``None`` for the global one
            (resolved lazily: it may be set after the pipeline is built).
        meter_provider: a meter provider, or ``None`` for the global one.
    """

    def __init__(
        self,
        *,
        vendor: str,
        name: str | None = None,
        known_methods: frozenset[str] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self.vendor = vendor
        self.name = vendor if name is None else name
        self.known_methods = (
            known_methods if known_methods is not None else known_methods_from_env()
        )
        # What every span and metric point of this pipeline carries.
        self._identity: dict[str, AttributeValue] = {VENDOR: vendor, PIPELINE: self.name}
        self._tracer: _Resolved[trace.TracerProvider, trace.Tracer] = _Resolved(
            tracer_provider,
            module=trace,
            name="_TRACER_PROVIDER",
            getter=trace.get_tracer_provider,
            build=_build_tracer,
        )
        self._meters: _Resolved[otel_metrics.MeterProvider, _Meters] = _Resolved(
            meter_provider,
            module=_metrics_module,
            name="_METER_PROVIDER",
            getter=otel_metrics.get_meter_provider,
            build=_build_meters,
        )

    def __repr__(self) -> str:
        return f"Instrumentation(vendor={self.vendor!r}, name={self.name!r})"

    def records(self) -> bool:
        """Whether a call started now would record anything (a span or a metric).

        Cheap (two identity checks while no provider is set): the pipeline asks
        before each call, and runs it exactly as with telemetry off when not.
        """
        return self._tracer.get() is not None or self._meters.get() is not None

    # -- the logical call --

    async def run_call(
        self, call: Call, fn: Callable[[Call], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        """Run ``fn(call)`` (the whole call) inside the ``resilience.call`` span.

        Args:
            call: the logical call; ``call.trace`` receives this call's state.
            fn: runs the layers and returns the response or raises a typed error.

        Returns:
            What ``fn`` returned.
        """
        tracer = self._tracer.get()
        meters = self._meters.get()
        if tracer is None and meters is None:
            return await fn(call)
        state = self._begin_call(call, tracer, meters)
        try:
            response = await fn(call)
        except BaseException as exc:
            self._end_call(call, state, None, exc)
            raise
        self._end_call(call, state, response, None)
        return response

    def _begin_call(
        self, call: Call, tracer: trace.Tracer | None, meters: _Meters | None
    ) -> _CallTrace | None:
        try:
            if otel_context.get_value(_SUPPRESS_KEY):
                return None  # inside an exporter's own requests, say
            state = _CallTrace(tracer, meters)
            request = call.request
            extensions = request.extensions
            prior = extensions.get(RESEND_COUNT_EXTENSION)
            if (
                isinstance(prior, int)
                and prior >= 0
                and extensions.get(_RESEND_ORIGIN_EXTENSION) != id(request)
            ):
                # httpx follows a redirect with a new request carrying these
                # extensions: the HTTP conventions count a redirect as a resend.
                state.resend_base = prior + 1
            url = request.url
            if tracer is not None:
                # Given at creation, so that a sampler sees them.
                attributes: dict[str, AttributeValue] = {SERVER_ADDRESS: url.host}
                _method_attributes(request.method, self.known_methods, attributes)
                port = _port(url)
                if port is not None:
                    attributes[SERVER_PORT] = port
                attributes.update(self._identity)
                span = tracer.start_span(CALL_SPAN, kind=SpanKind.INTERNAL, attributes=attributes)
                state.span = span
                state.recording = span.is_recording()
                state.token = otel_context.attach(trace.set_span_in_context(span))
            if meters is not None:
                state.labels = {
                    HTTP_METHOD: _method_name(request.method, self.known_methods)[1],
                    SERVER_ADDRESS: url.host,
                    **self._identity,
                }
            call.trace = state
            return state
        except Exception:  # pragma: no cover - a broken SDK must not break the call
            logger.debug("resilience telemetry: starting the call span failed", exc_info=True)
            return None

    def _end_call(
        self,
        call: Call,
        state: _CallTrace | None,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> None:
        if state is None:
            return
        try:
            if state.token is not None:
                otel_context.detach(state.token)
                state.token = None
            report = call.report
            if error is None:
                outcome, error_type = _outcome_of_response(call, response)
            else:
                outcome = _outcome_of_error(error, call)
                error_type = _error_name(error) if outcome != "cancelled" else None
            if error_type is not None and state.needles and mentions(error_type, state.needles):
                error_type = WITHHELD
            span = state.span
            if span is not None:
                if state.recording:
                    span.set_attribute(ATTEMPT_COUNT, report.attempts)
                    span.set_attribute(OUTCOME, outcome)
                    if error_type is not None:
                        span.set_attribute(ERROR_TYPE, error_type)
                if error_type is not None:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            meters = state.meters
            if meters is not None:
                labels = {**state.labels, OUTCOME: outcome}
                if error_type is not None:
                    labels[ERROR_TYPE] = error_type
                meters.call_duration.record(time.perf_counter() - state.started, labels)
                if outcome == "short_circuited":
                    meters.rejections.add(1, labels)
        except Exception:  # pragma: no cover - a broken SDK must not break the call
            logger.debug("resilience telemetry: ending the call span failed", exc_info=True)

    # -- one attempt --

    async def run_attempt(
        self,
        call: Call,
        request: httpx.Request,
        fn: CallNext,
    ) -> Outcome:
        """Run ``fn(request, call)`` (one attempt: send and classify) in a CLIENT span.

        The resend count (0 for the call's first attempt; a redirect's call goes
        on from the previous call's count) is written into
        ``request.extensions["resilience.resend_count"]`` for :func:`request_hook`,
        and into the caller's request, whose extensions httpx carries into the
        request of a redirect.

        Args:
            call: the logical call (its report already counts this attempt).
            request: the request this attempt sends.
            fn: sends the request and classifies the result.

        Returns:
            The attempt's outcome.
        """
        state = _trace_of(call)
        resend = call.report.attempts - 1
        if state is None:
            request.extensions[RESEND_COUNT_EXTENSION] = resend
            return await fn(request, call)
        resend += state.resend_base
        request.extensions[RESEND_COUNT_EXTENSION] = resend
        origin = call.request
        if origin is not request:  # AuthRefresh and the splitter send copies
            origin.extensions[RESEND_COUNT_EXTENSION] = resend
        origin.extensions[_RESEND_ORIGIN_EXTENSION] = id(origin)
        span, token = self._begin_attempt(state, request, resend)
        started = time.perf_counter()
        try:
            outcome = await fn(request, call)
        except BaseException as exc:
            self._end_attempt(state, span, token, request, started, None, exc)
            raise
        self._end_attempt(state, span, token, request, started, outcome, None)
        return outcome

    def _begin_attempt(
        self, state: _CallTrace, request: httpx.Request, resend: int
    ) -> tuple[trace.Span | None, Token[Context] | None]:
        tracer = state.tracer
        if tracer is None:
            return None, None
        try:
            # What the conventions want at creation, given to start_span so that a
            # sampler sees them (so they are built even if it then drops the span).
            url = request.url
            attributes: dict[str, AttributeValue] = {
                SERVER_ADDRESS: url.host,
                URL_FULL: redact_url(url),
            }
            name = _method_attributes(request.method, self.known_methods, attributes)
            port = _port(url)
            if port is not None:
                attributes[SERVER_PORT] = port
            if resend > 0:
                attributes[HTTP_RESEND_COUNT] = resend
            attributes.update(self._identity)
            if state.needles:
                _scrub(attributes, state.needles)
            span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
            ctx = trace.set_span_in_context(span)
            if span.get_span_context().is_valid:
                # Each attempt carries its own traceparent (a later instrumentation
                # of the inner transport overwrites it with its own, nested, span).
                propagate.inject(request.headers, context=ctx)
            return span, otel_context.attach(ctx)
        except Exception:  # pragma: no cover - a broken SDK must not break the call
            logger.debug("resilience telemetry: starting an attempt span failed", exc_info=True)
            return None, None

    def _end_attempt(
        self,
        state: _CallTrace,
        span: trace.Span | None,
        token: Token[Context] | None,
        request: httpx.Request,
        started: float,
        outcome: Outcome | None,
        error: BaseException | None,
    ) -> None:
        try:
            elapsed = time.perf_counter() - started
            if token is not None:
                otel_context.detach(token)
            status: int | None = None
            version: str | None = None
            if outcome is not None:
                error_type = _attempt_error_type(outcome)
                response = outcome.response
                if response is not None:
                    status = response.status_code
                    version = _protocol_version(response)
            elif isinstance(error, Exception):
                error_type = _error_name(error)
            else:
                error_type = None  # cancelled by the caller: not an error
            needles = state.needles
            if error_type is not None and needles and mentions(error_type, needles):
                # The attempt ran before AuthRefresh withheld what the vendor echoed.
                error_type = WITHHELD
            if span is not None:
                if span.is_recording():
                    ended: dict[str, AttributeValue] = {}
                    if status is not None:
                        ended[HTTP_STATUS] = status
                    if version is not None:
                        ended[PROTOCOL_VERSION] = version
                    if error_type is not None:
                        ended[ERROR_TYPE] = error_type
                    if outcome is not None:
                        verdict = outcome.verdict
                        ended[VERDICT] = verdict.action.value
                        problem = verdict.problem
                        if problem is not None:
                            if problem.code is not None:
                                ended[PROBLEM_CODE] = problem.code
                            if problem.request_id:
                                ended[PROBLEM_REQUEST_ID] = problem.request_id
                    if needles:
                        _scrub(ended, needles)
                    span.set_attributes(ended)
                if error_type is not None:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            meters = state.meters
            if meters is not None and (outcome is not None or error_type is not None):
                url = request.url
                labels: dict[str, AttributeValue] = {
                    HTTP_METHOD: _method_name(request.method, self.known_methods)[1],
                    SERVER_ADDRESS: url.host,
                }
                port = _port(url)
                if port is not None:
                    labels[SERVER_PORT] = port
                if status is not None:
                    labels[HTTP_STATUS] = status
                if version is not None:
                    labels[PROTOCOL_VERSION] = version
                if error_type is not None:
                    labels[ERROR_TYPE] = error_type
                labels.update(self._identity)
                meters.attempt_duration.record(elapsed, labels)
        except Exception:  # pragma: no cover - a broken SDK must not break the call
            logger.debug("resilience telemetry: ending an attempt span failed", exc_info=True)

    # -- events --

    def on_event(self, event: Event, call: Call | None = None) -> None:
        """Record a layer's event: a span event, metrics and a log line.

        Args:
            event: what a layer did.
            call: the call it happened in, when there is one.
        """
        if isinstance(event, RetryScheduled):
            self._on_retry(event, _trace_of(call) if call is not None else None)
        elif isinstance(event, CircuitStateChanged):
            self._on_breaker(event, call)
        elif isinstance(event, PartialFailureReported):
            self._on_partial(event, call)
        elif isinstance(event, (CallHeld, CallReleased)):
            self._on_hold(event, call)
        elif isinstance(event, HedgeSent):
            self._on_hedge(event, call)
        elif isinstance(event, FallbackUsed):
            self._on_fallback(event, call)
        elif isinstance(event, ConcurrencyLimitReached):
            self._on_limit(event, call)
        elif isinstance(event, RateLimited):
            self._on_rate_limited(event, call)
        # TokenRefreshed: token_refresh() already made the span and the count, and
        # AuthRefresh logs each new token itself.

    def _on_retry(self, event: RetryScheduled, state: _CallTrace | None) -> None:
        # The Retry layer logs each retry itself (same fields, request id included).
        if state is None:
            return
        reason = event.reason
        if state.needles and mentions(reason, state.needles):
            reason = WITHHELD
        if state.recording and state.span is not None:
            state.span.add_event(
                RETRY_EVENT,
                {RETRY_ATTEMPT: event.attempt, RETRY_DELAY: event.delay, RETRY_REASON: reason},
            )
        meters = state.meters
        if meters is not None:
            labels = {**state.labels, ERROR_TYPE: reason}
            meters.retries.add(1, labels)
            meters.retry_delay.record(event.delay, labels)

    def _on_breaker(self, event: CircuitStateChanged, call: Call | None) -> None:
        logger.info(
            "resilience circuit breaker %s: %s -> %s (vendor %s)",
            event.key,
            event.old,
            event.new,
            self.vendor,
        )
        span = _event_span(call)
        if span is not None:
            span.add_event(
                BREAKER_EVENT,
                {
                    BREAKER_KEY: event.key,
                    BREAKER_STATE: event.new,
                    BREAKER_PREVIOUS_STATE: event.old,
                },
            )
        # Breakers outlive calls: count every change, whether this call records or not.
        meters = self._meters.get()
        if meters is not None and event.new != event.old:
            # A breaker is counted in the state it is in, unless closed (the normal state).
            if event.new != "closed":
                meters.breaker_state.add(
                    1, {BREAKER_KEY: event.key, BREAKER_STATE: event.new, **self._identity}
                )
            if event.old != "closed":
                meters.breaker_state.add(
                    -1, {BREAKER_KEY: event.key, BREAKER_STATE: event.old, **self._identity}
                )

    def _on_hold(self, event: CallHeld | CallReleased, call: Call | None) -> None:
        # A span event on the call: held (the circuit's key, calls held), then
        # released or given up (seconds held, how it ended). Retry logs both itself.
        span = _event_span(call)
        if span is None:
            return
        if isinstance(event, CallHeld):
            span.add_event(HOLD_EVENT, {HOLD_KEY: event.key, HOLD_COUNT: event.held})
        else:
            span.add_event(
                RELEASE_EVENT,
                {HOLD_KEY: event.key, HOLD_WAITED: event.waited, HOLD_OUTCOME: event.outcome},
            )

    def _on_partial(self, event: PartialFailureReported, call: Call | None) -> None:
        if logger.isEnabledFor(logging.INFO):
            parts = ", ".join(
                f"{key} ({verdict.reason}"
                f"{_request_id_text(verdict.problem.request_id if verdict.problem else None)})"
                for key, verdict in sorted(event.failures.items())
            )
            logger.info(
                "resilience partial failure (vendor %s): %d part(s) failed: %s",
                self.vendor,
                len(event.failures),
                parts,
            )
        span = _event_span(call)
        if span is not None:
            failed = tuple(sorted(event.failures))
            span.add_event(PARTIAL_EVENT, {PARTIAL_FAILED: failed, PARTIAL_COUNT: len(failed)})

    def _on_hedge(self, event: HedgeSent, call: Call | None) -> None:
        # The hedge's own attempt span (with its resend count) is made as it is sent.
        logger.debug(
            "resilience hedge %d of %s %s after %.3fs (%s, vendor %s)",
            event.hedge,
            event.method,
            event.host,
            event.elapsed,
            event.trigger,
            self.vendor,
        )
        state = _trace_of(call) if call is not None else None
        if state is None:
            return
        if state.recording and state.span is not None:
            state.span.add_event(
                HEDGE_EVENT,
                {
                    HEDGE_NUMBER: event.hedge,
                    HEDGE_ELAPSED: event.elapsed,
                    HEDGE_TRIGGER: event.trigger,
                },
            )
        if state.meters is not None:
            state.meters.hedges.add(1, {**state.labels, HEDGE_TRIGGER: event.trigger})

    def _on_fallback(self, event: FallbackUsed, call: Call | None) -> None:
        logger.info(
            "resilience fallback answered %s %s in place of %s%s (vendor %s)",
            event.method,
            event.host,
            event.error,
            f" ({event.code})" if event.code else "",
            self.vendor,
        )
        state = _trace_of(call) if call is not None else None
        if state is None:
            return
        code = event.code
        if code is not None and state.needles and mentions(code, state.needles):
            code = WITHHELD
        if state.recording and state.span is not None:
            attributes: dict[str, AttributeValue] = {ERROR_TYPE: event.error}
            if code is not None:
                attributes[PROBLEM_CODE] = code
            state.span.add_event(FALLBACK_EVENT, attributes)
            state.span.set_attribute(FALLBACK, event.error)
        if state.meters is not None:
            state.meters.fallbacks.add(1, {**state.labels, ERROR_TYPE: event.error})

    def _on_limit(self, event: ConcurrencyLimitReached, call: Call | None) -> None:
        logger.info(
            "resilience concurrency limit of %d reached for %s (%s, vendor %s)",
            event.limit,
            event.key,
            event.reason,
            self.vendor,
        )
        span = _event_span(call)
        if span is not None:
            span.add_event(
                LIMIT_EVENT,
                {LIMIT_KEY: event.key, LIMIT_LIMIT: event.limit, LIMIT_REASON: event.reason},
            )
        # Limits outlive calls: counted by key whether this call records or not.
        meters = self._meters.get()
        if meters is not None:
            meters.limit_rejections.add(
                1, {LIMIT_KEY: event.key, LIMIT_REASON: event.reason, **self._identity}
            )

    def _on_rate_limited(self, event: RateLimited, call: Call | None) -> None:
        # A span event on the call (the wait, or the refusal and why), and a count
        # by limiter and outcome: the key (a client id) stays off the metric.
        span = _event_span(call)
        if span is not None:
            attributes: dict[str, AttributeValue] = {
                RATE_LIMIT_LIMITER: event.limiter,
                RATE_LIMIT_KEY: event.key,
                RATE_LIMIT_OUTCOME: event.outcome,
                RATE_LIMIT_WAIT: event.wait,
            }
            if event.reason is not None:
                attributes[RATE_LIMIT_REASON] = event.reason
            span.add_event(RATE_LIMIT_EVENT, attributes)
        meters = self._meters.get()
        if meters is not None:
            labels: dict[str, AttributeValue] = {
                RATE_LIMIT_LIMITER: event.limiter,
                RATE_LIMIT_OUTCOME: event.outcome,
                **self._identity,
            }
            if event.reason is not None:
                labels[RATE_LIMIT_REASON] = event.reason
            meters.rate_limited.add(1, labels)

    def store_fallback(self, layer: str, operation: str) -> None:
        """A shared store's ``operation`` for ``layer`` was answered from local state
        (``RedisStore`` away or slow): counted by layer and operation."""
        meters = self._meters.get()
        if meters is not None:
            meters.store_fallbacks.add(
                1,
                {"resilience.store.layer": layer, "resilience.store.operation": operation}
                | self._identity,
            )

    # -- credentials --

    def withhold(self, call: Call, secret: str) -> None:
        """Never record ``secret`` (nor a text quoting it) for the rest of ``call``.

        ``AuthRefresh`` calls it with each token it attaches, before the attempt:
        the attempt's span and metric are written as the attempt ends, before the
        layer withholds what a vendor echoed of the token (in an error code, say)
        from the outcome. A no-op when the call does not record.
        """
        state = _trace_of(call)
        if state is None or not secret or secret in state.secrets:
            return
        state.secrets = (*state.secrets, secret)
        state.needles = (*state.needles, *_needles((secret,)))

    # -- token refresh --

    def token_refresh(
        self, call: Call | None, trigger: str
    ) -> contextlib.AbstractContextManager[None]:
        """A context manager around one token fetch: a span and a count.

        ``AuthRefresh`` wraps each fetch in it: the fetch runs inside an INTERNAL
        span ``resilience.auth.refresh`` (child of the call span; attributes
        ``resilience.auth.trigger`` and, on failure, ``error.type``; never a
        token) and ``resilience.auth.refreshes`` counts it.

        Args:
            call: the call that needed the token (``None`` outside a call).
            trigger: ``"initial"``, ``"proactive"`` or ``"rejected"``.

        Returns:
            A context manager (a no-op one when nothing records).
        """
        if call is not None:
            state = _trace_of(call)
            if state is None:
                return _NO_SCOPE
            tracer, meters = state.tracer, state.meters
        else:
            tracer, meters = self._tracer.get(), self._meters.get()
            if tracer is None and meters is None:
                return _NO_SCOPE
        return self._refresh_scope(tracer, meters, trigger)

    @contextlib.contextmanager
    def _refresh_scope(
        self,
        tracer: trace.Tracer | None,
        meters: _Meters | None,
        trigger: str,
    ) -> Iterator[None]:
        span: trace.Span | None = None
        token: Token[Context] | None = None
        if tracer is not None:
            span = tracer.start_span(
                REFRESH_SPAN,
                kind=SpanKind.INTERNAL,
                attributes={AUTH_TRIGGER: trigger, **self._identity},
            )
            token = otel_context.attach(trace.set_span_in_context(span))
        error_type: str | None = None
        cancelled = False
        try:
            yield
        except Exception as exc:
            error_type = _error_name(exc)
            raise
        except BaseException:
            cancelled = True
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
            if span is not None:
                if error_type is not None:
                    if span.is_recording():
                        span.set_attribute(ERROR_TYPE, error_type)
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            if meters is not None and not cancelled:
                labels: dict[str, AttributeValue] = {AUTH_TRIGGER: trigger, **self._identity}
                if error_type is not None:
                    labels[ERROR_TYPE] = error_type
                meters.refreshes.add(1, labels)


def _event_span(call: Call | None) -> trace.Span | None:
    """Where an event goes: the call span, or (outside a call) the current span."""
    if call is not None:
        state = _trace_of(call)
        return state.span if state is not None and state.recording else None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def _outcome_of_response(call: Call, response: httpx.Response | None) -> tuple[str, str | None]:
    """``resilience.outcome`` and ``error.type`` of a call that returned a response."""
    report = call.report
    partial = report.partial
    if partial is not None and partial.failures:
        return "partial", None
    if report.fallback is not None:
        # The caller got an answer: the replaced error is the ``resilience.fallback``
        # attribute, not an error of the call.
        return "fallback", None
    last = report.verdicts[-1] if report.verdicts else None
    if last is None or last.action is Action.ACCEPT or last.action is Action.SPLIT:
        return "success", None
    # ``raise_on_failure=False``: the final response of a failed call.
    if response is not None and response.status_code >= 400:
        return "failure", str(response.status_code)
    return "failure", last.reason


def _outcome_of_error(error: BaseException, call: Call) -> str:
    """``resilience.outcome`` of a call that raised ``error``."""
    if not isinstance(error, Exception):
        return "cancelled"  # the caller's cancellation (or an interpreter exit)
    if isinstance(error, errors.CircuitOpenError):
        return "short_circuited"
    if isinstance(error, errors.PartialFailureError):
        return "partial"
    if _is_timeout(error, call.report.gave_up):
        return "timeout"
    return "failure"
