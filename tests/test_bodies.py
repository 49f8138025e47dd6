"""Reading bodies to classify them: bounded in bytes read and bytes decoded,
cancellable, and the caller's body left whole."""

from __future__ import annotations

import functools
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import Action, Pipeline, Retry, Timeout, Verdict
from resilience._bodies import buffer_response
from resilience._classifier import HttpClassifier
from resilience.errors import ConfigurationError, RetriesExhausted
from resilience.testing import ClosingStream, ScriptedTransport, through

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
#: What marks a read copy cut at the cap (documented in the README).
BODY_TRUNCATED = "resilience.body_truncated"
KIB = 1024
MIB = 1024 * KIB


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about a thousandth of ``size`` on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * MIB
    parts = [packer.compress(block) for _ in range(size // MIB)]
    return b"".join(parts) + packer.flush()


class Seeing(HttpClassifier):
    """The generic classifier, keeping what it was shown of each body."""

    def __init__(self, *, needs_body: bool = True) -> None:
        self.needs_body = needs_body  # type: ignore[misc]
        self.shown: list[tuple[int, bool]] = []

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is not None and hasattr(response, "_content"):
            truncated = bool(response.extensions.get(BODY_TRUNCATED))
            self.shown.append((len(response.content), truncated))
        return super().classify(request, response, error)


class EndlessStream(ClosingStream):
    """A body that never ends: ``piece`` after ``piece``, a checkpoint between them."""

    def __init__(self, piece: bytes) -> None:
        super().__init__(b"")
        self.piece = piece
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await anyio.lowlevel.checkpoint()
            self.sent += len(self.piece)
            yield self.piece


def gzipped(status: int, body: bytes, *, chunks: int = 1) -> httpx.Response:
    return httpx.Response(
        status, headers={"content-encoding": "gzip"}, stream=ClosingStream(body, chunks=chunks)
    )


@pytest.mark.parametrize("in_memory", [False, True], ids=["streamed", "in memory"])
async def test_a_gzip_bomb_error_body_costs_the_cap_not_what_it_inflates_to(
    in_memory: bool,
) -> None:
    """A 64 KiB gzip body that inflates to 64 MiB, on a 503: the pipeline decodes
    1 MiB of it (the error-body cap), the error's response holds that and says it
    was cut, the verdicts are the status's, and every stream is closed."""
    bomb = gzip_bomb(64 * MIB)

    def answer(request: httpx.Request) -> httpx.Response:
        if in_memory:
            # As an ASGI app or a buffered replay hands it over (content= would make
            # httpx itself decode it, here in the test).
            stream = httpx.ByteStream(bomb)
            return httpx.Response(503, headers={"content-encoding": "gzip"}, stream=stream)
        return gzipped(503, bomb)

    inner = ScriptedTransport.of(answer)
    transport = through(inner, Retry(max_attempts=2))
    tracemalloc.start()
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MIB
    error = info.value
    assert error.response is not None
    assert len(error.response.content) == MIB
    assert error.response.extensions[BODY_TRUNCATED] is True
    assert [v.reason for v in error.report.verdicts] == ["503", "503"]
    assert inner.unclosed() == []


async def test_an_endless_error_body_stops_at_the_cap() -> None:
    """An error body that never ends is read to the cap and no further: the call
    ends (by the status), the connection is closed, the error holds the first bytes."""
    streams: list[EndlessStream] = []

    def answer(request: httpx.Request) -> httpx.Response:
        stream = EndlessStream(b"<html>" + b"x" * (64 * KIB))
        streams.append(stream)
        return httpx.Response(502, headers={"content-type": "text/html"}, stream=stream)

    transport = through(ScriptedTransport.of(answer), max_error_body_bytes=256 * KIB)
    with anyio.fail_after(10):
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
    error = info.value
    assert error.problem is not None
    assert error.problem.status == 502
    assert error.response is not None
    assert len(error.response.content) == 256 * KIB
    assert error.response.text.startswith("<html>")
    assert streams[0].closed
    assert streams[0].sent <= 256 * KIB + 2 * 64 * KIB


@pytest.mark.parametrize("encoded", [False, True], ids=["plain", "gzip"])
async def test_a_success_body_over_the_cap_reaches_the_caller_whole(encoded: bool) -> None:
    """A 3 MB JSON list under a classifier that reads success bodies, with a 64 KiB
    cap: the classifier is shown the first 64 KiB, marked as cut; the caller gets
    the whole list, and the connection is closed once it is read."""
    items = [{"id": i, "name": f"item-{i}"} for i in range(100_000)]
    payload = json.dumps(items).encode()
    assert len(payload) > 2 * MIB
    streams: list[ClosingStream] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = gzip.compress(payload) if encoded else payload
        stream = ClosingStream(body, chunks=64)
        streams.append(stream)
        headers = {"content-type": "application/json"}
        if encoded:
            headers["content-encoding"] = "gzip"
        return httpx.Response(200, headers=headers, stream=stream)

    seeing = Seeing()
    transport = through(ScriptedTransport.of(answer), classifier=seeing, max_body_bytes=64 * KIB)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(URL)
        assert response.json() == items
        async with client.stream("GET", URL) as streamed:
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
    assert body == payload
    assert seeing.shown == [(64 * KIB, True), (64 * KIB, True)]
    assert response.extensions["resilience"].verdicts[0].action is Action.ACCEPT
    assert all(stream.closed for stream in streams)


async def test_a_needs_body_false_classifier_still_streams() -> None:
    """The caps change nothing for a classifier that does not read success bodies:
    a body larger than the cap is not touched before the caller streams it."""
    stream = ClosingStream(b"y" * (2 * MIB), chunks=32)
    inner = ScriptedTransport.of(lambda request: httpx.Response(200, stream=stream))
    transport = through(inner, max_body_bytes=KIB)
    client = httpx.AsyncClient(transport=transport)
    async with client, client.stream("GET", URL) as response:
        assert stream.read is False
        sizes = [len(chunk) async for chunk in response.aiter_raw()]
    assert sum(sizes) == 2 * MIB
    assert stream.closed


async def test_decoding_a_bomb_yields_to_the_attempt_timeout() -> None:
    """With a cap too large to help (1 GiB), a 64 MiB bomb still cannot hold the
    event loop: decoding yields between steps, so Timeout(attempt=...) cuts the
    attempt (its verdict is the timeout's, not the status's)."""
    bomb = gzip_bomb(64 * MIB)
    inner = ScriptedTransport.of(lambda request: gzipped(503, bomb))
    transport = through(
        inner, Retry(max_attempts=1), Timeout(attempt=0.02), max_error_body_bytes=1 << 30
    )
    with anyio.fail_after(10):
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
    assert [v.reason for v in info.value.report.verdicts] == ["TimeoutException"]
    assert inner.unclosed() == []


async def test_a_dribbling_body_is_cut_by_the_attempt_timeout() -> None:
    """A body sent a byte at a time, without end: Timeout(attempt=...) ends the
    attempt while it is being read, and its stream is closed."""
    streams: list[EndlessStream] = []

    def answer(request: httpx.Request) -> httpx.Response:
        streams.append(EndlessStream(b"."))
        return httpx.Response(500, stream=streams[-1])

    inner = ScriptedTransport.of(answer)
    transport = through(inner, Retry(max_attempts=1), Timeout(attempt=0.02))
    with anyio.fail_after(10):
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(RetriesExhausted) as info:
                await client.get(URL)
    assert [v.reason for v in info.value.report.verdicts] == ["TimeoutException"]
    assert streams[0].closed
    assert 0 < streams[0].sent < MIB


async def test_an_undecodable_error_page_keeps_its_raw_bytes_within_the_cap() -> None:
    """An error page under a gzip header that is no gzip: classified by its status,
    the error holds the raw bytes, cut at the cap."""
    html = b"<html>" + b"bad gateway " * 20_000
    inner = ScriptedTransport.of(gzipped(502, html, chunks=8))
    transport = through(inner, max_error_body_bytes=64 * KIB)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get(URL)
    assert info.value.response is not None
    assert info.value.response.content == html[: 64 * KIB]
    assert [v.reason for v in info.value.report.verdicts] == ["502"]
    assert inner.unclosed() == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_body_bytes", 0),
        ("max_body_bytes", -1),
        ("max_body_bytes", 1.5),
        ("max_body_bytes", True),
        ("max_error_body_bytes", 0),
        ("max_error_body_bytes", "1MiB"),
    ],
)
def test_body_caps_are_validated(option: str, value: Any) -> None:
    """A cap that is not a positive number of bytes fails when the pipeline is built."""
    with pytest.raises(ConfigurationError, match=option):
        Pipeline([], telemetry=False, **{option: value})


def _encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":  # zlib-wrapped, as the RFC says
        return zlib.compress(body)
    if encoding == "raw deflate":  # what many servers send as "deflate"
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(body) + packer.flush()
    return body


_HEADER = {"gzip": "gzip", "deflate": "deflate", "raw deflate": "deflate", "identity": None}


@settings(max_examples=60)
@given(
    body=st.binary(max_size=4000) | st.builds(lambda n: b"ab" * n, st.integers(0, 30_000)),
    encodings=st.lists(st.sampled_from(sorted(_HEADER)), min_size=0, max_size=2),
    cap=st.integers(1, 70_000),
    chunk=st.integers(1, 9000),
    status=st.sampled_from([200, 503]),
)
def test_the_read_copy_is_the_decoded_body_cut_at_the_cap(
    body: bytes, encodings: list[str], cap: int, chunk: int, status: int
) -> None:
    """Whatever the encodings (applied in header order), chunking and cap: the copy
    holds the first ``cap`` decoded bytes, is marked cut exactly when the body is
    longer, and the caller's response still decodes to the whole body."""
    wire = body
    for encoding in encodings:
        wire = _encode(wire, encoding)
    names = [_HEADER[e] for e in encodings if _HEADER[e] is not None]
    headers = {"content-encoding": ", ".join(names)} if names else {}

    async def check() -> None:
        response = httpx.Response(
            status, headers=headers, stream=ClosingStream(wire, chunks=max(len(wire) // chunk, 1))
        )
        request = httpx.Request("GET", URL)
        view = await buffer_response(response, request, cap)
        assert view.content == body[:cap]
        assert bool(view.extensions.get(BODY_TRUNCATED)) is (len(body) > cap)
        response.request = request
        assert await response.aread() == body
        await response.aclose()

    for backend in ("asyncio", "trio"):
        anyio.run(check, backend=backend)
