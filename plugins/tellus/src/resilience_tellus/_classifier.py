"""The Tellus code table and classifier.

Tellus wraps every answer, success or error, in an envelope
``{"code": <int>, "message": <str>, "data" | "details": ...}``; the numeric ``code``
is canonical and wins over the HTTP status, and ``message`` is never parsed
(its wording may change without notice). A body that is not an envelope (a
proxy's HTML page, garbage) is read by its HTTP status instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from resilience import (
    MAX_HINT_SECONDS,
    Action,
    CodeEntry,
    CodeTable,
    FieldError,
    ParsedError,
    TableClassifier,
)
from resilience import Verdict as _Verdict

__all__ = ["TELLUS_CODES", "TellusClassifier"]

TELLUS_CODES = CodeTable(
    {
        0: CodeEntry(Action.ACCEPT, 200, title="Success"),
        1001: CodeEntry(Action.FAIL, 400, title="Invalid request parameters"),
        1002: CodeEntry(Action.FAIL, 400, title="Missing required parameter"),
        # "Obtain a valid token": one refresh, and AuthRefresh makes a second
        # rejection an AuthenticationError ("do not retry after one refresh").
        2001: CodeEntry(Action.REFRESH_AUTH, 401, title="Unauthenticated or invalid token"),
        2002: CodeEntry(Action.REFRESH_AUTH, 401, title="Token expired"),
        2003: CodeEntry(Action.FAIL, 403, title="Permission denied"),
        3001: CodeEntry(Action.FAIL, 404, title="Resource not found"),
        4001: CodeEntry(Action.FAIL, 409, title="Resource conflict"),
        5001: CodeEntry(Action.RETRY, 429, title="Too many requests"),
        9001: CodeEntry(Action.RETRY, 500, title="Internal server error"),
    }
)
"""Every code of the Tellus error page (guides/errors), mapped to its action."""


class TellusClassifier(TableClassifier):
    """Reads Tellus envelopes: the body's ``code`` decides, the status is a fallback.

    * codes in :data:`TELLUS_CODES` get their action, whatever the status;
    * ``details.retry_after_seconds`` (on 5001) is the wait hint, then
      ``Retry-After`` (Tellus documents none, a proxy may add one);
    * a non-envelope body is read by its status;
    * an unknown code on an error status is read by the status; an unknown
      non-zero code on a success status is FAIL: the envelope says it failed and
      nothing says a retry would help.

    Success bodies are envelopes too (a 200 may carry a non-zero code), so this
    classifier reads them (``needs_body = True``).
    """

    vendor = "tellus"
    codes = TELLUS_CODES
    needs_body = True

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        body = self.parse_json_object(response)
        if body is None:
            return None
        raw_code = body.get("code")
        # The envelope's code is an integer; anything else is not a Tellus envelope.
        code = self.int_field(body, "code")
        if code is None or isinstance(raw_code, str):
            return None
        details = self.mapping_field(body, "details") or {}
        title = self.str_field(body, "message")
        errors: tuple[FieldError, ...] = ()
        field = self.str_field(details, "field", limit=200)
        if field is not None:
            errors = (FieldError(field=field, detail=title),)
        return ParsedError(
            code=str(code),
            title=title,
            details=_bounded(details),
            errors=errors,
            retry_after=_retry_after_seconds(details),
        )

    def unknown_code(
        self, request: httpx.Request, response: httpx.Response, parsed: ParsedError
    ) -> _Verdict:
        if response.status_code < 400 and parsed.code != "0":
            return self.verdict_for(response, Action.FAIL, parsed)
        return super().unknown_code(request, response, parsed)


def _retry_after_seconds(details: Mapping[str, Any]) -> float | None:
    """``details.retry_after_seconds`` when it is a sane number of seconds, clamped
    to the core's :data:`~resilience.MAX_HINT_SECONDS`."""
    value = details.get("retry_after_seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return MAX_HINT_SECONDS
    if seconds != seconds or seconds < 0:  # NaN or negative: no usable hint
        return None
    return min(seconds, MAX_HINT_SECONDS)


def _bounded(details: Mapping[str, Any], limit: int = 50) -> dict[str, Any]:
    """A shallow copy of at most ``limit`` entries (details end up in errors)."""
    return dict(list(details.items())[:limit])
