"""Reading a response body within a cap, and closing one that is not wanted.

Where it sits in the flow: the engine's innermost step reads the body of each
attempt the classifier needs to see (every error, and successes for classifiers
that read them) with :func:`buffer_response` before it classifies;
:class:`~resilience._layer.Outcome` reads one later on demand, and the token
reader reads a token endpoint's answer with it. Every layer that drops a
response (a retried attempt, a lost hedge, a replaced answer) closes it with
:func:`aclose_quietly`. Nothing here knows about layers or classifiers: only
httpx, anyio and zlib.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx

__all__ = [
    "BODY_TRUNCATED",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ERROR_BODY_BYTES",
    "aclose_quietly",
    "buffer_response",
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


async def aclose_quietly(response: httpx.Response) -> None:
    """Close a response, shielded from cancellation, ignoring transport errors."""
    if response.is_closed:
        # Closed already (a body in memory is closed as it is read): httpx's
        # aclose() would do nothing either.
        return
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
    if isinstance(stream, httpx.ByteStream):
        # Already in memory (mock and ASGI transports, a buffered replay): no I/O,
        # no connection to release, and nothing to replace.
        read = response.__dict__.get("_content") if _IDENTITY_SHORTCUT else None
        if type(read) is bytes:
            # And already read (``Response(content=...)`` reads it as it is built):
            # httpx decoded it whole then, so the copy takes its first bytes and
            # shares the stream (the raw bytes are not needed).
            truncated = len(read) > max_bytes
            content = read[:max_bytes] if truncated else read
            return _view(response, request, b"", content, truncated, stream)
        raw = b"".join(stream)
        headers = response.headers
        decoder = _bounded_decoder(headers) if "content-encoding" in headers else None
        if decoder is None:
            truncated = len(raw) > max_bytes
            content = raw[:max_bytes] if truncated else raw
        else:
            content, truncated = await _decode_bounded(decoder, raw, max_bytes, response)
        return _view(response, request, raw, content, truncated, stream)
    headers = response.headers
    decoder = _bounded_decoder(headers) if "content-encoding" in headers else None
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
    response: httpx.Response,
    request: httpx.Request,
    raw: bytes,
    content: bytes,
    truncated: bool,
    stream: httpx.ByteStream | None = None,
) -> httpx.Response:
    """The read copy: the response's status, headers and extensions, ``content`` as body.

    ``stream``: the response's own stream over ``raw``, when it has one (a
    ``ByteStream`` holds its bytes and nothing else, so the copy shares it).
    """
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
        stream=httpx.ByteStream(raw) if stream is None else stream,
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
