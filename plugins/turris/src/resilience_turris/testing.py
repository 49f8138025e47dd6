"""A simulator of the Turris Public API (a plain ASGI app).

This is ``resilience_turris.testing``, the plugin's test tooling: tests and the
demo import it (the plugin object names it lazily), the plugin's runtime never does.

What it serves, from Turris's public docs and PUBLIC-FACTS.md (A2 and (c)):

* ``POST /v1/auth/jwt``: ``{clientId, clientSecret}`` gives HTTP 201
  ``{statusCode, data: {accessToken}, timestamp}``, a JWT with ``exp`` = ``iat`` +
  3600; bad credentials give 401 ``unauthorized``, missing fields 400
  ``invalid_input``;
* ``GET /v1/auth/test-oauth``: the token check, ``{"message": "If you see this ..."}``;
* every error as ``{statusCode, requestId, errorType, errorMessage[], timestamp}``
  with a ``dev-<uuid4>`` request id (on success bodies too);
* rate limits per API client in fixed 60-s windows: GET unlimited, POST, PUT,
  PATCH and DELETE 60/min, the token endpoint 10/min; a 429 is
  ``rate_limit_exceeded`` with ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``
  (Unix seconds), and write responses carry the same headers (no ``Retry-After``:
  none is documented);
* an outage answers a load balancer's HTML 503 by default.

**Invented resources** (Turris's resource endpoints are not public; these are
made up for tests, shaped like its envelopes): ``/v1/producers`` (insurance
producers, identified by their NPN):

* ``GET /v1/producers?page=&limit=`` (invented pagination:
  ``data: {items, page, limit, total}``), ``GET /v1/producers/{producer_id}``;
* ``POST /v1/producers`` with ``{npn, firstName, lastName}``: a missing ``npn`` is
  400 ``invalid_input``, a non-numeric one 422 ``invalid_input``, a duplicate
  ``npn`` 400 ``invalid_input``; a repeated ``Idempotency-Key`` returns the first
  answer without creating anything;
* ``PATCH`` and ``DELETE /v1/producers/{producer_id}``;
* with ``read_only=True``, every write is 403 ``forbidden``.
"""

from __future__ import annotations

import datetime
import math
import random
import uuid
from collections.abc import Sequence
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

from ._classifier import TURRIS_CODES
from ._token import TOKEN_PATH

__all__ = ["TurrisSimulator", "error_response", "render_error", "simulator"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_MESSAGES = {
    "unauthorized": "Invalid or expired token",
    "forbidden": "Insufficient permissions for the requested resource",
    "invalid_input": "Field 'npn' is required",
    "not_found": "Resource not found",
    "internal_error": "Internal server error",
    "rate_limit_exceeded": "Rate limit exceeded. Please retry after 60 seconds.",
}


def _timestamp(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_error(
    code: str,
    status: int | None = None,
    *,
    messages: Sequence[str] | None = None,
    request_id: str | None = None,
    when: float | None = None,
    env: str = "dev",
) -> SimResponse:
    """The Turris error body for ``errorType`` ``code``, with its documented status."""
    entry = TURRIS_CODES.get(code)
    if status is None:
        status = entry.status if entry is not None and entry.status is not None else 500
    body = {
        "statusCode": status,
        "requestId": request_id or f"{env}-{uuid.uuid4()}",
        "errorType": code,
        "errorMessage": list(messages) if messages else [_MESSAGES.get(code, "Error")],
        "timestamp": _timestamp(datetime.datetime.now().timestamp() if when is None else when),
    }
    return SimResponse.json(status, body, code=code)


def error_response(code: str, status: int | None = None) -> httpx.Response:
    """:func:`render_error` as an ``httpx.Response`` (the plugin's ``render_error``)."""
    return render_error(code, status).to_httpx()


class TurrisSimulator(Simulator):
    """The Turris Public API, with fault injection (see the module docstring).

    Args:
        plan: faults on top of Turris's own behaviour.
        clock: the clock (share the pipeline's ``VirtualClock`` in tests).
        client_id: the API client the token endpoint accepts.
        client_secret: its secret.
        env: the request id prefix (``dev``, ``sandbox``, ``live``).
        read_only: answer every write with 403 ``forbidden``.
        rate_limit_headers: send ``X-RateLimit-*`` on every write response
            (``True``, the default), or only on 429s (``False``).
        producers: how many (invented) producers exist at the start.
        epoch: the Unix time at the start.
    """

    vendor = "turris"
    default_token_ttl = 3600.0
    default_rate_limits = (
        RateLimit(limit=60, methods=WRITE_METHODS, name="write"),
        RateLimit(limit=10, methods={"POST"}, path=TOKEN_PATH, name="token"),
    )
    outage_code = "http:503"
    not_found_code = "not_found"

    def __init__(
        self,
        *,
        plan: FaultPlan | None = None,
        clock: Clock | None = None,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        env: str = "dev",
        read_only: bool = False,
        rate_limit_headers: bool = True,
        producers: int = 25,
        epoch: float | None = None,
    ) -> None:
        super().__init__(
            plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, epoch=epoch
        )
        self.env = env
        self.read_only = read_only
        self.rate_limit_headers = rate_limit_headers
        # Ids come from their own seeded stream, so fault draws stay reproducible.
        self._ids = random.Random(self.plan.seed + 0x7E55)
        self.producers: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, SimResponse] = {}
        for n in range(1, producers + 1):
            self._create({"npn": f"{10_000_000 + n}", "firstName": "Pat", "lastName": f"Doe{n}"})

    # ---- the dialect ---------------------------------------------------------------

    def request_id(self) -> str:
        """A fresh ``<env>-<uuid4>`` request id."""
        return f"{self.env}-{uuid.UUID(int=self._ids.getrandbits(128), version=4)}"

    def _error(self, code: str, status: int | None = None, *messages: str) -> SimResponse:
        return render_error(
            code,
            status,
            messages=messages or None,
            request_id=self.request_id(),
            when=self.wall(),
            env=self.env,
        )

    def _ok(self, status: int, data: Any) -> SimResponse:
        body = {
            "statusCode": status,
            "requestId": self.request_id(),
            "data": data,
            "timestamp": _timestamp(self.wall()),
        }
        return SimResponse.json(status, body)

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        return self._error(code, status)

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        seconds = max(math.ceil(state.retry_after), 1)
        response = self._error(
            "rate_limit_exceeded",
            429,
            f"Rate limit exceeded. Please retry after {seconds} seconds.",
        )
        response.headers.extend(_limit_headers(state))
        return response

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        why = {
            "missing": "Missing Authorization header",
            "expired": "JWT token has expired",
        }.get(check.state, "Invalid token format")
        return self._error("unauthorized", 401, why)

    def client_key(self, request: SimRequest, check: TokenCheck | None) -> str:
        if check is None:  # the token endpoint: count per API client
            body = request.json() or {}
            client_id = body.get("clientId")
            return client_id if isinstance(client_id, str) else "anonymous"
        return super().client_key(request, check)

    def finish(
        self, request: SimRequest, response: SimResponse, limits: Sequence[LimitState]
    ) -> SimResponse:
        if (
            self.rate_limit_headers
            and request.method in WRITE_METHODS
            and limits
            and response.header("x-ratelimit-reset") is None
        ):
            response.headers.extend(_limit_headers(limits[0]))
        return response

    # ---- endpoints -----------------------------------------------------------------

    @route("POST", TOKEN_PATH, auth=False)
    async def token(self, request: SimRequest) -> SimResponse:
        body = request.json()
        if body is None:
            return self._error("invalid_input", 400, "Request body must be a JSON object")
        missing = [f for f in ("clientId", "clientSecret") if not isinstance(body.get(f), str)]
        if missing:
            return self._error("invalid_input", 400, *(f"Field '{f}' is required" for f in missing))
        if not self.credentials_match(body["clientId"], body["clientSecret"]):
            return self._error("unauthorized", 401, "Invalid client credentials")
        token, _ = self.issue_token(body["clientId"])
        return SimResponse.json(
            201,
            {
                "statusCode": 201,
                "data": {"accessToken": token},
                "timestamp": _timestamp(self.wall()),
            },
        )

    @route("GET", "/v1/auth/test-oauth")
    async def test_oauth(self, request: SimRequest) -> SimResponse:
        message = (
            "If you see this, your OAuth token is valid and the Turris Public API is reachable."
        )
        body = {
            "message": message,
            "requestId": self.request_id(),
            "timestamp": _timestamp(self.wall()),
        }
        return SimResponse.json(200, body)

    @route("GET", "/v1/producers")
    async def list_producers(self, request: SimRequest) -> SimResponse:
        page = _int(request.query.get("page"), 1)
        limit = _int(request.query.get("limit"), 20)
        if page is None or page < 1 or limit is None or not 1 <= limit <= 100:
            return self._error(
                "invalid_input", 400, "page must be >= 1 and limit between 1 and 100"
            )
        items = list(self.producers.values())
        start = (page - 1) * limit
        data = {
            "items": items[start : start + limit],
            "page": page,
            "limit": limit,
            "total": len(items),
        }
        return self._ok(200, data)

    @route("GET", "/v1/producers/{producer_id}")
    async def get_producer(self, request: SimRequest, producer_id: str) -> SimResponse:
        producer = self.producers.get(producer_id)
        if producer is None:
            return self._error("not_found", 404, f"Producer '{producer_id}' not found")
        return self._ok(200, producer)

    @route("POST", "/v1/producers")
    async def create_producer(self, request: SimRequest) -> SimResponse:
        if self.read_only:
            return self._error("forbidden", 403)
        key = request.idempotency_key
        if key is not None and key in self._by_key:
            return self._by_key[key]
        body = request.json()
        if body is None or not isinstance(body.get("npn"), str) or not body["npn"]:
            return self._error("invalid_input", 400, "Field 'npn' is required")
        if not body["npn"].isdigit():
            return self._error("invalid_input", 422, "Field 'npn' must contain only digits")
        if any(p["npn"] == body["npn"] for p in self.producers.values()):
            return self._error("invalid_input", 400, f"Producer with npn '{body['npn']}' exists")
        response = self._ok(201, self._create(body))
        if key is not None:
            self._by_key[key] = response
        return response

    @route("PATCH", "/v1/producers/{producer_id}")
    async def update_producer(self, request: SimRequest, producer_id: str) -> SimResponse:
        if self.read_only:
            return self._error("forbidden", 403)
        producer = self.producers.get(producer_id)
        if producer is None:
            return self._error("not_found", 404, f"Producer '{producer_id}' not found")
        body = request.json()
        if body is None:
            return self._error("invalid_input", 400, "Request body must be a JSON object")
        for field in ("firstName", "lastName"):
            if isinstance(body.get(field), str):
                producer[field] = body[field]
        return self._ok(200, producer)

    @route("DELETE", "/v1/producers/{producer_id}")
    async def delete_producer(self, request: SimRequest, producer_id: str) -> SimResponse:
        if self.read_only:
            return self._error("forbidden", 403)
        if self.producers.pop(producer_id, None) is None:
            return self._error("not_found", 404, f"Producer '{producer_id}' not found")
        return self._ok(200, {"deleted": producer_id})

    # ---- helpers -------------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        # A MongoDB-ObjectId-like id, as Turris's ids are.
        producer_id = f"{self._ids.getrandbits(96):024x}"
        producer = {
            "id": producer_id,
            "npn": body["npn"],
            "firstName": body.get("firstName"),
            "lastName": body.get("lastName"),
        }
        self.producers[producer_id] = producer
        return producer


def _limit_headers(state: LimitState) -> list[tuple[str, str]]:
    return [
        ("x-ratelimit-limit", str(state.rule.limit)),
        ("x-ratelimit-remaining", str(state.remaining)),
        ("x-ratelimit-reset", str(math.ceil(state.reset_at))),
    ]


def _int(raw: str | None, default: int) -> int | None:
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def simulator(
    *,
    plan: FaultPlan | None = None,
    clock: Clock | None = None,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
    **options: Any,
) -> TurrisSimulator:
    """A :class:`TurrisSimulator` (the plugin's ``simulator`` factory)."""
    return TurrisSimulator(
        plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, **options
    )
