"""Vendor simulators: the fault-plan machinery and a small ASGI toolkit.

Each plugin ships an ASGI app that emulates its vendor's API. This module holds
everything those apps share, so a simulator only renders its vendor's dialect:

* :class:`FaultPlan`: what goes wrong and when: error rates per code
  (:class:`Fault`, drawn from a seeded random), outages for a period
  (:class:`Outage`), slow responses (:class:`Slowness`), short-lived tokens
  (``token_ttl``) and rate limits in fixed windows (:class:`RateLimit`). Every
  time in a plan is seconds since the simulator was created, on its clock.
* :class:`Simulator`: a plain ASGI callable (no web framework) with a tiny
  router (:func:`route`), JWT-like token issuing and checking, the fault plan
  applied in a fixed order, and a record of every request received
  (:attr:`Simulator.received`), so tests can assert what was (not) retried.
* :func:`serve`: runs any ASGI app with uvicorn on a free 127.0.0.1 port, in a
  thread with its own event loop, for tests running under asyncio or trio.

Time goes through the injected :class:`~resilience.Clock`: a slow response under a
``VirtualClock`` moves virtual time on and returns at once, so tests never sleep.
Wall-clock values a vendor sends (token ``exp``, ``Date``, ``X-RateLimit-Reset``)
are the simulator's epoch plus the clock's elapsed time, so they stay consistent
with virtual time too.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import fnmatch
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, ClassVar

import anyio
import attrs
import httpx

from ._clock import SYSTEM_CLOCK, Clock
from ._plugin import parse_json_object

__all__ = [
    "Fault",
    "FaultPlan",
    "LimitState",
    "Outage",
    "RateLimit",
    "Received",
    "SimRequest",
    "SimResponse",
    "Simulator",
    "Slowness",
    "TokenCheck",
    "route",
    "serve",
]

#: Request bodies larger than this are refused (413) before a handler sees them.
MAX_REQUEST_BYTES = 10 << 20

ASGIReceive = Callable[[], Awaitable[Mapping[str, Any]]]
ASGISend = Callable[[Mapping[str, Any]], Awaitable[None]]


# --------------------------------------------------------------------------------------
# The fault plan


def _methods(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return frozenset(m.upper() for m in value)


def _rate(value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {value!r}")
    return float(value)


def _seconds(value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class _Scope:
    """Which requests, and when, a rule applies to (shared by faults and limits)."""

    methods: frozenset[str] | None = attrs.field(default=None, converter=_methods)
    """Only these methods (``None``: all)."""
    path: str | None = None
    """Only paths matching this shell-style pattern (``*`` matches ``/`` too);
    ``None``: every resource path (not the token endpoint)."""

    def matches(self, request: SimRequest, *, is_auth: bool) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.path is None:
            return not is_auth
        return fnmatch.fnmatchcase(request.path, self.path)


@attrs.frozen(kw_only=True)
class Fault(_Scope):
    """Answer a fraction of matching requests with a vendor code.

    ``code`` is one of the vendor's codes (``"9001"``, ``"internal_error"``), or
    ``"http:<status>"`` for a non-vendor answer: an HTML page from a proxy in
    front of the vendor (``"http:502"``).
    """

    code: str
    """The code to answer with."""
    rate: float = attrs.field(default=1.0, converter=_rate)
    """Probability per matching request."""
    status: int | None = None
    """The HTTP status (default: the code's documented one)."""
    start: float = attrs.field(default=0.0, converter=_seconds)
    """Active from this time (seconds since the simulator started)."""
    end: float | None = None
    """Active until this time (``None``: for ever)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


@attrs.frozen(kw_only=True)
class Outage(_Scope):
    """Every matching request fails for ``duration`` seconds from ``start``.

    Unlike a :class:`Fault`, an outage with no ``path`` hits the token endpoint too.
    """

    start: float = attrs.field(converter=_seconds)
    """When it starts (seconds since the simulator started)."""
    duration: float = attrs.field(converter=_seconds)
    """How long it lasts."""
    code: str | None = None
    """What to answer (default: the simulator's ``outage_code``)."""
    status: int | None = None
    """The HTTP status (default: the code's documented one)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.start + self.duration

    def matches(self, request: SimRequest, *, is_auth: bool) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        return self.path is None or fnmatch.fnmatchcase(request.path, self.path)


@attrs.frozen(kw_only=True)
class Slowness(_Scope):
    """Delay a fraction of matching responses by ``delay`` seconds (on the clock)."""

    delay: float = attrs.field(converter=_seconds)
    """Seconds added before the answer."""
    rate: float = attrs.field(default=1.0, converter=_rate)
    """Probability per matching request."""
    start: float = attrs.field(default=0.0, converter=_seconds)
    """Active from this time."""
    end: float | None = None
    """Active until this time (``None``: for ever)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


@attrs.frozen(kw_only=True)
class RateLimit(_Scope):
    """At most ``limit`` matching requests per client in each fixed ``window``.

    Windows are aligned on the simulator's start (0-60 s, 60-120 s, ...); a request
    over the limit is answered by the simulator's rate-limit rendering and does not
    count. ``path=None`` covers resource paths only, as for faults.
    """

    limit: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.instance_of(int), attrs.validators.ge(0))
    )
    """Requests allowed per window."""
    window: float = attrs.field(
        default=60.0, converter=_seconds, validator=attrs.validators.gt(0.0)
    )
    """The window, in seconds."""
    name: str = ""
    """A label (``"query"``, ``"control"``, ``"token"``)."""


@attrs.frozen(kw_only=True)
class LimitState:
    """Where a client stands against one :class:`RateLimit` after a request."""

    rule: RateLimit
    """The rule."""
    remaining: int
    """Requests left in this window."""
    reset_at: float
    """Wall-clock (Unix) time the window ends, on the simulator's epoch."""
    retry_after: float
    """Seconds until the window ends."""
    exceeded: bool
    """Whether this request was over the limit."""


def _faults(value: Mapping[str, float] | Iterable[Fault]) -> tuple[Fault, ...]:
    if isinstance(value, Mapping):
        return tuple(Fault(code=str(code), rate=rate) for code, rate in value.items())
    return tuple(value)


def _outages(value: Iterable[Outage]) -> tuple[Outage, ...]:
    return tuple(value)


def _slowness(value: Iterable[Slowness]) -> tuple[Slowness, ...]:
    return tuple(value)


def _optional_limits(value: Iterable[RateLimit] | None) -> tuple[RateLimit, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class FaultPlan:
    """What a simulator does wrong, and when.

    Example::

        FaultPlan(
            errors={"9001": 0.2, "5001": 0.05},          # 20% internal errors, 5% 429s
            outages=[Outage(start=30, duration=20)],      # everything fails from t=30 to 50
            slow=[Slowness(delay=2.0, rate=0.1)],         # 10% of answers take 2 s longer
            token_ttl=120,                                # tokens expire after 2 minutes
            seed=7,
        )

    ``rate_limits=None`` keeps the vendor's documented limits; ``()`` turns them off.
    """

    errors: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)
    """Injected errors: a mapping code -> rate, or :class:`Fault` objects."""
    outages: tuple[Outage, ...] = attrs.field(default=(), converter=_outages)
    """Periods when every matching request fails."""
    slow: tuple[Slowness, ...] = attrs.field(default=(), converter=_slowness)
    """Slow responses."""
    token_ttl: float | None = None
    """Life of issued tokens in seconds (default: the vendor's)."""
    rate_limits: tuple[RateLimit, ...] | None = attrs.field(
        default=None, converter=_optional_limits
    )
    """Rate limits (``None``: the vendor's documented ones)."""
    seed: int = 0
    """Seed of the random draws, so a plan replays identically."""


# --------------------------------------------------------------------------------------
# Requests, responses, records


class _Headers(Mapping[str, str]):
    """Case-insensitive read-only request headers (the last value wins)."""

    __slots__ = ("_items",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._items = {k.decode("latin-1").lower(): v.decode("latin-1", "replace") for k, v in raw}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@attrs.frozen(kw_only=True)
class SimRequest:
    """A request as a simulator sees it."""

    method: str
    """Upper-case method."""
    path: str
    """The URL path."""
    query: Mapping[str, str]
    """Query parameters (the last value of a repeated one)."""
    headers: Mapping[str, str]
    """Headers, case-insensitive."""
    body: bytes = attrs.field(repr=False)
    """The raw body."""
    params: Mapping[str, str] = attrs.field(factory=dict)
    """Path parameters filled in by the router."""

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` (never raises)."""
        return parse_json_object(self.body)

    @property
    def bearer(self) -> str | None:
        """The bearer token of the ``Authorization`` header, if any."""
        value = self.headers.get("authorization")
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` (or ``X-Idempotency-Key``) header, if any."""
        return self.headers.get("idempotency-key") or self.headers.get("x-idempotency-key")


@attrs.define(kw_only=True)
class SimResponse:
    """A response a simulator sends."""

    status: int
    """The HTTP status."""
    body: bytes = b""
    """The raw body."""
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    """Headers (``content-length`` is added when sent)."""
    code: str | None = None
    """The vendor code this answer carries (kept in the record), if any."""

    @classmethod
    def json(
        cls,
        status: int,
        data: Any,
        *,
        headers: Iterable[tuple[str, str]] = (),
        code: str | None = None,
        content_type: str = "application/json",
    ) -> SimResponse:
        """A JSON answer."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(
            status=status,
            body=body,
            headers=[("content-type", content_type), *headers],
            code=code,
        )

    @classmethod
    def html(cls, status: int, title: str | None = None) -> SimResponse:
        """An HTML error page, as a proxy or load balancer in front of a vendor sends."""
        phrase = title or _reason(status)
        page = (
            f"<html><head><title>{status} {phrase}</title></head>"
            f"<body><center><h1>{status} {phrase}</h1></center><hr>"
            f"<center>nginx</center></body></html>\n"
        )
        return cls(
            status=status,
            body=page.encode(),
            headers=[("content-type", "text/html")],
            code=f"http:{status}",
        )

    def header(self, name: str) -> str | None:
        """The first value of a header, if set."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def to_httpx(self, request: httpx.Request | None = None) -> httpx.Response:
        """The same answer as an ``httpx.Response`` (for scripted transports)."""
        headers = [*self.headers, ("content-length", str(len(self.body)))]
        return httpx.Response(self.status, headers=headers, content=self.body, request=request)


def _reason(status: int) -> str:
    try:
        return httpx.codes.get_reason_phrase(status) or "Error"
    except Exception:  # pragma: no cover - unknown status
        return "Error"


@attrs.frozen(kw_only=True)
class Received:
    """One request a simulator received, and what it answered."""

    method: str
    """The method."""
    path: str
    """The path."""
    query: str
    """The raw query string."""
    idempotency_key: str | None
    """The idempotency key header, if the request carried one."""
    body: bytes = attrs.field(repr=False)
    """The request body (token requests: hidden from repr)."""
    status: int
    """The status answered."""
    code: str | None
    """The vendor code answered, when it was one."""
    at: float
    """Seconds since the simulator started."""
    fault: str | None = None
    """What the plan injected (``"outage"``, ``"fault"``, ``"rate_limit"``), if anything."""
    token_request: bool = False
    """Whether it went to a token endpoint (a route declared with ``auth=False``)."""


@attrs.frozen
class TokenCheck:
    """What :meth:`Simulator.check_token` found about a bearer token."""

    state: str
    """``"ok"``, ``"missing"``, ``"invalid"`` (malformed, unknown, forged) or ``"expired"``."""
    subject: str | None = None
    """The client id the token was issued to, when it is one of ours."""


# --------------------------------------------------------------------------------------
# The simulator base


Handler = Callable[..., Awaitable[SimResponse]]


@attrs.frozen
class _Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    auth: bool


def route(method: str, path: str, *, auth: bool = True) -> Callable[[Handler], Handler]:
    """Declare a simulator method as the handler of ``method path``.

    ``path`` may hold ``{name}`` segments, passed to the handler as keyword
    arguments. ``auth=False`` marks a token endpoint: no bearer is checked, and
    faults and limits with no ``path`` skip it. The handler is
    ``async def handler(self, request: SimRequest, **params) -> SimResponse``.
    """
    regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$"
    pattern = re.compile(regex)

    def mark(func: Handler) -> Handler:
        spec = _Route(method.upper(), pattern, func.__name__, auth)
        func.__sim_route__ = spec  # type: ignore[attr-defined]
        return func

    return mark


class Simulator:
    """Base of vendor simulators: a plain ASGI app with faults, tokens and a record.

    A subclass sets :attr:`vendor`, :attr:`default_token_ttl`,
    :attr:`default_rate_limits`, :attr:`outage_code`, :attr:`not_found_code`,
    declares its endpoints with :func:`route`, and implements the dialect:
    :meth:`render_error`, :meth:`render_rate_limited` and :meth:`reject_token`
    (optionally :meth:`finish`, to add headers to every answer).

    A request goes through, in order: slowness, outage, routing, the bearer check
    (routes with ``auth=True``), rate limits, injected faults, then the handler.

    Args:
        plan: what goes wrong (default: nothing but the vendor's rate limits).
        clock: the clock (default: the real one); pass the pipeline's
            ``VirtualClock`` so backoff waits and rate-limit windows agree.
        client_id: the only client the token endpoint accepts.
        client_secret: its secret.
        epoch: the Unix time at the simulator's start (default: now, in whole seconds).
    """

    vendor: ClassVar[str] = "vendor"
    """The vendor name."""
    default_token_ttl: ClassVar[float] = 3600.0
    """Life of a token, in seconds, unless the plan says otherwise."""
    default_rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    """The vendor's documented limits."""
    outage_code: ClassVar[str] = "http:503"
    """What an outage answers, unless it says otherwise."""
    not_found_code: ClassVar[str] = "http:404"
    """What an unknown path answers."""
    max_windows: ClassVar[int] = 10_000
    """Rate-limit counters kept before past windows are dropped (bounded memory)."""

    _routes: ClassVar[tuple[_Route, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, _Route] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                spec = getattr(value, "__sim_route__", None)
                if isinstance(spec, _Route):
                    found[name] = spec
        cls._routes = tuple(found.values())

    def __init__(
        self,
        *,
        plan: FaultPlan | None = None,
        clock: Clock | None = None,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        epoch: float | None = None,
    ) -> None:
        self.plan = plan if plan is not None else FaultPlan()
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.client_id = client_id
        self._client_secret = client_secret
        self._start = self.clock.now()
        # A whole second, so Date headers and Unix-time resets line up exactly.
        self._epoch = float(math.floor(time.time())) if epoch is None else float(epoch)
        self._random = random.Random(self.plan.seed)
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, str, int], int] = {}
        self._expired_before = -math.inf
        self.tokens_issued = 0
        """How many tokens the token endpoint issued."""
        self.received: list[Received] = []
        """Every request received, in order, with what was answered."""
        limits = self.plan.rate_limits
        self.rate_limits: tuple[RateLimit, ...] = (
            self.default_rate_limits if limits is None else limits
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} client_id={self.client_id!r}>"

    # ---- time -------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the simulator started, on its clock."""
        return self.clock.now() - self._start

    def wall(self) -> float:
        """The Unix time now, as the simulated vendor sees it."""
        return self._epoch + self.elapsed()

    def http_date(self) -> str:
        """The ``Date`` header value for now."""
        return email.utils.formatdate(self.wall(), usegmt=True)

    # ---- secrets ----------------------------------------------------------------

    def credentials_match(self, client_id: Any, client_secret: Any) -> bool:
        """Whether the given credentials are the simulator's (constant-time)."""
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return False
        same_id = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        same_secret = hmac.compare_digest(client_secret.encode(), self._client_secret.encode())
        return same_id and same_secret

    @property
    def token_ttl(self) -> float:
        """Life of the tokens issued now."""
        ttl = self.plan.token_ttl
        return self.default_token_ttl if ttl is None else ttl

    def issue_token(self, subject: str, *, ttl: float | None = None) -> tuple[str, float]:
        """A signed JWT-like token for ``subject``; returns it and its life in seconds."""
        life = self.token_ttl if ttl is None else ttl
        now = self.wall()
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {
            "sub": subject,
            "iat": int(now),
            "exp": int(now + life),
            "jti": secrets.token_hex(8),
            "iss": f"{self.vendor}-simulator",
        }
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        with self._lock:
            self.tokens_issued += 1
        return signing_input + "." + _b64(signature), life

    def check_token(self, token: str | None) -> TokenCheck:
        """Whether ``token`` is one of ours and still valid."""
        if token is None:
            return TokenCheck("missing")
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 4096:
            return TokenCheck("invalid")
        signing_input = parts[0] + "." + parts[1]
        expected = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), parts[2]):
            return TokenCheck("invalid")
        claims = parse_json_object(_unb64(parts[1]))
        if claims is None:
            return TokenCheck("invalid")
        subject = claims.get("sub")
        exp = claims.get("exp")
        iat = claims.get("iat")
        if not isinstance(subject, str) or not isinstance(exp, int) or not isinstance(iat, int):
            return TokenCheck("invalid")
        if self.wall() >= exp or iat < self._expired_before:
            return TokenCheck("expired", subject)
        return TokenCheck("ok", subject)

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the next request gets the vendor's
        expired-token error)."""
        # Tokens carry whole-second iat: one second later, every token issued
        # before now is older than the cut-off.
        self._expired_before = math.floor(self.wall()) + 1

    # ---- the dialect (subclasses) -------------------------------------------------

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        """The vendor's error answer for ``code`` (status: its documented one)."""
        return SimResponse.html(status or 500)

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        """The vendor's answer to a request over a rate limit."""
        return SimResponse.html(429)

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        """The vendor's answer to a missing, invalid or expired bearer token."""
        return SimResponse.html(401)

    def client_key(self, request: SimRequest, check: TokenCheck | None) -> str:
        """Whose quota a request counts against (default: the token's subject)."""
        if check is not None and check.subject is not None:
            return check.subject
        return "anonymous"

    def finish(
        self, request: SimRequest, response: SimResponse, limits: Sequence[LimitState]
    ) -> SimResponse:
        """Last touch on every answer (vendor headers); the default adds nothing."""
        return response

    # ---- the pipeline of a request ---------------------------------------------------

    def _render(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        if code.startswith("http:"):
            try:
                proxy_status = int(code[5:])
            except ValueError:
                proxy_status = 502
            return SimResponse.html(status or proxy_status)
        return self.render_error(code, status, request)

    def _draw(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        with self._lock:
            return self._random.random() < rate

    def _match(self, request: SimRequest) -> tuple[_Route | None, dict[str, str], bool]:
        """The route, its parameters, and whether the path exists for another method."""
        path_known = False
        for spec in self._routes:
            m = spec.pattern.match(request.path)
            if m is None:
                continue
            if spec.method == request.method:
                return spec, m.groupdict(), True
            path_known = True
        return None, {}, path_known

    def _count(
        self, request: SimRequest, key: str, *, is_auth: bool
    ) -> tuple[list[LimitState], LimitState | None]:
        states: list[LimitState] = []
        exceeded: LimitState | None = None
        elapsed = self.elapsed()
        with self._lock:
            for index, rule in enumerate(self.rate_limits):
                if not rule.matches(request, is_auth=is_auth):
                    continue
                window = rule.window
                slot = int(elapsed // window)
                used = self._windows.get((index, key, slot), 0)
                ends = (slot + 1) * window
                over = used >= rule.limit
                if not over:
                    used += 1
                    self._windows[(index, key, slot)] = used
                state = LimitState(
                    rule=rule,
                    remaining=max(rule.limit - used, 0),
                    reset_at=self._epoch + ends,
                    retry_after=max(ends - elapsed, 0.0),
                    exceeded=over,
                )
                states.append(state)
                if over and exceeded is None:
                    exceeded = state
            if len(self._windows) > self.max_windows:
                # Past windows are never read again: keep memory bounded in long runs.
                self._windows = {
                    key: used
                    for key, used in self._windows.items()
                    if key[2] >= int(elapsed // self.rate_limits[key[0]].window)
                }
        return states, exceeded

    async def handle(self, request: SimRequest) -> SimResponse:
        """Answer one request: the plan first, then the route's handler."""
        elapsed = self.elapsed()
        spec, params, path_known = self._match(request)
        is_auth = spec is not None and not spec.auth
        injected: str | None = None

        delay = 0.0
        for slow in self.plan.slow:
            active = slow.active(elapsed) and slow.matches(request, is_auth=is_auth)
            if active and self._draw(slow.rate):
                delay += slow.delay
        if delay > 0:
            await self.clock.sleep(delay)
            elapsed = self.elapsed()

        limits: list[LimitState] = []
        response: SimResponse | None = None
        for outage in self.plan.outages:
            if outage.active(elapsed) and outage.matches(request, is_auth=is_auth):
                response = self._render(outage.code or self.outage_code, outage.status, request)
                injected = "outage"
                break
        if response is None and spec is None:
            if path_known:
                response = SimResponse.json(405, {"error": "method not allowed"})
            else:
                response = self._render(self.not_found_code, None, request)
        check: TokenCheck | None = None
        if response is None and spec is not None and spec.auth:
            check = self.check_token(request.bearer)
            if check.state != "ok":
                response = self.reject_token(request, check)
        if response is None:
            limits, exceeded = self._count(
                request, self.client_key(request, check), is_auth=is_auth
            )
            if exceeded is not None:
                response = self.render_rate_limited(request, exceeded)
                injected = "rate_limit"
        if response is None:
            for fault in self.plan.errors:
                active = fault.active(elapsed) and fault.matches(request, is_auth=is_auth)
                if active and self._draw(fault.rate):
                    response = self._render(fault.code, fault.status, request)
                    injected = "fault"
                    break
        if response is None:
            assert spec is not None
            handler = getattr(self, spec.name)
            response = await handler(attrs.evolve(request, params=params), **params)
        response = self.finish(request, response, limits)
        self._record(request, response, injected, is_auth)
        return response

    def _record(
        self, request: SimRequest, response: SimResponse, injected: str | None, is_auth: bool
    ) -> None:
        query = urllib.parse.urlencode(dict(request.query))
        entry = Received(
            method=request.method,
            path=request.path,
            query=query,
            idempotency_key=request.idempotency_key,
            body=request.body,
            status=response.status,
            code=response.code,
            at=self.elapsed(),
            fault=injected,
            token_request=is_auth,
        )
        with self._lock:
            self.received.append(entry)

    # ---- what tests ask ------------------------------------------------------------

    def requests_to(self, method: str | None = None, path: str | None = None) -> list[Received]:
        """The requests received for ``method`` and ``path`` (a shell-style pattern)."""
        return [
            r
            for r in list(self.received)
            if (method is None or r.method == method.upper())
            and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]

    def replayed(self, methods: Iterable[str] = ("POST", "PATCH")) -> list[Received]:
        """Requests of ``methods`` without an idempotency key received more than once.

        Two requests count as the same when method, path, query and body are equal,
        so a test that gives each call a distinct body sees exactly the replays a
        client made. Token requests are left out (asking again is their point). The
        list holds the second and later copies.
        """
        wanted = {m.upper() for m in methods}
        seen: set[tuple[str, str, str, bytes]] = set()
        repeats: list[Received] = []
        for r in list(self.received):
            if r.method not in wanted or r.idempotency_key or r.token_request:
                continue
            key = (r.method, r.path, r.query, r.body)
            if key in seen:
                repeats.append(r)
            seen.add(key)
        return repeats

    # ---- ASGI -------------------------------------------------------------------------

    async def __call__(
        self, scope: Mapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        chunks: list[bytes] = []
        size = 0
        too_big = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                too_big = True
            elif chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        request = SimRequest(
            method=str(scope.get("method", "GET")).upper(),
            path=str(scope.get("path", "/")),
            query={k: query[k] for k in query},
            headers=_Headers(scope.get("headers", [])),
            body=b"".join(chunks),
        )
        if too_big:
            response = SimResponse.json(413, {"error": "request body too large"})
        else:
            response = await self.handle(request)
        headers = [(k.lower(), v) for k, v in response.headers if k.lower() != "content-length"]
        if not any(k == "date" for k, _ in headers):
            headers.append(("date", self.http_date()))
        headers.append(("content-length", str(len(response.body))))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return b""


# --------------------------------------------------------------------------------------
# Loopback server


@contextlib.asynccontextmanager
async def serve(
    app: Callable[..., Awaitable[None]], *, host: str = "127.0.0.1", startup_timeout: float = 10.0
) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yield its base URL.

    The server runs in a thread with its own asyncio event loop, so the test may
    run under asyncio or trio. Leaving the context stops the server and joins the
    thread. Needs ``uvicorn`` (the ``dev`` and ``demo`` extras)::

        async with serve(resilience_tellus.simulator()) as base_url:
            async with httpx.AsyncClient(base_url=base_url) as client:
                ...
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, headers and body go out as
        # two small writes and Nagle plus delayed ACKs add ~40 ms to every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        date_header=False,
        server_header=False,
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"resilience-serve-{port}", daemon=True)
    thread.start()
    try:
        with anyio.fail_after(startup_timeout):
            # Polling is the portable way to wait on another thread's loop from
            # either backend; it only runs while the server starts.
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError(f"uvicorn failed to start: {failure!r}")
                await SYSTEM_CLOCK.sleep(0.005)  # real time: another thread is starting
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, startup_timeout)
            if thread.is_alive():  # pragma: no cover - a wedged connection
                server.force_exit = True
                await anyio.to_thread.run_sync(thread.join, startup_timeout)
        sock.close()
