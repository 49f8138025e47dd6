"""Telemetry against the HTTP client conventions, and pipelines told apart by name.

What a sampler sees at span creation, ``network.protocol.version``, the known HTTP
methods, ``url.full``; side by side with opentelemetry-instrumentation-httpx for
the same call; ``Pipeline(name=...)`` on spans, metrics and log records; and a
token a vendor echoes never reaching telemetry. Every test passes its own SDK
providers; none sets the global ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.instrumentation import _semconv
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

import resilience
from resilience import (
    Action,
    AuthRefresh,
    CircuitStateChanged,
    ExponentialBackoff,
    Pipeline,
    PipelineEnv,
    Problem,
    ResilientTransport,
    Retry,
    StaticToken,
    Verdict,
)
from resilience._secret import WITHHELD
from resilience._telemetry_names import KNOWN_METHODS_ENV, LOG_ATTRIBUTE, check_name
from resilience.errors import ConfigurationError
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

HOST = "api.example.test"
URL = f"https://{HOST}/v1/devices"
ONE = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="none")
CONVENTION_KEYS = {
    "http.request.method",
    "server.address",
    "server.port",
    "url.full",
}


class Recording(Sampler):
    """Samples everything, and keeps what each span showed when it was created."""

    def __init__(self, decision: Decision = Decision.RECORD_AND_SAMPLE) -> None:
        self.decision = decision
        self.seen: list[tuple[str, SpanKind | None, dict[str, Any]]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.seen.append((name, kind, dict(attributes or {})))
        return SamplingResult(self.decision, attributes)

    def get_description(self) -> str:
        return "Recording"


@attrs.define
class Otel:
    """An SDK tracer (with a sampler) and meter provider writing to memory."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    sampler: Recording

    def spans(self, scope: str = "resilience") -> list[ReadableSpan]:
        """Finished spans of one instrumentation scope, in start order."""
        return sorted(
            (
                s
                for s in self.exporter.get_finished_spans()
                if s.instrumentation_scope is not None and s.instrumentation_scope.name == scope
            ),
            key=lambda s: s.start_time or 0,
        )

    def attempts(self, scope: str = "resilience") -> list[dict[str, Any]]:
        """The attributes of each CLIENT span of ``scope``, in start order."""
        return [dict(s.attributes or {}) for s in self.spans(scope) if s.kind is SpanKind.CLIENT]

    def points(self, name: str, scope: str = "resilience") -> list[Any]:
        """Data points of the metric ``name`` from the meter of ``scope``."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scoped in resource.scope_metrics:
                if scoped.scope.name != scope:
                    continue
                for metric in scoped.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def everything(self) -> list[object]:
        """Every attribute value recorded: spans, span events, metric points."""
        values: list[object] = []
        for span in self.exporter.get_finished_spans():
            values.append(span.name)
            values.extend((span.attributes or {}).values())
            for event in span.events:
                values.extend((event.attributes or {}).values())
        data = self.reader.get_metrics_data()
        if data is not None:
            for resource in data.resource_metrics:
                for scoped in resource.scope_metrics:
                    for metric in scoped.metrics:
                        for point in metric.data.data_points:
                            values.extend((point.attributes or {}).values())
        return values


def make_otel(decision: Decision = Decision.RECORD_AND_SAMPLE) -> Otel:
    sampler = Recording(decision)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader, tracer_provider, MeterProvider(metric_readers=[reader]), sampler)


@pytest.fixture
def otel() -> Iterator[Otel]:
    found = make_otel()
    yield found
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


def make(otel: Otel, layers: Sequence[Any] = (), **kwargs: Any) -> Pipeline:
    """A pipeline on a virtual clock, recording into ``otel``."""
    return Pipeline(
        list(layers),
        clock=VirtualClock(),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        **kwargs,
    )


async def send(
    pipeline: Pipeline,
    inner: httpx.AsyncBaseTransport,
    url: str = URL,
    method: str = "GET",
) -> httpx.Response:
    """One request through ``pipeline``; the response is read and closed."""
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        return await client.request(method, url)


def retrying() -> Retry:
    return Retry(max_attempts=3, backoff=ONE)


# --- what a sampler sees --------------------------------------------------------------


async def test_a_sampler_sees_the_required_attributes_at_creation(otel: Otel) -> None:
    """should_sample() is given method, address, port and url.full of every attempt
    (the resend count of a resend too), and method, address and port of the call."""
    script = ScriptedTransport.of(reply(503), reply(503), reply(200))
    await send(make(otel, [retrying()]), script, f"{URL}?page=2&api_key=k#top")

    call, *attempts = otel.sampler.seen
    assert call == (
        "resilience.call",
        SpanKind.INTERNAL,
        {
            "http.request.method": "GET",
            "server.address": HOST,
            "server.port": 443,
            "resilience.vendor": "http",
            "resilience.pipeline": "http",
        },
    )
    expected = {
        "http.request.method": "GET",
        "server.address": HOST,
        "server.port": 443,
        "url.full": f"{URL}?page=2&api_key=REDACTED#top",
        "resilience.vendor": "http",
        "resilience.pipeline": "http",
    }
    assert attempts == [
        ("GET", SpanKind.CLIENT, expected),
        ("GET", SpanKind.CLIENT, {**expected, "http.request.resend_count": 1}),
        ("GET", SpanKind.CLIENT, {**expected, "http.request.resend_count": 2}),
    ]
    # What the sampler saw is what the spans carry.
    for span, (_, _, seen) in zip(otel.attempts(), attempts, strict=True):
        assert seen.items() <= span.items()


async def test_a_sampler_that_drops_leaves_the_call_untouched() -> None:
    """A sampler that drops every span: it was still asked with the attributes, the
    call succeeds after its retry, no span is exported, metrics still record."""
    otel = make_otel(Decision.DROP)
    script = ScriptedTransport.of(reply(503), reply(200))
    response = await send(make(otel, [retrying()]), script)
    assert response.status_code == 200
    assert [name for name, _, _ in otel.sampler.seen] == ["resilience.call", "GET", "GET"]
    assert all(seen.keys() >= CONVENTION_KEYS for _, _, seen in otel.sampler.seen[1:])
    assert otel.exporter.get_finished_spans() == ()
    assert sum(p.count for p in otel.points("http.client.request.duration")) == 2


# --- network.protocol.version ------------------------------------------------------------


def versioned(status: int, version: bytes | None) -> Callable[[httpx.Request], httpx.Response]:
    """A step answering ``status`` over ``version`` (as httpcore marks a response)."""

    def step(request: httpx.Request) -> httpx.Response:
        response = reply(status)
        if version is not None:
            response.extensions["http_version"] = version
        return response

    return step


@pytest.mark.parametrize(
    ("sent", "recorded"),
    [
        (b"HTTP/1.1", "1.1"),
        (b"HTTP/2", "2"),
        (b"HTTP/1.0", "1.0"),
        (None, "1.1"),  # httpx reads a response without the extension as HTTP/1.1
        (b"HTTP/3", "3"),
        (b"HTTP/" + b"9" * 40, None),  # an unbounded value from a server is dropped
    ],
)
async def test_network_protocol_version_on_the_span_and_the_duration(
    otel: Otel, sent: bytes | None, recorded: str | None
) -> None:
    """response.http_version becomes network.protocol.version ("HTTP/2" -> "2") on
    the attempt span and on http.client.request.duration."""
    await send(make(otel), ScriptedTransport.of(versioned(200, sent)))
    (attempt,) = otel.attempts()
    (point,) = otel.points("http.client.request.duration")
    assert attempt.get("network.protocol.version") == recorded
    assert point.attributes.get("network.protocol.version") == recorded


async def test_no_protocol_version_without_a_response(otel: Otel) -> None:
    """An attempt that raised has no protocol version (nothing was answered)."""
    script = ScriptedTransport.of(httpx.ConnectError("refused"), reply(200))
    await send(make(otel, [retrying()]), script)
    failed, ok = otel.attempts()
    assert "network.protocol.version" not in failed
    assert ok["network.protocol.version"] == "1.1"


# --- known methods -------------------------------------------------------------------------


async def test_unknown_method_is_other_with_the_original(otel: Otel) -> None:
    """By default PROPFIND is unknown: span name HTTP, method _OTHER, original kept,
    and the metric says _OTHER (never the original: it is unbounded)."""
    await send(make(otel), ScriptedTransport.of(reply(207)), method="PROPFIND")
    (span,) = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert span.name == "HTTP"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "PROPFIND"
    (point,) = otel.points("http.client.request.duration")
    assert point.attributes["http.request.method"] == "_OTHER"
    assert "http.request.method_original" not in point.attributes


async def test_known_methods_from_the_environment(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS replaces the list (case-sensitive,
    read when the pipeline is built): PROPFIND becomes known, POST does not stay."""
    monkeypatch.setenv(KNOWN_METHODS_ENV, "GET, PROPFIND,get")
    pipeline = make(otel)
    monkeypatch.delenv(KNOWN_METHODS_ENV)
    await send(pipeline, ScriptedTransport.of(reply(207)), method="PROPFIND")
    await send(pipeline, ScriptedTransport.of(reply(200)), method="POST")
    propfind, post = otel.attempts()
    assert propfind["http.request.method"] == "PROPFIND"
    assert "http.request.method_original" not in propfind
    assert post["http.request.method"] == "_OTHER"
    assert post["http.request.method_original"] == "POST"
    call = [dict(s.attributes or {}) for s in otel.spans() if s.name == "resilience.call"]
    assert [c["http.request.method"] for c in call] == ["PROPFIND", "_OTHER"]


async def test_known_methods_option_wins_over_the_environment(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipeline(known_methods=...) is used as given, whatever the environment says."""
    monkeypatch.setenv(KNOWN_METHODS_ENV, "GET")
    pipeline = make(otel, known_methods=["GET", "PURGE"])
    await send(pipeline, ScriptedTransport.of(reply(200)), method="PURGE")
    (attempt,) = otel.attempts()
    assert attempt["http.request.method"] == "PURGE"


def test_bad_entries_in_the_environment_are_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment's bad variable is logged and skipped, never raised; with nothing
    usable left the conventions' list stays."""
    from resilience._telemetry_names import DEFAULT_KNOWN_METHODS, known_methods_from_env

    monkeypatch.setenv(KNOWN_METHODS_ENV, "GET,BAD METHOD,,PURGE")
    with caplog.at_level(logging.WARNING, logger="resilience"):
        assert known_methods_from_env() == {"GET", "PURGE"}
    assert any("BAD METHOD" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(KNOWN_METHODS_ENV, " , ")
    assert known_methods_from_env() == DEFAULT_KNOWN_METHODS


@pytest.mark.parametrize(
    "value",
    ["GET", b"GET", 3, [], ["GE T"], [""], ["GET", 1], ["GET\n"]],
)
def test_bad_known_methods_fail_at_construction(value: Any) -> None:
    """known_methods= must be a non-empty collection of RFC 9110 method tokens."""
    with pytest.raises(ConfigurationError, match="known_methods"):
        Pipeline(known_methods=value)


# --- side by side with opentelemetry-instrumentation-httpx ----------------------------------


@pytest.fixture
def stable_http_semconv(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OTEL_SEMCONV_STABILITY_OPT_IN=http, as a deployment sets it: the instrumentation
    reads it once per process, so its cached reading is reset around the test."""
    stability = _semconv._OpenTelemetrySemanticConventionStability
    saved = (stability._initialized, dict(stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING))
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    stability._initialized = False
    yield
    stability._initialized, mapping = saved
    stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING = mapping


THEIRS = "opentelemetry.instrumentation.httpx"
# Set by the instrumentation only, from the URL (not the socket, as the conventions
# define them): resilience does not guess them.
THEIRS_ONLY = {"network.peer.address", "network.peer.port"}


def conventional(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes the HTTP conventions define (ours without resilience.*)."""
    return {
        key: value
        for key, value in attributes.items()
        if not key.startswith("resilience.") and key not in THEIRS_ONLY
    }


async def test_side_by_side_with_the_httpx_instrumentation(
    otel: Otel, stable_http_semconv: None
) -> None:
    """One GET with two retries, the instrumentation wrapping the inner transport:
    each attempt's CLIENT spans (ours and its child) carry the same convention
    attributes and values, names and statuses, and both record the same
    http.client.request.duration points; ours add only resilience.* keys."""
    inner = AsyncOpenTelemetryTransport(
        ScriptedTransport.of(versioned(503, b"HTTP/2"), reply(503), reply(200)),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        request_hook=resilience.request_hook,
    )
    url = f"https://user:pw@{HOST}:8443/v1/devices?page=2&sig=abc#frag"
    response = await send(make(otel, [retrying()]), inner, url)
    assert response.status_code == 200

    ours = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    theirs = [s for s in otel.spans(THEIRS) if s.kind is SpanKind.CLIENT]
    assert len(ours) == len(theirs) == 3
    for mine, its in zip(ours, theirs, strict=True):
        assert (mine.name, mine.status.status_code) == (its.name, its.status.status_code)
        assert conventional(mine.attributes or {}) == conventional(its.attributes or {})
        assert {k for k in (mine.attributes or {}) if k not in (its.attributes or {})} <= {
            "resilience.vendor",
            "resilience.pipeline",
            "resilience.verdict",
            "resilience.problem.code",
        }
    first = dict(ours[0].attributes or {})
    assert first["url.full"] == (
        f"https://REDACTED:REDACTED@{HOST}:8443/v1/devices?page=2&sig=REDACTED#frag"
    )
    assert first["network.protocol.version"] == "2"
    assert [dict(s.attributes or {}).get("http.request.resend_count") for s in ours] == [
        None,
        1,
        2,
    ]

    def durations(scope: str) -> list[tuple[tuple[str, Any], ...]]:
        return sorted(
            tuple(sorted(conventional(p.attributes).items()))
            for p in otel.points("http.client.request.duration", scope)
            for _ in range(p.count)
        )

    assert durations("resilience") == durations(THEIRS)
    assert len(durations("resilience")) == 3


async def test_server_port_is_filled_in_where_the_instrumentation_omits_it(
    otel: Otel, stable_http_semconv: None
) -> None:
    """The one documented difference: with no port in the URL the conventions still
    require server.port (443 for https); the instrumentation leaves it out."""
    inner = AsyncOpenTelemetryTransport(
        ScriptedTransport.of(reply(200)),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    await send(make(otel), inner)
    (mine,) = otel.attempts()
    (its,) = otel.attempts(THEIRS)
    assert mine["server.port"] == 443
    assert "server.port" not in its
    assert conventional(mine) == {**conventional(its), "server.port": 443}


# --- named pipelines -----------------------------------------------------------------------


def test_a_pipeline_is_named_after_its_vendor_by_default() -> None:
    """No name: the classifier's vendor name; the presets the same, unless overridden."""
    assert Pipeline().name == "http"
    assert Pipeline().env.name == "http"
    assert "name=" not in repr(Pipeline())
    assert resilience.standard_pipeline("http").name == "http"
    assert resilience.standard_pipeline("tellus", auth=StaticToken("t")).name == "tellus"
    named = resilience.standard_pipeline("tellus", auth=StaticToken("t"), name="tellus-eu")
    assert named.name == named.env.name == "tellus-eu"
    assert "name='tellus-eu'" in repr(named)


@pytest.mark.parametrize("value", ["", "   ", "a\nb", "red\x1b[31m", "tab\there", 7, b"x"])
def test_a_bad_name_fails_at_construction(value: Any) -> None:
    """name= must be a non-empty printable str (it lands in logs and metrics)."""
    with pytest.raises(ConfigurationError, match="name"):
        Pipeline(name=value)


@given(st.text(min_size=1, max_size=40))
def test_names_are_printable_text(value: str) -> None:
    """Any printable, non-blank text is a name; anything else is refused."""
    if value.isprintable() and value.strip():
        assert check_name(value) == value
    else:
        with pytest.raises(ConfigurationError):
            check_name(value)


@attrs.frozen
class SeesEnv:
    """Test-only: records the name of the pipeline it is bound into, and reports a
    breaker state change on each call (as a breaker layer would)."""

    names: list[str] = attrs.field(factory=list)

    def bind(self, env: PipelineEnv) -> Any:
        self.names.append(env.name)

        async def handler(request: httpx.Request, call: Any, call_next: Any) -> Any:
            if call.report.attempts == 0:
                env.emit(CircuitStateChanged(key="k", old="closed", new="open"), call)
            return await call_next(request, call)

        return handler


async def test_two_pipelines_for_one_vendor_are_told_apart(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """Two pipelines on the http classifier, named eu and us: every span, metric
    point and log record of each call carries its own pipeline's name; layers see
    it as env.name."""
    seen = SeesEnv()
    auth = AuthRefresh(StaticToken("tok-12345678"), origins=[URL])
    pipelines = {name: make(otel, [retrying(), seen, auth], name=name) for name in ("eu", "us")}
    assert seen.names == ["eu", "us"]
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        for name, pipeline in pipelines.items():
            await send(pipeline, ScriptedTransport.of(reply(503), reply(200)), f"{URL}?{name}")

    for span in otel.spans():
        attributes = dict(span.attributes or {})
        url = str(attributes.get("url.full", ""))
        assert attributes["resilience.vendor"] == "http"
        assert attributes["resilience.pipeline"] in {"eu", "us"}
        if url:
            assert url.endswith(str(attributes["resilience.pipeline"]))
    names = {s.name for s in otel.spans()}
    assert names == {"resilience.call", "resilience.auth.refresh", "GET"}
    for metric in (
        "resilience.client.call.duration",
        "resilience.client.call.retries",
        "resilience.client.call.retry_delay",
        "resilience.auth.refreshes",
        "resilience.circuit_breaker.state",
        "http.client.request.duration",
    ):
        by_name = {p.attributes["resilience.pipeline"] for p in otel.points(metric)}
        assert by_name == {"eu", "us"}, metric
    # The library's own records (Retry's, the breaker's, AuthRefresh's) say which
    # pipeline wrote them; records outside a call say none.
    ours = [r for r in caplog.records if r.name == "resilience"]
    retries = [r for r in ours if "retry" in r.getMessage()]
    assert [getattr(r, LOG_ATTRIBUTE) for r in retries] == ["eu", "us"]
    assert {getattr(r, LOG_ATTRIBUTE) for r in ours} == {"eu", "us"}
    logging.getLogger("resilience").warning("outside any call")
    assert getattr(caplog.records[-1], LOG_ATTRIBUTE) is None


async def test_log_records_carry_the_name_with_telemetry_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The name on log records needs no OpenTelemetry: telemetry=False keeps it."""
    pipeline = Pipeline([retrying()], clock=VirtualClock(), telemetry=False, name="batch")
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        await send(pipeline, ScriptedTransport.of(reply(503), reply(200)))
    (retry,) = [r for r in caplog.records if "retry" in r.getMessage()]
    assert getattr(retry, LOG_ATTRIBUTE) == "batch"


def test_an_explicit_extra_wins(caplog: pytest.LogCaptureFixture) -> None:
    """A record that already names a pipeline (``extra=``) keeps it."""
    with caplog.at_level(logging.INFO, logger="resilience"):
        logging.getLogger("resilience").info("x", extra={LOG_ATTRIBUTE: "mine"})
    assert getattr(caplog.records[-1], LOG_ATTRIBUTE) == "mine"


# --- a token the vendor echoes -----------------------------------------------------------------

TOKEN = "tok-ECHOED-0123456789"


@attrs.frozen
class Echoing:
    """Test-only classifier: a 200 whose body holds an error envelope is a RETRY
    with the envelope's code and request id, as a vendor classifier reads them."""

    vendor: str = "echo"

    def classify(
        self, request: httpx.Request, response: httpx.Response | None, error: BaseException | None
    ) -> Verdict:
        if response is None:
            return Verdict(Action.RETRY)
        body = json.loads(response.content or b"{}")
        if "error" not in body:
            return Verdict(Action.ACCEPT)
        problem = Problem(
            vendor=self.vendor,
            status=response.status_code,
            code=body["error"],
            request_id=body["request_id"],
        )
        return Verdict(Action.RETRY, problem=problem)


def echo_then_ok() -> ScriptedTransport:
    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.headers["authorization"]
        return reply(200, json={"error": f"bad_token:{sent}", "request_id": sent[7:]})

    def ok(request: httpx.Request) -> httpx.Response:
        return reply(200, json={"ok": True})

    return ScriptedTransport.of(echo, ok)


async def test_a_token_the_vendor_echoes_never_reaches_telemetry(otel: Otel) -> None:
    """A vendor echoing the bearer token in its error code and request id (in a 200):
    the attempt span, written before AuthRefresh cleans the outcome, the retry event
    and every metric attribute show it withheld, never the token."""
    pipeline = make(
        otel,
        [retrying(), AuthRefresh(StaticToken(TOKEN), origins=[URL])],
        classifier=Echoing(),
    )
    response = await send(pipeline, echo_then_ok())
    assert response.status_code == 200

    recorded = otel.everything()
    assert not [value for value in recorded if TOKEN in str(value)]
    failed, ok = otel.attempts()
    assert failed["resilience.problem.code"] == WITHHELD
    assert failed["resilience.problem.request_id"] == WITHHELD
    assert failed["error.type"] == WITHHELD
    assert "error.type" not in ok
    (retries,) = otel.points("resilience.client.call.retries")
    assert retries.attributes["error.type"] == WITHHELD
