"""HTTP facts the layers and the vendor plugins share: one home for each.

The lowest module of the package (it imports only httpx): the Retry layer asks
:func:`is_idempotent` before replaying a request, vendor classifiers ask it before
retrying a server error, every hint parser clamps to :data:`MAX_HINT_SECONDS`, and
the breaker's keys, the telemetry's ``server.port`` and the token origins fill in
a missing port from :data:`DEFAULT_PORTS`. Plugins get these names from
``resilience`` itself, so a vendor's rule never drifts from the core's.
"""

from __future__ import annotations

import types
from collections.abc import Collection, Mapping

import httpx

__all__ = [
    "DEFAULT_PORTS",
    "IDEMPOTENCY_HEADERS",
    "IDEMPOTENT_METHODS",
    "MAX_HINT_SECONDS",
    "body_replayable",
    "default_port",
    "is_idempotent",
]


def _headers_as_triples() -> bool:
    try:
        headers = httpx.Headers({"Retry-After": "1"})
        return set(vars(headers)) == {"_list", "_encoding"} and list(headers._list) == [
            (b"Retry-After", b"retry-after", b"1")
        ]
    except Exception:  # pragma: no cover - another httpx layout
        return False


HEADERS_AS_TRIPLES = _headers_as_triples()
"""Whether ``httpx.Headers`` keeps exactly its ``_encoding`` and, in ``_list``, each
header as a (raw name, lower-cased name, value) byte triple: what the token header's
copy and the ``Retry-After`` lookup read and build directly (checked once: a future
httpx may keep them differently, and both then go through the public API)."""

MAX_HINT_SECONDS = 86_400.0
"""The longest wait any server hint may ask for (a day); larger hints are clamped,
not ignored: a huge delay is still a request to back off."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""The methods RFC 9110 (section 9.2.2) calls idempotent: sending one twice has the
effect of sending it once, so a replay is safe."""

IDEMPOTENCY_HEADERS: tuple[str, ...] = ("idempotency-key", "x-idempotency-key")
"""The headers that make any request safe to replay (the IETF draft's name and the
older ``X-`` one that several vendors still read)."""

DEFAULT_PORTS: Mapping[str, int] = types.MappingProxyType(
    {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
)
"""The port each scheme implies when a URL names none (the WHATWG URL standard's
special schemes): httpx then gives ``url.port`` as ``None``."""


def is_idempotent(request: httpx.Request, methods: Collection[str] = IDEMPOTENT_METHODS) -> bool:
    """Whether ``request`` may be sent again without doing its work twice.

    True when its method is in ``methods`` (default: :data:`IDEMPOTENT_METHODS`),
    or when it carries a non-empty ``Idempotency-Key`` (or ``X-Idempotency-Key``)
    header. An empty or blank key promises nothing: the server has nothing to
    deduplicate on, so it does not count.
    """
    if request.method in methods:
        return True
    headers = request.headers
    # Each value on its own: get() joins repeated headers with ", ", so two empty
    # keys would read as a non-empty one.
    return any(value.strip() for name in IDEMPOTENCY_HEADERS for value in headers.get_list(name))


def body_replayable(request: httpx.Request) -> bool:
    """Whether ``request``'s body can be sent again: in memory, or already read.

    A streamed body that was never read cannot: replaying it would send nothing.
    """
    if isinstance(request.stream, httpx.ByteStream):
        return True
    try:
        request.content  # noqa: B018 - raises when the body was never read
    except httpx.RequestNotRead:
        return False
    return True


def default_port(url: httpx.URL) -> int | None:
    """``url``'s port, or its scheme's default (``None`` for an unknown scheme)."""
    port = url.port
    return port if port is not None else DEFAULT_PORTS.get(url.scheme)
