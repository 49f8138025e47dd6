"""Names telemetry records: a pipeline's name and the HTTP methods it knows.

Where it sits in the flow: :class:`~resilience.Pipeline` checks ``name=`` and
``known_methods=`` here when it is built (a bad value is a ``ConfigurationError``
naming the argument), hands both to the instrumentation, and marks each logical
call with its name (:data:`CURRENT_PIPELINE`) while the call runs. The
``resilience`` logger's filter, installed when this module is imported, copies
that name onto every log record the library writes (``record.resilience_pipeline``),
whichever layer writes it.

Kept apart from ``_telemetry`` so that the pipeline reads these without importing
OpenTelemetry, and so that logs carry the name with telemetry switched off too. The
resend-count extension and :func:`request_hook` live here for the same reason:
``import resilience`` exports them, and OpenTelemetry loads only when a pipeline
with telemetry is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = [
    "CURRENT_PIPELINE",
    "DEFAULT_KNOWN_METHODS",
    "HTTP_RESEND_COUNT",
    "KNOWN_METHODS_ENV",
    "LOG_ATTRIBUTE",
    "RESEND_COUNT_EXTENSION",
    "check_known_methods",
    "check_name",
    "known_methods_from_env",
    "request_hook",
]

logger = logging.getLogger("resilience")

# The methods the HTTP semantic conventions know (RFC 9110, RFC 5789 and QUERY);
# any other is recorded as ``_OTHER``.
DEFAULT_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)

KNOWN_METHODS_ENV = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
"""The conventions' variable: a comma-separated, case-sensitive list that replaces
(not extends) the known methods."""

LOG_ATTRIBUTE = "resilience_pipeline"
"""The log record attribute holding the name of the pipeline whose call logged it
(``None`` outside a call)."""

RESEND_COUNT_EXTENSION = "resilience.resend_count"
"""The ``request.extensions`` key holding the attempt's resend count (0 first)."""

HTTP_RESEND_COUNT = "http.request.resend_count"
"""The HTTP semantic conventions' attribute for that count."""

CURRENT_PIPELINE: ContextVar[str | None] = ContextVar("resilience_pipeline", default=None)
"""The name of the pipeline whose call runs in this context (tasks a call starts
inherit it)."""

# RFC 9110 token characters: what a method may be made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def check_name(value: object) -> str:
    """``name=`` of a pipeline: a non-empty printable string.

    It becomes a span and metric attribute and a log field, so a control character
    (a newline forging a log line, an escape sequence) is refused.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"name must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError("name must not be empty")
    if not value.isprintable():
        raise ConfigurationError(
            f"name must not hold control or other non-printable characters, got {value!r}"
        )
    return value


def _is_method(value: object) -> bool:
    return isinstance(value, str) and bool(value) and all(ch in _TCHAR for ch in value)


def check_known_methods(value: object) -> frozenset[str]:
    """``known_methods=``: the methods recorded as themselves, all others ``_OTHER``.

    A full replacement of :data:`DEFAULT_KNOWN_METHODS`, case-sensitive as the
    conventions ask (httpx sends methods upper-cased).
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"known_methods must be a collection of method names, got {type(value).__name__}"
        )
    methods = list(value)
    for method in methods:
        if not _is_method(method):
            raise ConfigurationError(
                f"known_methods must hold HTTP method names (RFC 9110 tokens), got {method!r}"
            )
    if not methods:
        raise ConfigurationError("known_methods must name at least one method")
    return frozenset(methods)


def known_methods_from_env() -> frozenset[str]:
    """The known methods :data:`KNOWN_METHODS_ENV` names, else the default ones.

    A bad entry in the environment is logged and skipped, never raised: a
    deployment's variable must not stop a program from starting.
    """
    raw = os.environ.get(KNOWN_METHODS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_KNOWN_METHODS
    methods = set()
    for item in raw.split(","):
        method = item.strip()
        if _is_method(method):
            methods.add(method)
        elif method:
            logger.warning(
                "resilience: %s: ignored %r (not an HTTP method)", KNOWN_METHODS_ENV, method
            )
    return frozenset(methods) if methods else DEFAULT_KNOWN_METHODS


def _stamp(record: logging.LogRecord) -> bool:
    if not hasattr(record, LOG_ATTRIBUTE):  # an explicit ``extra=`` wins
        setattr(record, LOG_ATTRIBUTE, CURRENT_PIPELINE.get())
    return True


# Filters run only for records that are emitted: a disabled level costs nothing.
if _stamp not in logger.filters:
    logger.addFilter(_stamp)


async def request_hook(span: Span, request: Any) -> None:
    """Copy the resend count onto ``opentelemetry-instrumentation-httpx``'s span.

    Pass it as the async request hook, so the CLIENT span that instrumentation
    creates inside the inner transport carries ``http.request.resend_count`` like
    ``resilience``'s own attempt span::

        HTTPXClientInstrumentor().instrument(async_request_hook=resilience.request_hook)

    To run a hook of your own as well, call this one from it.

    Args:
        span: the instrumentation's span for one request.
        request: its ``RequestInfo`` (or an :class:`httpx.Request`): anything with
            an ``extensions`` mapping.
    """
    extensions = getattr(request, "extensions", None)
    if not isinstance(extensions, Mapping):
        return
    count = extensions.get(RESEND_COUNT_EXTENSION)
    if isinstance(count, int) and count > 0 and span.is_recording():
        span.set_attribute(HTTP_RESEND_COUNT, count)
