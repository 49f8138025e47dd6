"""Simulator messages: a request as a simulator sees it, its answer, and the record.

:class:`~resilience.testing.Simulator` turns each ASGI request into a
:class:`SimRequest`, answers it with a :class:`SimResponse` (vendor dialects build
theirs with :meth:`SimResponse.json` and :meth:`SimResponse.html`), and keeps a
:class:`Received` per request so tests can assert what was (not) retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import httpx

from .._plugin import parse_json_object

__all__ = ["Received", "SimRequest", "SimResponse", "TokenCheck"]


class _Headers(Mapping[str, str]):
    """Case-insensitive read-only request headers (the last value wins)."""

    __slots__ = ("_items",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._items = {k.decode("latin-1").lower(): v.decode("latin-1", "replace") for k, v in raw}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@attrs.frozen(kw_only=True)
class SimRequest:
    """A request as a simulator sees it."""

    method: str
    """Upper-case method."""
    path: str
    """The URL path."""
    query: Mapping[str, str]
    """Query parameters (the last value of a repeated one)."""
    headers: Mapping[str, str]
    """Headers, case-insensitive."""
    body: bytes = attrs.field(repr=False)
    """The raw body."""
    params: Mapping[str, str] = attrs.field(factory=dict)
    """Path parameters filled in by the router."""

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` (never raises)."""
        return parse_json_object(self.body)

    @property
    def bearer(self) -> str | None:
        """The bearer token of the ``Authorization`` header, if any."""
        value = self.headers.get("authorization")
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` (or ``X-Idempotency-Key``) header, if any."""
        return self.headers.get("idempotency-key") or self.headers.get("x-idempotency-key")


@attrs.define(kw_only=True)
class SimResponse:
    """A response a simulator sends."""

    status: int
    """The HTTP status."""
    body: bytes = b""
    """The raw body."""
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    """Headers (``content-length`` is added when sent)."""
    code: str | None = None
    """The vendor code this answer carries (kept in the record), if any."""

    @classmethod
    def json(
        cls,
        status: int,
        data: Any,
        *,
        headers: Iterable[tuple[str, str]] = (),
        code: str | None = None,
        content_type: str = "application/json",
    ) -> SimResponse:
        """A JSON answer."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(
            status=status,
            body=body,
            headers=[("content-type", content_type), *headers],
            code=code,
        )

    @classmethod
    def html(cls, status: int, title: str | None = None) -> SimResponse:
        """An HTML error page, as a proxy or load balancer in front of a vendor sends."""
        phrase = title or _reason(status)
        page = (
            f"<html><head><title>{status} {phrase}</title></head>"
            f"<body><center><h1>{status} {phrase}</h1></center><hr>"
            f"<center>nginx</center></body></html>\n"
        )
        return cls(
            status=status,
            body=page.encode(),
            headers=[("content-type", "text/html")],
            code=f"http:{status}",
        )

    def header(self, name: str) -> str | None:
        """The first value of a header, if set."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def to_httpx(self, request: httpx.Request | None = None) -> httpx.Response:
        """The same answer as an ``httpx.Response`` (for scripted transports)."""
        headers = [*self.headers, ("content-length", str(len(self.body)))]
        return httpx.Response(self.status, headers=headers, content=self.body, request=request)


def _reason(status: int) -> str:
    try:
        return httpx.codes.get_reason_phrase(status) or "Error"
    except Exception:  # pragma: no cover - unknown status
        return "Error"


@attrs.frozen(kw_only=True)
class Received:
    """One request a simulator received, and what it answered."""

    method: str
    """The method."""
    path: str
    """The path."""
    query: str
    """The raw query string."""
    idempotency_key: str | None
    """The idempotency key header, if the request carried one."""
    body: bytes = attrs.field(repr=False)
    """The request body (token requests: hidden from repr)."""
    status: int
    """The status answered."""
    code: str | None
    """The vendor code answered, when it was one."""
    at: float
    """Seconds since the simulator started."""
    fault: str | None = None
    """What the plan injected (``"outage"``, ``"fault"``, ``"rate_limit"``), if anything."""
    token_request: bool = False
    """Whether it went to a token endpoint (a route declared with ``auth=False``)."""


@attrs.frozen
class TokenCheck:
    """What :meth:`Simulator.check_token` found about a bearer token."""

    state: str
    """``"ok"``, ``"missing"``, ``"invalid"`` (malformed, unknown, forged) or ``"expired"``."""
    subject: str | None = None
    """The client id the token was issued to, when it is one of ours."""
