"""The Acme code table and classifier.

TODO(vendor): copy the vendor's error-code page into the table, one entry per
code, with the status the page documents and the action it prescribes; then
teach ``parse`` the vendor's error body. Everything else (fallback to the HTTP
status, never raising, Retry-After) comes from ``TableClassifier``.

The (fictional) Acme error body: ``{"error": {"code": "...", "message": "...",
"request_id": "...", "retry_after": 3}}``.
"""

from __future__ import annotations

import httpx

from resilience import Action, CodeEntry, CodeTable, ParsedError, TableClassifier

__all__ = ["ACME_CODES", "AcmeClassifier"]

ACME_CODES = CodeTable(
    {
        "invalid_request": CodeEntry(Action.FAIL, 400, title="The request is malformed"),
        "token_expired": CodeEntry(Action.REFRESH_AUTH, 401, title="The token expired"),
        "forbidden": CodeEntry(Action.FAIL, 403, title="Not allowed"),
        "not_found": CodeEntry(Action.FAIL, 404, title="No such resource"),
        "rate_limited": CodeEntry(Action.RETRY, 429, title="Too many requests"),
        "unavailable": CodeEntry(Action.RETRY, 503, title="Try again later"),
    }
)
"""Every Acme error code, mapped to its action."""


class AcmeClassifier(TableClassifier):
    """Reads Acme error bodies; anything else is read by its HTTP status."""

    vendor = "acme"
    codes = ACME_CODES
    # TODO(vendor): True when a 2xx body can still say "error" (Tellus does this).
    needs_body = False

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        # parse_json_object never raises: big, deep, broken or non-JSON bodies give None.
        body = self.parse_json_object(response)
        error = self.mapping_field(body, "error")
        if error is None:
            return None  # not the vendor's shape: TableClassifier uses the status
        hint = self.number_field(error, "retry_after")
        return ParsedError(
            code=self.str_field(error, "code", limit=100),
            title=self.str_field(error, "message"),
            request_id=self.str_field(error, "request_id", limit=200),
            retry_after=hint if hint is not None and hint >= 0 else None,
        )
