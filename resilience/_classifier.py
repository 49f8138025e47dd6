"""Classifiers: turn one attempt (a response or an exception) into a Verdict.

The innermost step of a pipeline asks its classifier about every attempt, exactly
once, through :func:`safe_classify`, which never lets a classifier's bug escape.
This module holds the protocol, the generic status-code reading (the ``"http"``
classifier, which :mod:`resilience._http_plugin` packages as a plugin) and the
``Retry-After`` parser. Plugins are found by name in :mod:`resilience._loader`
(its names are re-exported here for the modules that import them from here).
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import anyio
import attrs
import httpx

from ._http import HEADERS_AS_TRIPLES, MAX_HINT_SECONDS
from ._verdict import ACCEPT, Action, Classifier, Problem, Verdict, shared_problem, verdict_fault
from .errors import ConfigurationError

__all__ = [
    "MAX_HINT_SECONDS",
    "Classifier",
    "HttpClassifier",
    "parse_retry_after",
    "safe_classify",
]

logger = logging.getLogger("resilience")


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
    """The problem of an attempt that raised: its code is the exception class.

    A local protocol error's text is not used: h11 quotes the header it refused,
    whole, and that header may carry a token.
    """
    if local_protocol_error(error):
        title = "the HTTP library refused to send the request (a header or the body is malformed)"
        return Problem(vendor=vendor, code=type(error).__name__, title=title)
    return Problem(vendor=vendor, code=type(error).__name__, title=_safe_str(error))


def local_protocol_error(error: BaseException) -> bool:
    """Whether ``error`` is an HTTP library refusing our own request (httpx's,
    httpcore's or h11's ``LocalProtocolError``): its text may quote a header."""
    return any(kind.__name__ == "LocalProtocolError" for kind in type(error).__mro__)


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
    if not fields and type(response) is httpx.Response:
        shared = _shared_verdict(vendor, response, status)
        if shared is not None:
            return shared
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


#: The generic verdicts already built, by (vendor, status, the reason phrase the
#: server sent): frozen, so every attempt with the same answer shares one.
_SHARED: dict[tuple[str, int, bytes | None], Verdict] = {}
#: Entries at most: a server choosing its reason phrases cannot grow it further
#: (a verdict is then built for each attempt, as without the cache).
_SHARED_MAX = 512


def _shared_verdict(vendor: str, response: httpx.Response, status: int) -> Verdict | None:
    """The generic verdict of an error status with no fields, built once and shared;
    ``None`` when it cannot be (an unusual reason phrase, a full cache).

    Building the problem and verdict, and reading the reason phrase through the
    status enum, costs about 3 µs on every retried attempt; a ``Retry-After``
    hint still makes a verdict of its own (around the shared problem).
    """
    phrase = response.extensions.get("reason_phrase")
    if phrase is not None and type(phrase) is not bytes:
        return None
    key = (vendor, status, phrase)
    verdict = _SHARED.get(key)
    if verdict is None:
        if type(vendor) is not str or len(_SHARED) >= _SHARED_MAX:
            return None
        title = response.reason_phrase or None
        problem = shared_problem(vendor=vendor, status=status, code=str(status), title=title)
        verdict = Verdict(_default_action(status), problem=problem)
        _SHARED[key] = verdict
    if verdict.action is Action.RETRY and _has_retry_after(response.headers):
        hint = retry_after_of(response)
        if hint is not None:
            return Verdict(Action.RETRY, problem=verdict.problem, retry_after=hint)
    return verdict


def _has_retry_after(headers: httpx.Headers) -> bool:
    # The names as httpx keeps them, lower-cased already: a lookup by name decodes
    # every header and raises KeyError inside when the header is absent, as it
    # mostly is, and ``.raw`` builds a list of pairs first.
    items = getattr(headers, "_list", None)
    if HEADERS_AS_TRIPLES and type(items) is list:
        for item in items:  # noqa: SIM110 - a loop, as any() over a generator costs 3x
            if item[1] == b"retry-after":
                return True
        return False
    return b"retry-after" in [name.lower() for name, _ in headers.raw]  # pragma: no cover


def _statuses(value: Iterable[int]) -> frozenset[int]:
    """A collection of status codes as a frozenset (validated after conversion)."""
    if isinstance(value, (str, bytes, int)) or not isinstance(value, Iterable):
        # Left as it is: the validator names the argument and what it got.
        return value  # type: ignore[return-value]
    return frozenset(value)


def _check_statuses(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    name = f"{type(instance).__name__}: {attribute.name}"
    if not isinstance(value, frozenset):
        raise ConfigurationError(
            f"{name} must be a collection of HTTP status codes, got {type(value).__name__}"
        )
    for status in sorted(value, key=repr):
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigurationError(
                f"{name} must hold HTTP status codes (integers 100-599), got {status!r}"
            )


_FROZEN = attrs.setters.frozen


@attrs.define(slots=False, unsafe_hash=True, repr=False, on_setattr=attrs.setters.NO_OP)
class HttpClassifier:
    """The generic classifier: status codes and ``Retry-After`` only.

    By default 408, 425, 429, 500, 502, 503, 504 and transport errors are RETRY;
    401 is REFRESH_AUTH; every other 4xx (and 5xx) is FAIL; the rest is ACCEPT. It
    never reads a success body (``needs_body = False``), so 2xx bodies stream.

    Three sets of statuses change that reading, and nothing else
    (``HttpClassifier(retry_statuses={429, 503})`` retries only those two):

    Args:
        retry_statuses: the statuses retried (``Retry-After`` honoured); the
            default statuses left out of it are FAIL.
        fail_statuses: statuses that fail at once (a 503 your backend means for good).
        accept_statuses: statuses handed back as answers (a ``404`` a lookup expects).

    A status may be in one set only; ``fail_statuses`` and ``accept_statuses``
    may name statuses of the default retry set (they then leave it). Transport
    errors are read as before.
    """

    # Per-field frozen rather than a frozen class: subclasses (a classifier that
    # counts what it saw) keep attributes of their own.
    retry_statuses: frozenset[int] = attrs.field(
        default=RETRY_STATUSES, converter=_statuses, validator=_check_statuses, on_setattr=_FROZEN
    )
    """Statuses that are RETRY."""
    fail_statuses: frozenset[int] = attrs.field(
        default=frozenset(), converter=_statuses, validator=_check_statuses, on_setattr=_FROZEN
    )
    """Statuses that are FAIL whatever the default reading says."""
    accept_statuses: frozenset[int] = attrs.field(
        default=frozenset(), converter=_statuses, validator=_check_statuses, on_setattr=_FROZEN
    )
    """Statuses that are ACCEPT (the response is returned, not raised)."""
    _table: Mapping[int, Action] | None = attrs.field(
        default=None, init=False, eq=False, hash=False, on_setattr=_FROZEN
    )
    """The statuses read differently from the default, or ``None`` (the fast path)."""

    vendor: ClassVar[str] = "http"
    needs_body: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        named = [
            ("retry_statuses", self.retry_statuses),
            ("fail_statuses", self.fail_statuses),
            ("accept_statuses", self.accept_statuses),
        ]
        if self.retry_statuses == RETRY_STATUSES:
            # The default set: fail_statuses={503} takes 503 out of it, no clash.
            del named[0]
        for index, (first, statuses) in enumerate(named):
            for second, others in named[index + 1 :]:
                both = statuses & others
                if both:
                    raise ConfigurationError(
                        f"HttpClassifier: status {min(both)} is in both {first} and {second}"
                    )
        table: dict[int, Action] = {}
        for status in RETRY_STATUSES - self.retry_statuses:
            table[status] = Action.FAIL  # a default retry the caller left out
        for status in self.retry_statuses - RETRY_STATUSES:
            table[status] = Action.RETRY
        for status in self.fail_statuses:
            table[status] = Action.FAIL
        for status in self.accept_statuses:
            table[status] = Action.ACCEPT
        # Only the statuses whose reading changed: the rest take classify_status.
        changed = {
            status: action
            for status, action in table.items()
            if action is not _default_action(status)
        }
        object.__setattr__(self, "_table", changed or None)

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is None:
            assert error is not None
            return classify_error(self.vendor, error)
        table = self._table
        if table is not None:
            action = table.get(response.status_code)
            if action is not None:
                return _verdict_for(self.vendor, response, action)
        return classify_status(self.vendor, response)

    def __repr__(self) -> str:
        given = [
            f"{name}={{{', '.join(str(s) for s in sorted(value))}}}"
            for name, value, default in (
                ("retry_statuses", self.retry_statuses, RETRY_STATUSES),
                ("fail_statuses", self.fail_statuses, frozenset()),
                ("accept_statuses", self.accept_statuses, frozenset()),
            )
            if value != default
        ]
        return f"{type(self).__name__}({', '.join(given)})"

    @property
    def _accepts_below_400(self) -> bool:
        """Whether every answer below 400 reads as the shared ACCEPT, whatever it
        says (no status of its own, ``classify`` not overridden): the engine then
        records that verdict without asking (three calls less per attempt)."""
        return self._table is None and type(self).classify is HttpClassifier.classify


# attrs keeps field defaults off the class; a subclass whose __init__ does not call
# ours (written before these fields existed) reads the default reading from here.
for _field in attrs.fields(HttpClassifier):
    setattr(HttpClassifier, _field.name, _field.default)
del _field


def _default_action(status: int) -> Action:
    if status < 400:
        return Action.ACCEPT
    if status in RETRY_STATUSES:
        return Action.RETRY
    if status == 401:
        return Action.REFRESH_AUTH
    return Action.FAIL


def _verdict_for(vendor: str, response: httpx.Response, action: Action) -> Verdict:
    """The verdict ``action`` for a status the caller chose, its problem as the
    default reading would build it."""
    status = response.status_code
    if action is Action.ACCEPT:
        return ACCEPT
    problem = Problem(
        vendor=vendor, status=status, code=str(status), title=response.reason_phrase or None
    )
    if action is Action.RETRY:
        return Verdict(Action.RETRY, problem=problem, retry_after=retry_after_of(response))
    return Verdict(action, problem=problem)


HTTP_CLASSIFIER = HttpClassifier()


ClassifyFunction = Callable[[httpx.Request, httpx.Response | None, BaseException | None], Verdict]
"""The shape of ``Classifier.classify``."""


def safe_classify(
    classify: ClassifyFunction,
    request: httpx.Request,
    response: httpx.Response | None,
    error: BaseException | None,
    *,
    vendor: str,
    fallback_vendor: str | None = None,
) -> Verdict:
    """``classify(request, response, error)``, which never raises.

    A classifier that raises, or answers anything but a well-formed
    :class:`Verdict` (see :func:`~resilience._verdict.verdict_fault`), is logged
    as a warning naming ``vendor`` and what went wrong (the exception's class and
    first 200 characters, or the wrong field's type), and the generic status-code
    reading (:func:`classify_status`, :func:`classify_error`) is used instead,
    its problem under ``fallback_vendor`` (default: ``vendor``).

    Vendor classifiers wrap their own logic in it (``TableClassifier.classify``
    does); the pipeline applies the same rule (:func:`fallback_verdict`) to whatever
    classifier it was given.
    """
    fault: str | None
    try:
        verdict = classify(request, response, error)
    except Exception as exc:
        fault = raised_fault(exc)
    else:
        fault = verdict_fault(verdict)
        if fault is None:
            return verdict
    return fallback_verdict(fault, response, error, vendor=vendor, fallback_vendor=fallback_vendor)


def raised_fault(error: BaseException) -> str:
    """How a classifier's exception is named in the warning: class and first 200 characters."""
    return f"{type(error).__name__}: {_safe_str(error)}"


def fallback_verdict(
    fault: str,
    response: httpx.Response | None,
    error: BaseException | None,
    *,
    vendor: str,
    fallback_vendor: str | None = None,
) -> Verdict:
    """A classifier failed (``fault`` says how): warn, naming ``vendor``, and read the
    attempt by its status code instead (the problem under ``fallback_vendor``)."""
    logger.warning(
        "resilience classifier %r failed (%s); using the status-code reading", vendor, fault
    )
    return generic_verdict(vendor if fallback_vendor is None else fallback_vendor, response, error)


def generic_verdict(
    vendor: str, response: httpx.Response | None, error: BaseException | None
) -> Verdict:
    """The status-code reading of an attempt under ``vendor``; never raises."""
    try:
        if response is not None:
            return classify_status(vendor, response)
        return classify_error(vendor, error if error is not None else Exception())
    except Exception:  # pragma: no cover - only a broken response object gets here
        return Verdict(Action.RETRY, problem=Problem(vendor=vendor))
