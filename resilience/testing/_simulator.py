"""The simulator base: a plain ASGI app with a router, tokens, a fault plan and a record.

Each plugin's ``resilience_<vendor>.testing`` subclasses :class:`Simulator` and only
renders its vendor's dialect. A request goes through, in order: slowness, outage,
routing, the bearer check, rate limits, injected faults (all from the
:class:`~resilience.testing.FaultPlan`), then the route's handler.

Time goes through the injected :class:`~resilience.Clock`: a slow response under a
``VirtualClock`` moves virtual time on and returns at once, so tests never sleep.
Wall-clock values a vendor sends (token ``exp``, ``Date``, ``X-RateLimit-Reset``)
are the simulator's epoch plus the clock's elapsed time, so they stay consistent
with virtual time too.
"""

from __future__ import annotations

import base64
import email.utils
import fnmatch
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

import attrs

from .._clock import Clock, default_clock
from .._plugin import parse_json_object
from ._faults import FaultPlan, LimitState, RateLimit
from ._messages import Received, SimRequest, SimResponse, TokenCheck, _Headers

__all__ = ["MAX_REQUEST_BYTES", "Simulator", "route"]

#: Request bodies larger than this are refused (413) before a handler sees them.
MAX_REQUEST_BYTES = 10 << 20

ASGIReceive = Callable[[], Awaitable[Mapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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
        self.clock: Clock = clock if clock is not None else default_clock()
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
            # Rounded up: a token lives at least the whole seconds it announces.
            "exp": math.ceil(now + life),
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
