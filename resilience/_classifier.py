"""Classifiers: turn one attempt (a response or an exception) into a Verdict.

The innermost step of a pipeline asks its classifier about every attempt, exactly
once. This module holds the protocol, the generic ``"http"`` classifier, the
``Retry-After`` parser, and the loader that finds vendor plugins by name in the
entry-point group ``resilience.classifiers``.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import re
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx

from ._verdict import ACCEPT, Action, Problem, Verdict

__all__ = [
    "ENTRY_POINT_GROUP",
    "Classifier",
    "HttpClassifier",
    "available_classifiers",
    "load_plugin",
    "parse_retry_after",
    "resolve_classifier",
]

logger = logging.getLogger("resilience")

ENTRY_POINT_GROUP = "resilience.classifiers"

#: Longest wait any parsed hint may ask for (a server asking for more is clamped).
MAX_HINT_SECONDS = 86_400.0


@runtime_checkable
class Classifier(Protocol):
    """Decides what one attempt means.

    Exactly one of ``response`` and ``error`` is set. An error body (status >= 400)
    has always been read, so ``response.json()`` works; a success body has been
    read too unless the classifier sets ``needs_body = False``.
    """

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict: ...


_DIGITS = re.compile(r"(\d+)(?:\.\d+)?", re.ASCII)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` value (RFC 9110: delay-seconds or an HTTP-date).

    Returns seconds to wait (>= 0, at most a day), or ``None`` when the value is
    absent or garbage. ``now`` is the Unix time an HTTP-date is measured from
    (default: the current time); a date in the past means "no wait".
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    match = _DIGITS.fullmatch(text)
    if match is not None:
        # A huge delay is still a request to back off: clamp it, do not ignore it.
        return min(float(match.group(1)), MAX_HINT_SECONDS)
    when = _parse_http_date(text)
    if when is None:
        return None
    reference = time.time() if now is None else now
    delay = when - reference
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_HINT_SECONDS)


def _parse_http_date(text: str) -> float | None:
    """The Unix time of an HTTP-date (any of RFC 9110's three forms), or ``None``."""
    if len(text) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            # asctime dates carry no zone (and "-0000" parses naive): HTTP-dates are GMT.
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def response_date(response: httpx.Response) -> float | None:
    """The Unix time of the response's ``Date`` header, when it is valid."""
    raw = response.headers.get("date")
    return None if raw is None else _parse_http_date(raw.strip())


def retry_after_of(response: httpx.Response) -> float | None:
    """The ``Retry-After`` hint of a response, dates measured from its ``Date``."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    return parse_retry_after(raw, now=response_date(response))


RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

RETRY_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    TimeoutError,
    ConnectionError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)


def error_problem(vendor: str, error: BaseException) -> Problem:
    """The problem of an attempt that raised: its code is the exception class."""
    return Problem(vendor=vendor, code=type(error).__name__, title=_safe_str(error))


def _safe_str(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # pragma: no cover - a broken __str__
        text = ""
    return text[:200] if text else type(error).__name__


#: Transport errors that describe our own request, not the network: no retry helps.
NEVER_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


def classify_error(vendor: str, error: BaseException) -> Verdict:
    """Transport failures (connect, read, timeouts) are transient; others are not."""
    problem = error_problem(vendor, error)
    if isinstance(error, RETRY_ERRORS) and not isinstance(error, NEVER_RETRY_ERRORS):
        return Verdict(Action.RETRY, problem=problem)
    return Verdict(Action.FAIL, problem=problem)


def classify_status(vendor: str, response: httpx.Response, **fields: Any) -> Verdict:
    """The generic reading of a status code, with ``Retry-After`` honoured."""
    status = response.status_code
    if status < 400:
        if not fields:
            # The shared frozen verdict: building one costs ~0.6 µs on every success.
            return ACCEPT
        return Verdict(Action.ACCEPT, problem=Problem(vendor=vendor, status=status, **fields))
    fields.setdefault("code", str(status))
    fields.setdefault("title", response.reason_phrase or None)
    problem = Problem(vendor=vendor, status=status, **fields)
    if status in RETRY_STATUSES:
        return Verdict(Action.RETRY, problem=problem, retry_after=retry_after_of(response))
    if status == 401:
        return Verdict(Action.REFRESH_AUTH, problem=problem)
    # Every other 4xx is the caller's own mistake; 501, 505 and friends will not
    # change on a retry either.
    return Verdict(Action.FAIL, problem=problem)


class HttpClassifier:
    """The generic classifier: status codes and ``Retry-After`` only.

    408, 425, 429, 500, 502, 503, 504 and transport errors are RETRY; 401 is
    REFRESH_AUTH; every other 4xx (and 5xx) is FAIL; the rest is ACCEPT. It never
    reads a success body (``needs_body = False``), so 2xx bodies stream.
    """

    vendor = "http"
    needs_body = False

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is None:
            assert error is not None
            return classify_error(self.vendor, error)
        return classify_status(self.vendor, response)

    def __repr__(self) -> str:
        return "HttpClassifier()"


HTTP_CLASSIFIER = HttpClassifier()


class _HttpPlugin:
    """The entry point object of the built-in ``"http"`` classifier."""

    name = "http"
    classifier = HTTP_CLASSIFIER
    description = "generic: status codes and Retry-After"

    def __repr__(self) -> str:
        return "<resilience plugin 'http'>"


HTTP_PLUGIN = _HttpPlugin()

_plugin_cache: dict[str, Any] = {}


def _entry_points() -> Mapping[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def available_classifiers() -> list[str]:
    """Names of the classifiers installed (entry points that import), sorted."""
    names = {"http"}
    for name, ep in _entry_points().items():
        if _load_entry_point(name, ep) is not None:
            names.add(name)
    return sorted(names)


def _load_entry_point(name: str, ep: metadata.EntryPoint) -> Any | None:
    if name in _plugin_cache:
        return _plugin_cache[name]
    try:
        plugin = ep.load()
    except Exception as exc:
        logger.warning(
            "resilience plugin %r (%s) failed to import and was skipped: %s: %s",
            name,
            ep.value,
            type(exc).__name__,
            exc,
        )
        return None
    _plugin_cache[name] = plugin
    return plugin


def load_plugin(name: str) -> Any:
    """The object registered under ``name`` in the ``resilience.classifiers`` group.

    Raises :class:`LookupError` naming the installed plugins when none matches
    (or when the one that matches failed to import).
    """
    if name == "http":
        return HTTP_PLUGIN
    if name in _plugin_cache:
        return _plugin_cache[name]
    ep = _entry_points().get(name)
    plugin = None if ep is None else _load_entry_point(name, ep)
    if plugin is None:
        known = ", ".join(repr(n) for n in available_classifiers())
        why = "failed to import (see the log)" if ep is not None else "is not installed"
        raise LookupError(
            f"classifier {name!r} {why}; installed classifiers: {known}. "
            f"First-party plugins: pip install resilience-tellus resilience-turris "
            f"resilience-derapi"
        )
    return plugin


def resolve_classifier(spec: str | Classifier) -> Classifier:
    """A classifier from a name (entry point) or a classifier object."""
    if isinstance(spec, str):
        plugin = load_plugin(spec)
        classifier = getattr(plugin, "classifier", plugin)
        # A class (whose classify is an unbound function) or a factory: build it.
        if isinstance(classifier, type) or (
            callable(classifier) and not hasattr(classifier, "classify")
        ):
            classifier = classifier()
    else:
        classifier = spec
    if not callable(getattr(classifier, "classify", None)):
        raise TypeError(
            f"classifier must be a name or an object with a classify() method, "
            f"got {type(classifier).__name__}"
        )
    return classifier  # type: ignore[no-any-return]
