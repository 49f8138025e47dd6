"""A simulator of the Tellus Open Platform operator API (a plain ASGI app).

This is ``resilience_tellus.testing``, the plugin's test tooling: tests and the
demo import it (the plugin object names it lazily), the plugin's runtime never does.

What it serves, as the public docs describe it (PUBLIC-FACTS.md, section A1):

* ``POST /v1/operator/oauth/token``: JSON client credentials; an un-enveloped
  ``{access_token, token_type, expires_in}``; wrong credentials give HTTP 401
  code 2001, a wrong ``grant_type`` 400 code 1001, a missing field 400 code 1002;
* ``GET /v1/operator/sites`` (``page``/``size`` pagination, ``status`` filter),
  ``GET /v1/operator/devices/{device_id}``,
  ``POST /v1/operator/devices/{device_id}/connectors/{connector_id}/start`` and
  ``.../stop``, ``GET /v1/operator/commands/{command_id}``;
* the exact envelopes of every error code; 2002 for an expired token, 2001 for
  a malformed or unknown one; 2003 for a control call by a client without the
  ``write`` scope; 3001 for unknown resources; 4001 for starting a connector that
  is already charging;
* the documented rate limits per client id in fixed 60-s windows: 60/min for
  queries, 30/min for control, 10/min for tokens; a 429 carries code 5001 and
  ``details.retry_after_seconds``, and no rate-limit header (``Retry-After`` only
  when ``retry_after_header=True``).

Everything a :class:`~resilience.testing.FaultPlan` describes comes on top.
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

from ._classifier import TELLUS_CODES
from ._token import TOKEN_PATH

__all__ = ["TellusSimulator", "error_response", "render_error", "simulator"]

_CONTROL = "/v1/operator/devices/*/connectors/*/*"

#: A sample ``details`` per code, for codes whose page example shows one.
_SAMPLE_DETAILS: dict[str, dict[str, Any]] = {
    "1001": {"field": "power", "value": -5},
    "1002": {"field": "device_id"},
    "5001": {"retry_after_seconds": 1},
}


def render_error(
    code: str,
    status: int | None = None,
    *,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> SimResponse:
    """The Tellus error envelope for ``code``, with its documented HTTP status."""
    entry = TELLUS_CODES.get(code)
    if status is None:
        status = entry.status if entry is not None and entry.status is not None else 500
    body: dict[str, Any] = {"code": int(code) if code.lstrip("-").isdigit() else code}
    body["message"] = message or (entry.title if entry is not None else None) or "Error"
    if details is None:
        details = _SAMPLE_DETAILS.get(code)
    if details:
        body["details"] = details
    return SimResponse.json(status, body, code=code)


def error_response(code: str, status: int | None = None) -> httpx.Response:
    """:func:`render_error` as an ``httpx.Response`` (the plugin's ``render_error``)."""
    return render_error(code, status).to_httpx()


def _ok(data: Any) -> SimResponse:
    return SimResponse.json(200, {"code": 0, "message": "success", "data": data}, code="0")


def _sites(count: int) -> list[dict[str, Any]]:
    sites = []
    for n in range(1, count + 1):
        sites.append(
            {
                "site_id": f"site_{n:03d}",
                "name": f"Simulated site {n}",
                "address": f"{n} Charging Street",
                "location": {"lat": 37.0 + n / 1000, "lng": -122.0 - n / 1000},
                "total_connectors": 4,
                "status_summary": {"idle": 3, "charging": 1, "fault": 0},
                "power_capacity": 350,
                "status": "inactive" if n % 10 == 0 else "active",
                "created_at": "2025-01-01T00:00:00Z",
            }
        )
    return sites


class TellusSimulator(Simulator):
    """The Tellus operator API, with fault injection (see the module docstring).

    Args:
        plan: faults on top of Tellus's own behaviour.
        clock: the clock (share the pipeline's ``VirtualClock`` in tests).
        client_id: the client the token endpoint accepts.
        client_secret: its secret.
        scopes: the client's scopes (``"read"``, ``"write"``); control needs write.
        sites: how many sites the operator has.
        retry_after_header: also send ``Retry-After`` on 429 (Tellus does not).
        epoch: the Unix time at the start.
    """

    vendor = "tellus"
    default_token_ttl = 86_400.0
    default_rate_limits = (
        RateLimit(limit=60, methods={"GET"}, name="query"),
        RateLimit(limit=30, methods={"POST"}, path=_CONTROL, name="control"),
        RateLimit(limit=30, methods={"POST"}, path="/v1/operator/control/*", name="control"),
        RateLimit(limit=10, methods={"POST"}, path=TOKEN_PATH, name="token"),
    )
    outage_code = "9001"
    not_found_code = "3001"

    def __init__(
        self,
        *,
        plan: FaultPlan | None = None,
        clock: Clock | None = None,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        scopes: tuple[str, ...] = ("read", "write"),
        sites: int = 45,
        retry_after_header: bool = False,
        epoch: float | None = None,
    ) -> None:
        super().__init__(
            plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, epoch=epoch
        )
        self.scopes = frozenset(scopes)
        self.retry_after_header = retry_after_header
        self.sites = _sites(sites)
        self.devices: dict[str, dict[str, Any]] = {}
        for index, site in enumerate(self.sites, start=1):
            device_id = f"dvc_{index:012x}"
            self.devices[device_id] = {
                "device_id": device_id,
                "sn": f"TP{index:08d}",
                "model": "TP-DC-120",
                "manufacturer": "Tellus Power",
                "firmware_version": "1.3.0",
                "status": "online",
                "connectors": [{"connector_id": c, "status": "idle", "power": 0.0} for c in (1, 2)],
                "site_id": site["site_id"],
            }
        self.commands: dict[str, dict[str, Any]] = {}

    # ---- the dialect ---------------------------------------------------------------

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        return render_error(code, status)

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        seconds = max(math.ceil(state.retry_after), 1)
        response = render_error("5001", 429, details={"retry_after_seconds": seconds})
        if self.retry_after_header:
            response.headers.append(("retry-after", str(seconds)))
        return response

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        if check.state == "expired":
            return render_error("2002", 401)
        return render_error("2001", 401)

    def client_key(self, request: SimRequest, check: TokenCheck | None) -> str:
        if check is None:  # the token endpoint: Tellus counts per client_id
            body = request.json() or {}
            client_id = body.get("client_id")
            return client_id if isinstance(client_id, str) else "anonymous"
        return super().client_key(request, check)

    # ---- endpoints -----------------------------------------------------------------

    @route("POST", TOKEN_PATH, auth=False)
    async def token(self, request: SimRequest) -> SimResponse:
        body = request.json()
        if body is None:
            return render_error("1001", 400, message="Request body must be a JSON object")
        for field in ("client_id", "client_secret", "grant_type"):
            if not isinstance(body.get(field), str) or not body[field]:
                return render_error(
                    "1002",
                    400,
                    message=f"Missing required parameter '{field}'",
                    details={"field": field},
                )
        if body["grant_type"] != "client_credentials":
            return render_error(
                "1001",
                400,
                message="grant_type must be client_credentials",
                details={"field": "grant_type", "value": body["grant_type"]},
            )
        if not self.credentials_match(body["client_id"], body["client_secret"]):
            return render_error("2001", 401, message="invalid client credentials")
        token, life = self.issue_token(body["client_id"])
        data = {"access_token": token, "token_type": "Bearer", "expires_in": int(life)}
        return SimResponse.json(200, data)

    @route("GET", "/v1/operator/sites")
    async def list_sites(self, request: SimRequest) -> SimResponse:
        page = _int_param(request, "page", 1)
        size = _int_param(request, "size", 20)
        if page is None or page < 1:
            return render_error(
                "1001",
                400,
                message="page must be >= 1",
                details={"field": "page", "value": request.query.get("page")},
            )
        if size is None or not 1 <= size <= 100:
            return render_error(
                "1001",
                400,
                message="size must be between 1 and 100",
                details={"field": "size", "value": request.query.get("size")},
            )
        status = request.query.get("status")
        if status not in (None, "active", "inactive"):
            return render_error(
                "1001",
                400,
                message="status must be active or inactive",
                details={"field": "status", "value": status},
            )
        items = [s for s in self.sites if status is None or s["status"] == status]
        start = (page - 1) * size
        return _ok(
            {"items": items[start : start + size], "total": len(items), "page": page, "size": size}
        )

    @route("GET", "/v1/operator/devices/{device_id}")
    async def get_device(self, request: SimRequest, device_id: str) -> SimResponse:
        device = self.devices.get(device_id)
        if device is None:
            return render_error("3001", 404, message=f"Device '{device_id}' not found")
        return _ok(device)

    @route("POST", "/v1/operator/devices/{device_id}/connectors/{connector_id}/start")
    async def start(self, request: SimRequest, device_id: str, connector_id: str) -> SimResponse:
        denied = self._control_check(request, device_id, connector_id)
        if isinstance(denied, SimResponse):
            return denied
        connector = denied
        body = request.json()
        if body is None or "charge_power" not in body:
            return render_error(
                "1002",
                400,
                message="Missing required parameter 'charge_power'",
                details={"field": "charge_power"},
            )
        power = body["charge_power"]
        if isinstance(power, bool) or not isinstance(power, (int, float)) or power <= 0:
            return render_error(
                "1001",
                400,
                message="Parameter 'charge_power' must be positive",
                details={"field": "charge_power", "value": power},
            )
        if connector["status"] == "charging":
            return render_error("4001", 409, message="Connector is already charging")
        connector["status"] = "charging"
        connector["power"] = float(power)
        return _ok(self._command("start", device_id, connector_id))

    @route("POST", "/v1/operator/devices/{device_id}/connectors/{connector_id}/stop")
    async def stop(self, request: SimRequest, device_id: str, connector_id: str) -> SimResponse:
        denied = self._control_check(request, device_id, connector_id)
        if isinstance(denied, SimResponse):
            return denied
        denied["status"] = "idle"
        denied["power"] = 0.0
        return _ok(self._command("stop", device_id, connector_id))

    @route("GET", "/v1/operator/commands/{command_id}")
    async def get_command(self, request: SimRequest, command_id: str) -> SimResponse:
        command = self.commands.get(command_id)
        if command is None:
            return render_error("3001", 404, message=f"Command '{command_id}' not found")
        return _ok(command)

    # ---- helpers -------------------------------------------------------------------

    def _control_check(
        self, request: SimRequest, device_id: str, connector_id: str
    ) -> dict[str, Any] | SimResponse:
        if "write" not in self.scopes:
            return render_error("2003", 403, message="client_id lacks the 'write' scope")
        device = self.devices.get(device_id)
        if device is None:
            return render_error("3001", 404, message=f"Device '{device_id}' not found")
        connectors: list[dict[str, Any]] = device["connectors"]
        for connector in connectors:
            if str(connector["connector_id"]) == connector_id:
                return connector
        return render_error("3001", 404, message=f"Connector '{connector_id}' not found")

    def _command(self, kind: str, device_id: str, connector_id: str) -> dict[str, Any]:
        command_id = f"cmd_{len(self.commands) + 1:08d}"
        stamp = self.http_date()
        self.commands[command_id] = {
            "command_id": command_id,
            "kind": kind,
            "device_id": device_id,
            "connector_id": connector_id,
            "status": "queued",
            "created_at": stamp,
            "updated_at": stamp,
            "result": None,
        }
        return {"command_id": command_id, "status": "queued"}


def _int_param(request: SimRequest, name: str, default: int) -> int | None:
    raw = request.query.get(name)
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
) -> TellusSimulator:
    """A :class:`TellusSimulator` (the plugin's ``simulator`` factory)."""
    return TellusSimulator(
        plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, **options
    )
