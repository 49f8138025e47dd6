"""Names telemetry records: a pipeline's name and the HTTP methods it knows.

Where it sits in the flow: :class:`~resilience.Pipeline` checks ``name=`` and
``known_methods=`` here when it is built (a bad value is a ``ConfigurationError``
naming the argument), hands both to the instrumentation, and registers the code
of its call (:data:`CALL_CODES`). The ``resilience`` logger's filter, installed
when this module is imported, names on every log record the library writes
(``record.resilience_pipeline``) the pipeline whose call is on the stack of the
task that writes it, whichever layer writes it; a pipeline with a layer that may
run work in tasks of its own also puts its name in :data:`CURRENT_PIPELINE` for
those tasks to inherit.

Kept apart from ``_telemetry`` so that the pipeline reads these without importing
OpenTelemetry, and so that logs carry the name with telemetry switched off too. The
resend-count extension and :func:`request_hook` live here for the same reason:
``import resilience`` exports them, and OpenTelemetry loads only when a pipeline
with telemetry is built.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import CodeType, FrameType
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
"""The name of the pipeline whose call runs in this context, set by a pipeline with
a layer that may run work in tasks of its own (tasks a call starts inherit it)."""

#: The code of the engine's call (``Pipeline.handle``, registered by the engine):
#: a record written in a call's own task finds the pipeline on the stack, in that
#: frame's ``self``. Nothing is set per call; the search happens only for records
#: that are written.
CALL_CODES: set[CodeType] = set()
#: Frames searched at most, from the logging call outwards.
_MAX_FRAMES = 256

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
        # The call on this task's stack first (the innermost call, whatever an
        # enclosing one put in the context), else the call whose task started this one.
        name = _name_on_stack()
        setattr(record, LOG_ATTRIBUTE, name if name is not None else CURRENT_PIPELINE.get())
    return True


def _name_on_stack() -> str | None:
    """The name of the pipeline whose call is on this task's stack (the innermost
    one when calls nest), or ``None`` outside any call."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code in CALL_CODES:
            name = getattr(frame.f_locals.get("self"), "name", None)
            return name if isinstance(name, str) else None
        frame = frame.f_back
    return None


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
