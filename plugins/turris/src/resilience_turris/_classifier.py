"""The Turris error types and classifier.

Turris answers errors with ``{statusCode, requestId, errorType, errorMessage[],
timestamp}``. The ``errorType`` decides; a body that is not Turris's (a load
balancer's 503 page) is read by its HTTP status, which retries 429, 500 and 503.
The ``requestId`` goes on every :class:`~resilience.Problem`, so it shows in every
error message and log line (support asks for it). A 429's wait hint is
``X-RateLimit-Reset``, a Unix time.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx

from resilience import (
    MAX_HINT_SECONDS,
    Action,
    CodeEntry,
    CodeTable,
    ParsedError,
    TableClassifier,
)

__all__ = ["TURRIS_CODES", "TurrisClassifier", "rate_limit_reset"]

#: Unix times before this (September 2001) are read as seconds from now instead:
#: some gateways send the delta in the same header.
_EPOCH_FLOOR = 1e9

TURRIS_CODES = CodeTable(
    {
        "unauthorized": CodeEntry(
            Action.REFRESH_AUTH, 401, title="Authentication failed or was not provided"
        ),
        "forbidden": CodeEntry(
            Action.FAIL, 403, title="Authenticated, but the request is not allowed"
        ),
        # The page lists 422 without an errorType; PUBLIC-FACTS (c) assumes invalid_input.
        "invalid_input": CodeEntry(
            Action.FAIL, 400, also=(422,), title="Request validation failed"
        ),
        "not_found": CodeEntry(Action.FAIL, 404, title="The requested resource doesn't exist"),
        "internal_error": CodeEntry(Action.RETRY, 500, title="Something went wrong on our end"),
        # Not in the page's list of types, but what Turris sends on 429.
        "rate_limit_exceeded": CodeEntry(Action.RETRY, 429, title="Rate limit exceeded"),
    }
)
"""Every Turris ``errorType``, mapped to its action."""


class TurrisClassifier(TableClassifier):
    """Reads Turris error bodies: ``errorType`` decides, the status is a fallback.

    * error types in :data:`TURRIS_CODES` get their action;
    * an unknown type, or a body that is not Turris's, is read by the status
      (429, 500, 503 and the other transient statuses retry; 401 refreshes);
    * on a 429, ``X-RateLimit-Reset`` (Unix seconds, measured from the response's
      ``Date`` when it has one) is the wait hint, then ``Retry-After``;
    * ``requestId`` is kept on every problem, success bodies included when read.

    Success bodies carry nothing a verdict needs, so they are left unread for the
    caller to stream (``needs_body = False``).
    """

    vendor = "turris"
    codes = TURRIS_CODES
    needs_body = False

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        hint = rate_limit_reset(response) if response.status_code == 429 else None
        body = self.parse_json_object(response)
        error_type = self.str_field(body, "errorType", limit=100)
        request_id = self.str_field(body, "requestId", limit=200)
        if error_type is None and request_id is None:
            # Not a Turris body; keep the rate-limit hint of a bare 429 anyway.
            return None if hint is None else ParsedError(retry_after=hint)
        if error_type == "rate_limit_exceeded" and hint is None:
            hint = rate_limit_reset(response)
        messages = self.str_list_field(body, "errorMessage")
        details: dict[str, object] = {}
        if messages:
            details["errorMessage"] = list(messages)
        timestamp = self.str_field(body, "timestamp", limit=64)
        if timestamp is not None:
            details["timestamp"] = timestamp
        status_code = self.int_field(body, "statusCode")
        if status_code is not None:
            details["statusCode"] = status_code
        return ParsedError(
            code=error_type,
            title=messages[0] if messages else None,
            detail="; ".join(messages) if len(messages) > 1 else None,
            request_id=request_id,
            details=details,
            retry_after=hint,
        )


def rate_limit_reset(response: httpx.Response, *, now: float | None = None) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (a Unix time); ``None`` if absent or garbage.

    The reference time is the response's ``Date`` header when valid (so a skewed
    local clock does not matter), else ``now``, else :func:`time.time`. The result
    is clamped to ``[0, resilience.MAX_HINT_SECONDS]``.
    """
    raw = response.headers.get("x-ratelimit-reset")
    if raw is None or len(raw) > 32:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    if value < _EPOCH_FLOOR:
        return min(value, MAX_HINT_SECONDS)
    reference = _date_of(response)
    if reference is None:
        reference = time.time() if now is None else now
    return min(max(value - reference, 0.0), MAX_HINT_SECONDS)


def _date_of(response: httpx.Response) -> float | None:
    raw = response.headers.get("date")
    if raw is None or len(raw) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
        return when.timestamp() if when.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
