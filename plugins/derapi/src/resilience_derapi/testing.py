"""A simulator of the Derapi API (a plain ASGI app) over several vendor backends.

This is ``resilience_derapi.testing``, the plugin's test tooling: tests and the
demo import it (the plugin object names it lazily), the plugin's runtime never does.

What it serves, as PUBLIC-FACTS.md (sections A3 and c) describes or assumes it:

* ``POST /oauth2/token``: RFC 6749 client credentials (form body; HTTP Basic or
  ``client_id``/``client_secret`` in the form); ``{access_token, token_type,
  expires_in: 3600}``; RFC 6749 §5.2 errors (``invalid_client`` 401 with Basic,
  400 without; ``unsupported_grant_type`` and ``invalid_request`` 400);
* ``GET /sites``, ``/batteries``, ``/solar-inverters``: the SDK's camelCase shape
  ``{"sites": [...], "errors": {...}, "nextPageToken"?}``, gathered from every
  backend (or the one named by ``vendor=``); a failed backend is named in
  ``errors`` with a message such as ``"Unauthorized: https://…"`` and its items
  are left out; ``pageSize`` (default 50, at most 100) and an opaque
  ``pageToken``;
* ``GET /sites/{id}``, ``/batteries/{id}``, ``/solar-inverters/{id}``: one
  resource; a failed owning backend gives the matching problem (``unauthorized``,
  ``network-timeout``, ...); an unknown id gives ``not-found``;
* ``GET /vendor-credentials`` (a VCM endpoint): ``vcm-not-configured`` unless the
  simulator is built with ``vcm_configured=True``;
* problem details (``application/problem+json``: ``type``, ``title``, ``detail``
  but no ``status`` or ``instance``) with the slugs and statuses of section (c);
  ``errors[{detail, pointer}]`` on validation errors only; ``Retry-After`` on
  ``too-many-requests``;
* the ``api-version`` header: ``v2024-09-01`` (the default when absent), anything
  else is a validation error; answers carry ``api-version``;
* a missing, invalid or expired bearer: a bare 401 (or the gateway's
  ``{"message": "Unauthorized"}`` with ``gateway_body=True``).

Assumptions of this simulator (Derapi does not document them): ``pageSize``
applies per backend (a page holds up to ``pageSize`` items of each backend, so a
page narrowed to one backend with the same ``pageToken`` holds exactly that
backend's items of the page); a backend whose items ran out before a page is
not asked for it.

Each backend has its own fault plan (:class:`Backend`): faults drawn per request
that reaches it (the kit's :class:`~resilience.testing.Fault`, whose ``code`` is
a Derapi error slug or ``"raw:<message>"``), after a ``script`` of what its first
requests get (a flapping backend fails a few, then recovers).
:attr:`DerapiSimulator.touches` records every backend each request reached, so
tests can assert which were asked again. The
simulator-wide :class:`~resilience.testing.FaultPlan` (outages, rate limits, slow
answers, errors for the whole API) comes on top.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import httpx

from resilience import Clock
from resilience.testing import (
    Fault,
    FaultPlan,
    LimitState,
    SimRequest,
    SimResponse,
    Simulator,
    TokenCheck,
    route,
)

from ._classifier import (
    DERAPI_CODES,
    TYPE_PREFIX,
    VALIDATION_ERROR,
    canonical_type,
    type_uri,
)
from ._token import TOKEN_PATH

__all__ = [
    "API_VERSION",
    "VENDORS",
    "Backend",
    "DerapiSimulator",
    "Touch",
    "error_response",
    "render_problem",
    "simulator",
]

API_VERSION = "v2024-09-01"
"""The API version the simulator speaks (and assumes when the header is absent)."""

VENDORS = frozenset(
    {
        "enphase",
        "enphasevpp",
        "sma",
        "smasbox",
        "solaredge",
        "solis",
        "tesla",
        "virtual",
        "franklinwh",
    }
)
"""Values the ``vendor`` filter accepts: the SDK's Vendor enum (and ``franklinwh``)."""

#: Resource path -> the list's key in the body, and the id prefix of its items.
RESOURCES: Mapping[str, tuple[str, str]] = {
    "sites": ("sites", "site"),
    "batteries": ("batteries", "batt"),
    "solar-inverters": ("solarInverters", "solr"),
}

#: How a backend failure reads in a list's ``errors`` object: the leading name.
_BACKEND_NAMES: Mapping[str, str] = {
    "validation-error": "Invalid request",
    "vcm-not-configured": "VCM Not Configured",
    "unauthorized": "Unauthorized",
    "not-found": "Not Found",
    "exists": "Exists",
    "derapi-internal-error": "Derapi Internal Error",
    "backend-data-assertion-error": "Backend Data Assertion Error",
    "backend-server-error": "Backend Server Error",
    "network-timeout": "Timeout",
    "too-many-requests": "Too Many Requests",
}

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def _slug(code: str) -> str | None:
    """The slug of a code given as a slug or as a type URI; ``None`` if unknown."""
    uri = canonical_type(code) if "#" in code else canonical_type(TYPE_PREFIX + code)
    return None if uri is None else uri[len(TYPE_PREFIX) :]


def render_problem(
    code: str,
    status: int | None = None,
    *,
    detail: str | None = None,
    errors: Iterable[Mapping[str, str]] | None = None,
    retry_after: int | None = None,
) -> SimResponse:
    """Derapi's problem-details answer for ``code`` (a type URI or a slug).

    The status is the one section (c) of PUBLIC-FACTS assumes, unless given;
    ``detail`` and ``errors`` only when given; ``Retry-After`` on
    ``too-many-requests`` (1 s unless ``retry_after`` says otherwise).
    """
    slug = _slug(code)
    uri = type_uri(slug) if slug is not None else code
    entry = DERAPI_CODES.get(uri)
    if status is None:
        status = entry.status if entry is not None and entry.status is not None else 500
    body: dict[str, Any] = {
        "type": uri,
        "title": entry.title if entry is not None and entry.title else "Error",
    }
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = [dict(e) for e in errors]
    headers: list[tuple[str, str]] = []
    if slug == "too-many-requests":
        headers.append(("retry-after", str(1 if retry_after is None else retry_after)))
    return SimResponse.json(
        status, body, headers=headers, code=uri, content_type="application/problem+json"
    )


def error_response(code: str, status: int | None = None) -> httpx.Response:
    """:func:`render_problem` as an ``httpx.Response`` (the plugin's ``render_error``).

    Validation errors carry a sample ``errors`` list, as Derapi's page shows.
    """
    extra: dict[str, Any] = {}
    if _slug(code) == "validation-error":
        extra["detail"] = "body: -1 is less than the minimum of 0"
        extra["errors"] = [{"detail": "-1 is less than the minimum of 0", "pointer": "#/duration"}]
    return render_problem(code, status, **extra).to_httpx()


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(value)


def _script(value: Iterable[str | None]) -> tuple[str | None, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Backend:
    """One vendor backend behind Derapi: its resources and its own fault plan.

    Example::

        backends = {
            "sma": Backend(),                                   # healthy
            "solis": Backend.rejecting_credentials(),           # "Unauthorized: …"
            "solaredge": Backend.flapping(2),                   # 2 timeouts, then fine
            "tesla": Backend(faults=[Fault(code="too-many-requests", rate=0.3)]),
        }
    """

    sites: int = 2
    """How many sites it holds."""
    batteries: int = 2
    """How many batteries it holds."""
    solar_inverters: int = 2
    """How many solar inverters it holds."""
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)
    """Faults drawn for each request reaching it; ``code`` is a Derapi error slug
    (or type URI), or ``"raw:<message>"`` for a message in no known form."""
    script: tuple[str | None, ...] = attrs.field(default=(), converter=_script)
    """What the first requests reaching it get, one entry each: a failure code, or
    ``None`` for a normal answer; after the script, :attr:`faults` apply."""

    @classmethod
    def rejecting_credentials(cls, **options: Any) -> Backend:
        """A backend that rejects the stored vendor credentials, every time."""
        return cls(faults=(Fault(code="unauthorized"),), **options)

    @classmethod
    def timing_out(cls, **options: Any) -> Backend:
        """A backend Derapi cannot reach, every time."""
        return cls(faults=(Fault(code="network-timeout"),), **options)

    @classmethod
    def flapping(cls, times: int, code: str = "network-timeout", **options: Any) -> Backend:
        """A backend that fails its first ``times`` requests, then recovers."""
        return cls(script=(code,) * times, **options)

    def count(self, resource: str) -> int:
        """How many items of ``resource`` (a path: ``"sites"``, ...) it holds."""
        return {
            "sites": self.sites,
            "batteries": self.batteries,
            "solar-inverters": self.solar_inverters,
        }[resource]


@attrs.frozen
class Touch:
    """One request reaching one backend, and what the backend did."""

    backend: str
    """The backend's name."""
    path: str
    """The request's path."""
    failure: str | None
    """The slug (or raw message) it failed with, or ``None``."""


def _suffix(*parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:16]


class DerapiSimulator(Simulator):
    """The Derapi simulator (see the module docstring).

    Args:
        backends: backend name to :class:`Backend` (default: healthy ``sma``,
            ``solaredge`` and ``solis``).
        unauthorized_status: the status of ``unauthorized`` problems (401 or 403).
        vcm_status: the status of ``vcm-not-configured`` problems.
        vcm_configured: whether the VCM endpoint answers success.
        gateway_body: answer a bad bearer with ``{"message": "Unauthorized"}``
            instead of an empty 401.
        plan, clock, client_id, client_secret, epoch: as for
            :class:`~resilience.testing.Simulator`.
    """

    vendor = "derapi"
    default_token_ttl = 3600.0
    not_found_code = type_uri("not-found")

    def __init__(
        self,
        *,
        backends: Mapping[str, Backend] | None = None,
        unauthorized_status: int = 401,
        vcm_status: int = 400,
        vcm_configured: bool = False,
        gateway_body: bool = False,
        plan: FaultPlan | None = None,
        clock: Clock | None = None,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        epoch: float | None = None,
    ) -> None:
        super().__init__(
            plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, epoch=epoch
        )
        if backends is None:
            backends = {"sma": Backend(), "solaredge": Backend(), "solis": Backend()}
        self.backends: dict[str, Backend] = dict(backends)
        self.unauthorized_status = unauthorized_status
        self.vcm_status = vcm_status
        self.vcm_configured = vcm_configured
        self.gateway_body = gateway_body
        self.touches: list[Touch] = []
        """Every request that reached a backend, in order."""
        self._touched: dict[str, int] = {}
        self._items: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._by_id: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, backend in self.backends.items():
            for resource in RESOURCES:
                items = [self._item(name, resource, i) for i in range(backend.count(resource))]
                self._items[(name, resource)] = items
                for item in items:
                    self._by_id[item["id"]] = (name, item)

    # ---- what tests ask ------------------------------------------------------------

    def asked(self, backend: str, path: str | None = None) -> int:
        """How many requests reached ``backend`` (on ``path``, if given)."""
        return sum(1 for t in list(self.touches) if t.backend == backend and path in (None, t.path))

    def items(self, backend: str, resource: str = "sites") -> list[dict[str, Any]]:
        """Every item of ``resource`` ``backend`` holds, in order."""
        return list(self._items.get((backend, resource), []))

    # ---- the dialect ---------------------------------------------------------------

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        """A problem-details answer; ``unauthorized``/``vcm-not-configured`` at the
        statuses this simulator was built with."""
        slug = _slug(code)
        if status is None and slug == "unauthorized":
            status = self.unauthorized_status
        if status is None and slug == "vcm-not-configured":
            status = self.vcm_status
        return self._versioned(render_problem(code, status))

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        """``too-many-requests`` with ``Retry-After`` until the window ends."""
        wait = max(int(state.retry_after + 0.999), 1)
        return self._versioned(render_problem("too-many-requests", retry_after=wait))

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        """A bare 401 (or the gateway's ``{"message": "Unauthorized"}``)."""
        challenge = 'Bearer realm="derapi"'
        if check.state in ("invalid", "expired"):
            challenge += ', error="invalid_token"'
        headers = [("www-authenticate", challenge)]
        if self.gateway_body:
            return SimResponse.json(401, {"message": "Unauthorized"}, headers=headers)
        return SimResponse(status=401, headers=headers)

    def _versioned(self, response: SimResponse) -> SimResponse:
        if response.header("api-version") is None:
            response.headers.append(("api-version", API_VERSION))
        return response

    def _version_error(self, request: SimRequest) -> SimResponse | None:
        version = request.headers.get("api-version")
        if version is None or version.strip() == API_VERSION:
            return None
        return self._validation(f"header api-version: unsupported version {version[:40]!r}")

    def _validation(self, detail: str, pointer: str | None = None) -> SimResponse:
        error: dict[str, str] = {"detail": detail}
        if pointer is not None:
            error["pointer"] = pointer
        return self._versioned(render_problem(VALIDATION_ERROR, detail=detail, errors=[error]))

    # ---- the token endpoint --------------------------------------------------------

    @route("POST", TOKEN_PATH, auth=False)
    async def token(self, request: SimRequest) -> SimResponse:
        """RFC 6749 §4.4 client credentials, with §5.2 errors."""
        form = dict(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace")))
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        basic = False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            basic = True
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, colon, password = decoded.partition(":")
            client_id = urllib.parse.unquote_plus(user) if colon else None
            client_secret = urllib.parse.unquote_plus(password) if colon else None
        grant = form.get("grant_type")
        if grant is None or client_id is None or client_secret is None:
            return SimResponse.json(400, {"error": "invalid_request"}, code="invalid_request")
        if grant != "client_credentials":
            return SimResponse.json(
                400, {"error": "unsupported_grant_type"}, code="unsupported_grant_type"
            )
        if not self.credentials_match(client_id, client_secret):
            # RFC 6749 §5.2: 401 (with a challenge) when the client used Basic.
            if basic:
                return SimResponse.json(
                    401,
                    {"error": "invalid_client"},
                    headers=[("www-authenticate", 'Basic realm="derapi"')],
                    code="invalid_client",
                )
            return SimResponse.json(400, {"error": "invalid_client"}, code="invalid_client")
        token, life = self.issue_token(client_id)
        return SimResponse.json(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": int(life)},
            headers=[("cache-control", "no-store"), ("pragma", "no-cache")],
        )

    # ---- lists ---------------------------------------------------------------------

    @route("GET", "/sites")
    async def list_sites(self, request: SimRequest) -> SimResponse:
        """``GET /sites``."""
        return self._list(request, "sites")

    @route("GET", "/batteries")
    async def list_batteries(self, request: SimRequest) -> SimResponse:
        """``GET /batteries``."""
        return self._list(request, "batteries")

    @route("GET", "/solar-inverters")
    async def list_solar_inverters(self, request: SimRequest) -> SimResponse:
        """``GET /solar-inverters``."""
        return self._list(request, "solar-inverters")

    def _list(self, request: SimRequest, resource: str) -> SimResponse:
        bad = self._version_error(request)
        if bad is not None:
            return bad
        vendor = request.query.get("vendor")
        if vendor is not None and vendor not in VENDORS and vendor not in self.backends:
            return self._validation(f"vendor: {vendor[:40]!r} is not a known vendor")
        size_text = request.query.get("pageSize")
        size = DEFAULT_PAGE_SIZE
        if size_text is not None:
            if not size_text.isdigit() or not 1 <= int(size_text) <= MAX_PAGE_SIZE:
                return self._validation(f"pageSize: must be an integer in 1..{MAX_PAGE_SIZE}")
            size = int(size_text)
        page = 0
        token = request.query.get("pageToken")
        if token:
            decoded = self._page_token(token, resource)
            if decoded is None:
                return self._validation("pageToken: invalid or expired page token")
            page, size = decoded
        names = [vendor] if vendor is not None else list(self.backends)
        key, _ = RESOURCES[resource]
        items: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        more = False
        for name in names:
            backend = self.backends.get(name)
            if backend is None:
                continue
            held = self._items[(name, resource)]
            window = held[page * size : (page + 1) * size]
            if page > 0 and not window:
                continue  # its items ran out on an earlier page: not asked
            failure = self._touch(name, request)
            if failure is not None:
                errors[name] = self._backend_message(name, resource, failure)
            else:
                items.extend(window)
            if len(held) > (page + 1) * size:
                more = True
        body: dict[str, Any] = {key: items, "errors": errors}
        if more:
            body["nextPageToken"] = self._next_token(resource, page + 1, size)
        return self._versioned(SimResponse.json(200, body))

    def _next_token(self, resource: str, page: int, size: int) -> str:
        raw = json.dumps({"r": resource, "p": page, "n": size}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")

    def _page_token(self, token: str, resource: str) -> tuple[int, int] | None:
        if len(token) > 200:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict) or data.get("r") != resource:
            return None
        page, size = data.get("p"), data.get("n")
        if not isinstance(page, int) or not isinstance(size, int) or page < 1:
            return None
        if not 1 <= size <= MAX_PAGE_SIZE:
            return None
        return page, size

    # ---- single resources ------------------------------------------------------------

    @route("GET", "/sites/{resource_id}")
    async def get_site(self, request: SimRequest, resource_id: str) -> SimResponse:
        """``GET /sites/{id}``."""
        return self._one(request, resource_id)

    @route("GET", "/batteries/{resource_id}")
    async def get_battery(self, request: SimRequest, resource_id: str) -> SimResponse:
        """``GET /batteries/{id}``."""
        return self._one(request, resource_id)

    @route("GET", "/solar-inverters/{resource_id}")
    async def get_solar_inverter(self, request: SimRequest, resource_id: str) -> SimResponse:
        """``GET /solar-inverters/{id}``."""
        return self._one(request, resource_id)

    def _one(self, request: SimRequest, resource_id: str) -> SimResponse:
        bad = self._version_error(request)
        if bad is not None:
            return bad
        found = self._by_id.get(resource_id)
        resource = request.path.strip("/").split("/", 1)[0]
        if found is None or RESOURCES[resource][1] != resource_id.split("-", 1)[0]:
            return self.render_error("not-found", None, request)
        name, item = found
        failure = self._touch(name, request)
        if failure is None:
            return self._versioned(SimResponse.json(200, item))
        if failure.startswith("raw:"):
            return self._versioned(render_problem("backend-server-error", detail=failure[4:]))
        return self.render_error(failure, None, request)

    # ---- VCM -------------------------------------------------------------------------

    @route("GET", "/vendor-credentials")
    async def vendor_credentials(self, request: SimRequest) -> SimResponse:
        """A VCM endpoint: ``vcm-not-configured`` unless VCM is configured."""
        bad = self._version_error(request)
        if bad is not None:
            return bad
        if not self.vcm_configured:
            return self.render_error("vcm-not-configured", None, request)
        listed = [{"vendor": name} for name in self.backends]
        return self._versioned(SimResponse.json(200, {"vendorCredentials": listed}))

    # ---- backends --------------------------------------------------------------------

    def _touch(self, name: str, request: SimRequest) -> str | None:
        """One request reaches backend ``name``: its failure (slug or raw), or ``None``."""
        backend = self.backends[name]
        with self._lock:
            count = self._touched.get(name, 0) + 1
            self._touched[name] = count
        failure: str | None = None
        if count <= len(backend.script):
            failure = backend.script[count - 1]
        else:
            elapsed = self.elapsed()
            for fault in backend.faults:
                active = fault.active(elapsed) and fault.matches(request, is_auth=False)
                if active and self._draw(fault.rate):
                    failure = fault.code
                    break
        if failure is not None and not failure.startswith("raw:"):
            failure = _slug(failure) or failure
        with self._lock:
            self.touches.append(Touch(name, request.path, failure))
        return failure

    def _backend_message(self, name: str, resource: str, failure: str) -> str:
        if failure.startswith("raw:"):
            return failure[4:]
        leading = _BACKEND_NAMES.get(failure, failure)
        return f"{leading}: https://{name}.backend.example/v1/api/{resource}"

    def _item(self, backend: str, resource: str, index: int) -> dict[str, Any]:
        _, prefix = RESOURCES[resource]
        ident = f"{prefix}-{_suffix(backend, resource, str(index))}"
        if resource == "sites":
            return {
                "id": ident,
                "vendor": backend,
                "name": f"{backend} site {index + 1}",
                "locationUTCOffset": 0,
                "batteries": [],
                "solarInverters": [],
            }
        return {
            "id": ident,
            "vendor": backend,
            "model": f"{backend}-{prefix}-model",
            "serialNumber": f"{backend.upper()}{index:06d}",
            "siteID": f"site-{_suffix(backend, 'sites', '0')}",
            "reportedAt": "2024-09-01T00:00:00Z",
        }


def simulator(
    *,
    plan: FaultPlan | None = None,
    clock: Clock | None = None,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
    **options: Any,
) -> DerapiSimulator:
    """A :class:`DerapiSimulator` (the plugin's ``simulator`` factory)."""
    return DerapiSimulator(
        plan=plan, clock=clock, client_id=client_id, client_secret=client_secret, **options
    )
