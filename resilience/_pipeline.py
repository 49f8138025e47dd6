"""The pipeline: layers around an innermost step that sends and classifies.

``ResilientTransport`` hands each request to :meth:`Pipeline.handle`, which runs
the bound layers outermost first. Each layer is an async middleware
``handler(request, call, call_next) -> Outcome``; the innermost step sends the
request with the inner transport, reads the body when the classifier needs it
(bounded: see :func:`buffer_response`), and asks the classifier for exactly one
:class:`Verdict` per attempt. What comes out of the top is returned (ACCEPT,
SPLIT) or raised as a typed error.
"""

from __future__ import annotations

import inspect
import logging
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs
import httpx

from . import errors
from ._classifier import HTTP_CLASSIFIER, Classifier, classify_error, resolve_classifier
from ._clock import SYSTEM_CLOCK, Clock
from ._events import Event
from ._report import CallReport
from ._telemetry_names import CURRENT_PIPELINE, check_known_methods, check_name
from ._verdict import Action, Verdict, verdict_fault

__all__ = [
    "BODY_TRUNCATED",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ERROR_BODY_BYTES",
    "Call",
    "CallNext",
    "Handler",
    "Layer",
    "Outcome",
    "Pipeline",
    "PipelineEnv",
]

logger = logging.getLogger("resilience")

DEFAULT_MAX_BODY_BYTES = 16 << 20
"""Of a success body a classifier reads (``needs_body``), at most this much (16 MiB,
decoded) is read and shown to it; the caller still gets the whole body."""
DEFAULT_MAX_ERROR_BODY_BYTES = 1 << 20
"""Of an error body (status >= 400), at most this much (1 MiB, decoded) is read."""
BODY_TRUNCATED = "resilience.body_truncated"
"""The extension set (``True``) on a read copy whose body was cut at the cap: the
classifier (and an error's ``.response``) sees only the first bytes."""


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
    shared: dict[str, Any] = attrs.field(factory=dict)
    """Runtime state layers share (the retry budget, the breaker registry)."""
    instrument: Any = None
    """The telemetry instrumentation, or ``None`` when telemetry is off."""
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

        A classifier that raises or returns something else (or a malformed
        :class:`Verdict`: a ``problem`` that is no :class:`Problem`, a
        ``breaker_failure`` that is no bool) is logged (by name) and the generic
        status-code reading is used instead.
        """
        classifier = self.env.classifier
        try:
            verdict = classifier.classify(request, response, error)
            fault = verdict_fault(verdict)
            if fault is not None:
                raise TypeError(fault)
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


async def buffer_response(
    response: httpx.Response, request: httpx.Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> httpx.Response:
    """Read the body once, at most ``max_bytes`` of it; return a read copy.

    The copy is what a classifier or an error's ``.response`` looks at. Both what
    is read off the wire and what is decoded from it stop just past ``max_bytes``
    (the decoded size counts, so a compression bomb costs ``max_bytes``, not what
    it inflates to), and the decoding yields to the event loop every
    :data:`_CHECKPOINT_BYTES`, so a cancel scope (``Timeout(attempt=...)``) can
    end it.

    ``response`` keeps its headers and extensions and gets a stream over the raw
    bytes, so the client reads (and decodes) it as if nothing happened. A body
    longer than the cap is still whole for the client: its stream replays what was
    read and then goes on with the rest, unread. The copy then holds only the
    first ``max_bytes`` (decoded) and carries ``extensions[BODY_TRUNCATED] = True``.
    """
    stream = response.stream
    headers = response.headers
    encoded = "content-encoding" in headers
    decoder = _bounded_decoder(headers) if encoded else None
    if isinstance(stream, httpx.ByteStream):
        # Already in memory (mock and ASGI transports, a buffered replay): no I/O,
        # no connection to release, and nothing to replace.
        raw = b"".join(stream)
        if decoder is None:
            truncated = len(raw) > max_bytes
            content = raw[:max_bytes] if truncated else raw
        else:
            content, truncated = await _decode_bounded(decoder, raw, max_bytes, response)
        return _view(response, request, raw, content, truncated)
    chunks: list[bytes] = []
    pieces: list[bytes] = []
    raw_size = 0
    decoded_size = 0
    truncated = False
    iterator = stream.__aiter__()  # type: ignore[union-attr]
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            chunks.append(chunk)
            raw_size += len(chunk)
            if decoder is not None:
                try:
                    decoded_size += await decoder.feed(chunk, pieces, max_bytes - decoded_size)
                except httpx.DecodingError:
                    if response.status_code < 400:
                        raise
                    decoder = None  # an error page that does not decode: its raw bytes
                    pieces = []
            if decoder is None:
                if raw_size > max_bytes:
                    truncated = True
                    break
            elif decoded_size > max_bytes or raw_size > _wire_cap(max_bytes):
                truncated = True
                break
        if decoder is not None and not truncated:
            try:
                decoded_size += await decoder.finish(pieces, max_bytes - decoded_size)
            except httpx.DecodingError:
                if response.status_code < 400:
                    raise
                decoder = None
            else:
                truncated = decoded_size > max_bytes
    except BaseException:
        await _close_shielded(stream, iterator)
        raise
    raw = b"".join(chunks)
    if truncated:
        # The rest stays on the wire: the client reads it through the same stream.
        response.stream = _Resumed(raw, iterator, stream)
    else:
        await _close_shielded(stream)
        response.stream = httpx.ByteStream(raw)
    if decoder is None:
        content = raw[:max_bytes] if len(raw) > max_bytes else raw
    else:
        content = b"".join(pieces)[:max_bytes]
    return _view(response, request, raw, content, truncated)


async def _close_shielded(stream: Any, iterator: Any = None) -> None:
    """Close a body stream (and the iterator a read left half-way), shielded."""
    with anyio.CancelScope(shield=True):
        try:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                # An async generator left half-way warns when collected unclosed.
                await close()
        finally:
            await stream.aclose()


def _view(
    response: httpx.Response, request: httpx.Request, raw: bytes, content: bytes, truncated: bool
) -> httpx.Response:
    """The read copy: the response's status, headers and extensions, ``content`` as body."""
    extensions = response.extensions
    if truncated:
        extensions = {**extensions, BODY_TRUNCATED: True}
    if not _IDENTITY_SHORTCUT:  # pragma: no cover - an httpx that stores content differently
        plain = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"
        ]
        view = httpx.Response(
            response.status_code,
            headers=plain,
            stream=httpx.ByteStream(content),
            request=request,
            extensions=extensions,
        )
        view.read()
        return view
    view = httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        request=request,
        extensions=extensions,
    )
    # httpx's read() would run the (unbounded) decoders again to arrive at the same
    # bytes; the content is already decoded, within the cap.
    view._content = content
    return view


class _Resumed(httpx.AsyncByteStream):
    """A body read in part: the raw bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: AsyncIterator[bytes], stream: Any) -> None:
        self._head = head
        self._rest = rest
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head, self._head = self._head, b""
        if head:
            yield head
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        self._head = b""
        await _close_shielded(self._stream, self._rest)


#: Decoded bytes between two checkpoints while decoding a body (~1 ms of inflate).
_CHECKPOINT_BYTES = 1 << 20
#: Most output one decoder step produces, and input slice fed from a body in memory.
_DECODE_STEP = 64 << 10
_RAW_STEP = 64 << 10
#: Input fed at once to a decoder that cannot bound its output (brotli, zstd).
_OPAQUE_STEP = 1 << 10


def _wire_cap(max_bytes: int) -> int:
    """The most encoded bytes read for at most ``max_bytes`` decoded.

    Compression adds a little to what it cannot shrink (headers, block framing:
    well under 1%); more than this on the wire cannot decode to ``max_bytes``.
    """
    return max_bytes + max_bytes // 64 + 4096


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


async def _decode_bounded(
    decoder: _BoundedDecoder, raw: bytes, max_bytes: int, response: httpx.Response
) -> tuple[bytes, bool]:
    """Decode a body held in memory up to just past ``max_bytes``: (content, truncated)."""
    pieces: list[bytes] = []
    size = 0
    try:
        for chunk in _slices(raw, _RAW_STEP):
            size += await decoder.feed(chunk, pieces, max_bytes - size)
            if size > max_bytes:
                return b"".join(pieces)[:max_bytes], True
        size += await decoder.finish(pieces, max_bytes - size)
    except httpx.DecodingError:
        if response.status_code < 400:
            raise
        # An error page that does not decode (a proxy's HTML under a gzip header):
        # the status still says what happened; a classifier reads the raw bytes as
        # a body it cannot parse.
        return raw[:max_bytes], len(raw) > max_bytes
    return b"".join(pieces)[:max_bytes], size > max_bytes


class _Inflate:
    """One gzip or deflate layer whose output per step is bounded (zlib max_length)."""

    def __init__(self, name: str) -> None:
        # "deflate" is either zlib-wrapped (the RFC) or raw deflate (many servers):
        # as httpx does, the first bytes are tried as zlib, then as raw deflate.
        self._undecided = name == "deflate"
        self._head = b""
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if name == "gzip" else zlib.MAX_WBITS)

    def steps(self, data: bytes) -> Iterator[bytes]:
        if self._undecided:
            self._head += data
            if len(self._head) < 2:
                return  # too little to tell a zlib header from raw deflate
            data, self._head = self._head, b""
            yield from self._first_steps(data)
            return
        yield from self._steps(data)

    def _first_steps(self, data: bytes) -> Iterator[bytes]:
        self._undecided = False
        try:
            first = self._zlib.decompress(data, _DECODE_STEP)
        except zlib.error:
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            yield from self._steps(data)
            return
        if first:
            yield first
        yield from self._steps(self._zlib.unconsumed_tail)

    def _steps(self, data: bytes) -> Iterator[bytes]:
        inflater = self._zlib
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, _DECODE_STEP)
            except zlib.error as exc:
                raise httpx.DecodingError(str(exc)) from exc
            data = inflater.unconsumed_tail
            if out:
                yield out

    def flush(self) -> bytes:
        try:
            if self._head:  # a one-byte body: as zlib, as httpx reads it
                self._undecided = False
                return self._zlib.decompress(self._head) + self._zlib.flush()
            return self._zlib.flush()
        except zlib.error as exc:
            raise httpx.DecodingError(str(exc)) from exc


class _Opaque:
    """A decoder that cannot bound its output (brotli, zstd): fed a little at a time."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder

    def steps(self, data: bytes) -> Iterator[bytes]:
        for piece in _slices(data, _OPAQUE_STEP):
            out = self._decoder.decode(piece)
            if out:
                yield out

    def flush(self) -> bytes:
        return bytes(self._decoder.flush())


class _BoundedDecoder:
    """The ``Content-Encoding`` layers of a body, decoded a bounded step at a time."""

    def __init__(self, layers: list[_Inflate | _Opaque]) -> None:
        self._layers = layers
        self.since_checkpoint = 0

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self._layers):
            yield data
            return
        for out in self._layers[index].steps(data):
            yield from self._through(index + 1, out)

    async def _collect(self, outputs: Iterator[bytes], pieces: list[bytes], room: int) -> int:
        """Append ``outputs`` to ``pieces`` until past ``room``; the bytes appended.

        One raw chunk may inflate a thousandfold: every :data:`_CHECKPOINT_BYTES`
        decoded, the event loop gets a turn (and a cancel scope its chance).
        """
        size = 0
        for out in outputs:
            pieces.append(out)
            size += len(out)
            if size > room:
                break  # past the cap: the rest is never decoded
            self.since_checkpoint += len(out)
            if self.since_checkpoint >= _CHECKPOINT_BYTES:
                self.since_checkpoint = 0
                await anyio.lowlevel.checkpoint()
        return size

    async def feed(self, chunk: bytes, pieces: list[bytes], room: int) -> int:
        """Decode one raw chunk; the decoded bytes added to ``pieces``."""
        return await self._collect(self._through(0, chunk), pieces, room)

    async def finish(self, pieces: list[bytes], room: int) -> int:
        """The end of the body: flush each layer into the ones after it."""
        size = 0
        for index, layer in enumerate(self._layers):
            tail = layer.flush()
            if tail:
                size += await self._collect(self._through(index + 1, tail), pieces, room - size)
        return size


def _bounded_decoder(headers: httpx.Headers) -> _BoundedDecoder | None:
    """The decoder for a body's ``Content-Encoding`` (as httpx reads the header), or
    ``None`` when there is nothing to decode."""
    layers: list[_Inflate | _Opaque] = []
    for value in headers.get_list("content-encoding", split_commas=True):
        name = value.strip().lower()
        if name in ("gzip", "deflate"):
            layers.append(_Inflate(name))
        elif name in _OPAQUE_DECODERS:
            layers.append(_Opaque(_OPAQUE_DECODERS[name]()))
        # httpx ignores "identity" and encodings it does not know, and so do we.
    # The header lists encodings in the order they were applied: undo the last first.
    layers.reverse()
    return _BoundedDecoder(layers) if layers else None


def _opaque_decoders() -> dict[str, Callable[[], Any]]:
    """httpx's decoders for the encodings zlib does not cover (when installed)."""
    try:
        from httpx._decoders import SUPPORTED_DECODERS
    except ImportError:  # pragma: no cover - a different httpx
        return {}
    return {
        name: cls
        for name, cls in SUPPORTED_DECODERS.items()
        if name not in ("identity", "gzip", "deflate")
    }


_OPAQUE_DECODERS = _opaque_decoders()


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
        layers: Sequence[Any] = (),
        *,
        classifier: str | Classifier = "http",
        clock: Clock | None = None,
        raise_on_failure: bool = True,
        hooks: Sequence[Callable[[Event], object]] | Callable[[Event], object] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_error_body_bytes: int = DEFAULT_MAX_ERROR_BODY_BYTES,
        telemetry: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
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
        self.layers: tuple[Any, ...] = tuple(layers)
        self.classifier: Classifier = resolve_classifier(classifier)
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.raise_on_failure = raise_on_failure
        instrument = None
        if telemetry:
            from ._telemetry import make_instrumentation

            instrument = make_instrumentation(
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
        self._max_body = max_body_bytes
        self._max_error_body = max_error_body_bytes
        # Inner transports seen reporting connection progress through the "trace"
        # extension: for those, an attempt cut before any report was queueing here.
        self._tracing: weakref.WeakSet[Any] = weakref.WeakSet()
        self._chain: CallNext = self._build_chain()

    def _build_chain(self) -> CallNext:
        call_next: CallNext = self._send
        # Bind innermost first, so an outer layer can find what an inner one shares.
        for layer in reversed(self.layers):
            call_next = _link(layer.bind(self.env), call_next)
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
        instrument = self.env.instrument
        # The name the library's log records of this call carry (_telemetry_names).
        named = CURRENT_PIPELINE.set(self.name)
        try:
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
        finally:
            CURRENT_PIPELINE.reset(named)

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
        progress = _Progress(request.extensions)
        try:
            with anyio.move_on_after(limit):
                return await self._attempt_once(request, call)
        finally:
            progress.restore()
            if progress.reached:
                self._tracing.add(call.inner)
        inner = call.inner
        if not progress.reached and (
            isinstance(inner, httpx.AsyncHTTPTransport) or inner in self._tracing
        ):
            # The transport reports each request that gets a connection, and this
            # one never got one: the time went waiting in our own pool.
            pooled = httpx.PoolTimeout(
                f"no connection within the attempt timeout of {limit:g}s", request=request
            )
            return call.classify_local(request, pooled)
        error = httpx.TimeoutException(f"attempt timed out after {limit:g}s", request=request)
        return call.classify_unfinished(request, error)

    async def _attempt_once(self, request: httpx.Request, call: Call) -> Outcome:
        try:
            response = await call.inner.handle_async_request(request)
        except Exception as exc:
            if isinstance(exc, httpx.PoolTimeout):
                return call.classify_local(request, exc)
            return Outcome(request, call.classify(request, None, exc), error=exc)
        view: httpx.Response | None = None
        status = response.status_code
        if status >= 400 or self._needs_body:
            limit = self._max_error_body if status >= 400 else self._max_body
            try:
                view = await buffer_response(response, request, limit)
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


def _link(handler: Handler, call_next: CallNext) -> CallNext:
    # Not a coroutine function: it hands back the handler's own awaitable, so each
    # layer costs one coroutine per call, not two.
    def step(request: httpx.Request, call: Call) -> Awaitable[Outcome]:
        return handler(request, call, call_next)

    return step
