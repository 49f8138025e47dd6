"""A simulator of the Acme API: a plain ASGI app on the core's Simulator base.

This is ``resilience_acme.testing``, the plugin's test tooling: tests and the
demo import it (the plugin object names it lazily), the plugin's runtime never does.

TODO(vendor): the token endpoint, two or three real resources, and the dialect:
``render_error`` (the exact error body of each code), ``render_rate_limited``
(what the vendor sends over a limit) and ``reject_token``. The base class applies
the FaultPlan (errors, outages, slowness, short tokens, rate limits), checks
bearer tokens it issued, and records every request in ``received``.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from resilience import Clock
from resilience.testing import (
    FaultPlan,
    LimitState,
    RateLimit,
    SimRequest,
    SimResponse,
    Simulator,
    TokenCheck,
    route,
)

from ._classifier import ACME_CODES
from ._token import TOKEN_PATH

__all__ = ["AcmeSimulator", "error_response", "render_error", "simulator"]


def render_error(
    code: str, status: int | None = None, *, retry_after: int | None = None
) -> SimResponse:
    """Acme's error body for ``code``, with its documented status."""
    entry = ACME_CODES.get(code)
    if status is None:
        status = entry.status if entry is not None and entry.status is not None else 500
    error: dict[str, Any] = {
        "code": code,
        "message": (entry.title if entry is not None else None) or "Error",
        "request_id": "req-0000",
    }
    if retry_after is not None:
        error["retry_after"] = retry_after
    return SimResponse.json(status, {"error": error}, code=code)


def error_response(code: str, status: int | None = None) -> httpx.Response:
    """:func:`render_error` as an ``httpx.Response`` (the plugin's ``render_error``)."""
    return render_error(code, status).to_httpx()


class AcmeSimulator(Simulator):
    """The Acme API with fault injection."""

    vendor = "acme"
    default_token_ttl = 3600.0
    default_rate_limits = (RateLimit(limit=100, window=60.0, name="all"),)
    outage_code = "unavailable"
    not_found_code = "not_found"

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        # An injected 429 says how long to wait, as a real one would.
        return render_error(code, status, retry_after=2 if code == "rate_limited" else None)

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        return render_error("rate_limited", 429, retry_after=math.ceil(state.retry_after))

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        return render_error("token_expired", 401)

    @route("POST", TOKEN_PATH, auth=False)
    async def token(self, request: SimRequest) -> SimResponse:
        body = request.json() or {}
        if not self.credentials_match(body.get("client_id"), body.get("client_secret")):
            return render_error("invalid_request", 400)
        token, life = self.issue_token(body["client_id"])
        return SimResponse.json(200, {"access_token": token, "expires_in": int(life)})

    @route("GET", "/v1/widgets")
    async def list_widgets(self, request: SimRequest) -> SimResponse:
        return SimResponse.json(200, {"widgets": [{"id": "w1"}, {"id": "w2"}]})

    @route("GET", "/v1/widgets/{widget_id}")
    async def get_widget(self, request: SimRequest, widget_id: str) -> SimResponse:
        if widget_id not in ("w1", "w2"):
            return render_error("not_found")
        return SimResponse.json(200, {"id": widget_id})


def simulator(
    *,
    plan: FaultPlan | None = None,
    clock: Clock | None = None,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
) -> AcmeSimulator:
    """An :class:`AcmeSimulator` (the plugin's ``simulator`` factory)."""
    return AcmeSimulator(plan=plan, clock=clock, client_id=client_id, client_secret=client_secret)
