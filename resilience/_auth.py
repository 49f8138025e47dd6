"""AuthRefresh: attach a token, keep it fresh, fetch it once.

Where it sits: usually below Retry and the circuit breaker, just above the
innermost ``Timeout(attempt=...)``. For every request it attaches the cached token
to a copy of the request (the caller's request is never changed), fetching a new
token first when there is none or the cached one is close to expiry. When an
attempt comes back ``REFRESH_AUTH`` it refreshes once and replays once; the replay
is not a retry (no Retry attempt, no retry budget), though ``report.attempts``
counts it. A second ``REFRESH_AUTH`` travels up unchanged and surfaces as
:class:`~resilience.errors.AuthenticationError`.

Tokens and the providers that fetch them live in ``_tokens.py``; this module only
asks a provider (``async fetch(http) -> Token``) and owns the cache, proactive
refresh and single-flight: concurrent callers share one fetch. The ``http``
client handed to ``fetch`` sends through the pipeline's inner transport and
through none of the layers (token endpoints are rate-limited); its ``base_url``
is fixed when the layer is bound, never the request's origin.

Credentials stay with their origin: a token is attached only to requests for the
origins it was issued for (named in ``origins=``, else the provider's token
endpoint's, else the first request's); any other request passes untouched, causes
no fetch, and its rejection is final.

Secrets (client secrets, tokens) never appear in a repr, a str, an error message,
a log record or an event: a failed fetch is described by the type of what went
wrong, and whatever quotes a credential is withheld.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import time
import weakref
from typing import Any
from urllib.parse import quote_plus

import anyio
import attrs
import httpx
import sniffio

from . import _validate as v
from ._classifier import (
    NEVER_RETRY_ERRORS,
    RETRY_ERRORS,
    classify_error,
    local_protocol_error,
    retry_after_of,
)
from ._events import TokenRefreshed
from ._http import DEFAULT_PORTS, HEADERS_AS_TRIPLES, body_replayable
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._report import GaveUp
from ._secret import Secret, mentions, needles_of, scrub_problem, scrub_with
from ._shared_token import DEFAULT_FETCH_TIME, SharedToken
from ._store import StateStore
from ._tokens import (
    Token,
    TokenProvider,
    _transient_status,
    absolute_url,
    check_header_name,
    check_scheme,
    header_safe,
)
from ._verdict import Action, Problem, Verdict
from .errors import AuthenticationError, ConfigurationError, TokenFetchError

__all__ = ["AuthRefresh"]

logger = logging.getLogger("resilience")

#: After a failed proactive refresh, the still-valid token is used and the fetch is
#: tried again no sooner than this many seconds later (token endpoints allow about
#: ten requests a minute; asking on every call would burn that at once).
PROACTIVE_RETRY_INTERVAL = 5.0

#: httpx's own default: 5 s for each of connect, read, write and pool.
_HTTPX_DEFAULT_TIMEOUT = httpx.Timeout(5.0)


# --- origins ------------------------------------------------------------------------

Origin = tuple[str, str, int]
#: Origins whose answer ``_for_us`` remembers; the memory is emptied beyond this.
_ORIGINS_KEPT = 256
"""(scheme, host, port) with the default port filled in: what a token is issued for."""


def origin_of(url: httpx.URL) -> Origin:
    """The origin of ``url`` (RFC 6454): scheme, host and port, ports normalised."""
    scheme = url.scheme
    return scheme, url.host, url.port or DEFAULT_PORTS.get(scheme, 0)


def _with_header(
    headers: httpx.Headers, name: str, value: str, item: tuple[bytes, bytes, bytes]
) -> httpx.Headers:
    """A copy of ``headers`` with ``name`` set to ``value`` (any earlier one gone);
    ``item`` is that header as httpx keeps it: (raw name, lower-cased name, value).

    httpx keeps headers as such byte triples; the copy takes them as they are
    instead of decoding and re-encoding each one (``Headers.copy()`` plus
    ``__setitem__`` cost three times as much), and falls back to those when the
    layout is not the one expected.
    """
    items = getattr(headers, "_list", None)
    encoding: Any = getattr(headers, "_encoding", _UNSET)
    if not HEADERS_AS_TRIPLES or type(items) is not list:  # pragma: no cover - another httpx
        copy = headers.copy()
        copy[name] = value
        return copy
    lower = item[1]
    copy = object.__new__(httpx.Headers)  # its two fields are set just below
    kept = [each for each in items if each[1] != lower]
    kept.append(item)
    copy._list = kept
    copy._encoding = encoding
    return copy


_UNSET = object()
_ACCEPT = Action.ACCEPT


def _origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return (
        f"{scheme}://{shown}"
        if DEFAULT_PORTS.get(scheme) == port
        else (f"{scheme}://{shown}:{port}")
    )


def _absolute_origin(value: object, what: str) -> Origin:
    """The origin of an absolute http(s) URL, else a ConfigurationError naming ``what``."""
    url = absolute_url(value)
    if url is None:
        # Never quote the value: a URL may carry user:password.
        got = "" if isinstance(value, (str, httpx.URL)) else f", got {type(value).__name__}"
        raise ConfigurationError(f"{what} must be an absolute http(s) URL{got}")
    return origin_of(url)


def _to_origins(value: Any) -> tuple[str, ...] | None:
    """``origins=``: URLs (only their origins count) as normalised ``scheme://host[:port]``."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, httpx.URL)) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ConfigurationError(
            f"AuthRefresh: origins must be a list of URLs or None, got {type(value).__name__}"
        )
    origins: list[str] = []
    for index, item in enumerate(items):
        text = _origin_text(_absolute_origin(item, f"AuthRefresh: origins[{index}]"))
        if text not in origins:
            origins.append(text)
    if not origins:
        raise ConfigurationError(
            "AuthRefresh: origins is empty; name at least one (or leave it out for the "
            "token endpoint's origin)"
        )
    return tuple(origins)


def token_endpoint_of(provider: object) -> httpx.URL | None:
    """A provider's ``token_endpoint`` (absolute), ``None`` when it declares none.

    Raises ConfigurationError when it declares one that is not an absolute
    http(s) URL: such an endpoint would be resolved against some other base.
    """
    endpoint = getattr(provider, "token_endpoint", None)
    if endpoint is None:
        return None
    name = type(provider).__name__
    _absolute_origin(endpoint, f"{name}.token_endpoint")
    return httpx.URL(endpoint)


def _check_endpoint(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    token_endpoint_of(value)


def _check_store(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, StateStore):
        raise ConfigurationError(
            f"AuthRefresh: store must be a StateStore (MemoryStore, RedisStore), "
            f"got {type(value).__name__}"
        )


# --- the layer ----------------------------------------------------------------------


@attrs.frozen
class AuthRefresh:
    """Attaches a token to each request; refreshes it before expiry and on rejection.

    * Origins: a token goes only to requests whose origin (scheme, host, port,
      default ports normalised) is one it was issued for: the ones named in
      ``origins``, else the origin of the provider's ``token_endpoint``
      (``OAuth2ClientCredentials``' ``token_url``, a plugin's token URL), else, for
      a provider with no endpoint (:class:`~resilience.StaticToken`, a provider
      that declares none), the origin of the first request this pipeline sends.
      A request for any other origin (a redirect to another host, another API on
      the same client) is sent without a token, causes no fetch, and its 401 is a FAIL
      (a :class:`~resilience.errors.PermanentError`), never a token request.
    * Proactive: a token of life ``L`` fetched at time ``t`` (the pipeline's clock,
      read when the fetch starts) is refreshed, before sending, from
      ``t + max(L / 2, L - skew)``: ``skew`` seconds before expiry, or at half its
      life for a token that lives less than twice the skew (so a short-lived token
      does not cause a fetch on every call). While one caller refreshes a token that
      is still valid, the others keep using it instead of waiting. If a proactive
      refresh fails while the token is still valid, the token is used and the
      fetch is tried again no sooner than ``PROACTIVE_RETRY_INTERVAL`` seconds later.
    * Reactive: on a ``REFRESH_AUTH`` verdict the response is closed, the token is
      refreshed once (unless another caller already replaced the token this
      request used: then it just replays with the new one) and the request is
      replayed once. A second ``REFRESH_AUTH`` goes up unchanged and becomes an
      :class:`~resilience.errors.AuthenticationError` (or, with
      ``raise_on_failure=False``, the final response). A request whose body
      cannot be re-read is not replayed; the token is still refreshed.
    * Single-flight: one fetch at a time per pipeline; whoever waited for it uses
      its token, or shares its failure, instead of fetching again.
    * A failed fetch becomes a :class:`~resilience.TokenFetchError` (an
      ``AuthenticationError``; a RETRY outcome when transient, so a Retry layer
      above may try again, otherwise a FAIL); the cache is left as it was and
      the next call asks again. A cancelled fetch changes nothing.

    Each new token emits :class:`~resilience.TokenRefreshed` with its trigger:
    ``"initial"``, ``"proactive"`` or ``"rejected"``.

    Args:
        provider: fetches tokens (:class:`~resilience.OAuth2ClientCredentials`, a
            plugin's flow, :class:`~resilience.StaticToken`, ...).
        origins: the origins the token is for, as URLs (``"https://api.example"``;
            only scheme, host and port count; one str is taken as one origin);
            default: the provider's token endpoint's origin, or the first
            request's for a provider with none. Name them when the API is not on
            the token endpoint's host. A provider that names its endpoint by path
            resolves it against the first of them.
        skew: seconds before expiry to refresh proactively.
        fetch_timeout: seconds one token fetch may take (default 30).
        header: the header the token goes in.
        scheme: put before the token (``"Bearer"``); ``None`` or ``""`` sends the
            bare token (for an API-key header).
        store: a :class:`~resilience.RedisStore` (or any state store) to share the
            token through: a fleet of processes then makes one token request per
            expiry (see docs/shared-state.md). Default: each pipeline fetches its own.
    """

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    provider: TokenProvider = attrs.field(validator=[v.has_method("fetch"), _check_endpoint])
    """Where tokens come from."""
    origins: tuple[str, ...] | None = attrs.field(default=None, kw_only=True, converter=_to_origins)
    """The origins (``scheme://host[:port]``) the token is sent to, or ``None`` for
    the default (the token endpoint's origin; the first request's for a provider
    with no endpoint)."""
    skew: float = attrs.field(default=60.0, kw_only=True, validator=v.number(minimum=0))
    """Seconds before expiry at which a token is refreshed before sending."""
    header: str = attrs.field(default="Authorization", kw_only=True, validator=check_header_name)
    """The request header that carries the token."""
    scheme: str | None = attrs.field(default="Bearer", kw_only=True, validator=check_scheme)
    """The auth scheme before the token, or ``None`` / ``""`` for the bare token."""
    fetch_timeout: float | None = attrs.field(
        default=30.0,
        kw_only=True,
        validator=v.number(minimum=0, exclusive_minimum=True, optional=True),
    )
    """Seconds one token fetch may take (``Timeout(attempt=...)`` does not cover it);
    a fetch that runs out is a transient failure. ``None``: no limit of its own,
    only httpx's default of 5 s for each connect, read, write and pool wait."""
    store: StateStore | None = attrs.field(
        default=None, kw_only=True, validator=_check_store, repr=False
    )
    """Shares the access token between pipelines and processes (a
    :class:`~resilience.RedisStore`: one token request per expiry for a fleet);
    ``None``: each pipeline fetches its own. Only the access token is stored."""

    def refresh_after(self, expires_in: float | None) -> float:
        """Seconds after a fetch starts at which its token is refreshed proactively.

        ``max(expires_in / 2, expires_in - skew)``; infinite for a token that does
        not expire.
        """
        if expires_in is None:
            return math.inf
        return max(expires_in / 2, expires_in - self.skew)

    def bind(self, env: PipelineEnv) -> _AuthHandler:
        """The runtime token cache of one pipeline."""
        prefix = f"{self.scheme} " if self.scheme else ""
        endpoint = token_endpoint_of(self.provider)
        allowed: frozenset[Origin] | None = None
        if self.origins is not None:
            allowed = frozenset(origin_of(httpx.URL(text)) for text in self.origins)
        elif endpoint is not None:
            allowed = frozenset({origin_of(endpoint)})
        # Fixed here, never from the request being sent: a path-only endpoint must
        # not follow the caller to another host.
        if endpoint is not None:
            base: httpx.URL | None = httpx.URL(_origin_text(origin_of(endpoint)))
        elif self.origins is not None:
            base = httpx.URL(self.origins[0])
        else:
            base = None
        handler = _AuthHandler(self, env, prefix, allowed, base)
        if self.store is not None:
            handler.shared = SharedToken(
                # A RedisStore as this pipeline's layer: its fallbacks in its telemetry.
                self.store.bound(env, "auth") if hasattr(self.store, "bound") else self.store,
                "",  # keyed at the first fetch: the origin may not be known before
                DEFAULT_FETCH_TIME if self.fetch_timeout is None else self.fetch_timeout,
            )
        return handler


@attrs.define(eq=False, slots=True, repr=False)
class _Failure:
    """What a failed fetch said, shared with every caller that waited for it."""

    message: str
    problem: Problem | None
    transient: bool
    retry_after: float | None


class _BorrowedTransport(httpx.AsyncBaseTransport):
    """The inner transport, lent to the token fetch client: closing it does nothing."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.is_absolute_url:
            # A path with no base to resolve it against: never guess a host.
            raise httpx.UnsupportedProtocol(
                "the token request's URL has no host: give the provider an absolute "
                "token URL, or AuthRefresh(origins=[...]) to resolve a path against",
                request=request,
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        # The pipeline's transport outlives the temporary client that borrows it.
        pass


@attrs.define(eq=False, slots=True, repr=False)
class _AuthHandler:
    """The token cache of one pipeline, and the middleware that uses it."""

    config: AuthRefresh
    env: PipelineEnv
    prefix: str
    allowed: frozenset[Origin] | None
    """The origins the token goes to; ``None`` until the first request pins one."""
    base: httpx.URL | None
    """The token fetch client's ``base_url`` (fixed: never the request's origin)."""
    warned: bool = attrs.field(default=False, init=False)
    """Whether a request for another origin was logged already (once is enough)."""
    token: Token | None = attrs.field(default=None, init=False)
    generation: int = attrs.field(default=0, init=False)
    """Bumped by every successful fetch: tells which token a request carried."""
    completed: int = attrs.field(default=0, init=False)
    """Bumped by every fetch that finished (not a cancelled one)."""
    failure: _Failure | None = attrs.field(default=None, init=False)
    """The last finished fetch's failure, or ``None`` when it succeeded."""
    expires_at: float = attrs.field(default=math.inf, init=False)
    refresh_at: float = attrs.field(default=math.inf, init=False)
    pause_until: float = attrs.field(default=-math.inf, init=False)
    """No proactive fetch before this time (set after one failed)."""
    locks: dict[str, anyio.Lock] = attrs.field(factory=dict, init=False)
    replayed: weakref.WeakSet[Call] = attrs.field(factory=weakref.WeakSet, init=False)
    """Calls that already refreshed and replayed once (a call may pass here again:
    a Retry attempt, a splitter's re-request)."""
    header_item: tuple[Token, str, str, tuple[bytes, bytes, bytes]] | None = attrs.field(
        default=None, init=False
    )
    """The token last attached, with its header's name and value (``_attach``)."""
    origins_seen: dict[tuple[object, ...], bool] = attrs.field(factory=dict, init=False)
    """Whether the token goes to an origin, by the URL's raw parts (``_for_us``)."""
    shared: SharedToken | None = attrs.field(default=None, init=False)
    """The store that shares the token (``AuthRefresh(store=...)``), or ``None``."""
    token_forms: tuple[Token, tuple[str, ...], Problem | None] | None = attrs.field(
        default=None, init=False
    )
    """The token last scrubbed for, the forms it may be quoted in, and the last
    problem found not to quote it (``_withhold``)."""

    def __repr__(self) -> str:
        state = "no token" if self.token is None else f"token #{self.generation}"
        return f"<AuthRefresh handler ({state})>"

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        if not self._for_us(request.url):
            return await self._foreign(request, call, call_next, origin_of(request.url))
        token = self.token
        if token is not None and self.env.clock.now() < self.refresh_at:
            generation = self.generation  # the common case: a fresh cached token
        else:
            got = self._usable(self.env.clock.now(), None, fast=True)
            if got is None:
                obtained = await self._obtain(request, call, None)
                if isinstance(obtained, Outcome):
                    return obtained
                got = obtained
            token, generation = got
        outcome = await call_next(self._attach(request, token, call), call)
        action = outcome.verdict.action
        if action is _ACCEPT:
            return outcome
        self._withhold(outcome, call, token)
        if outcome.verdict.action is not Action.REFRESH_AUTH:
            return outcome
        if call in self.replayed:
            # Refreshed once already in this call (before a Retry of some other
            # failure): a second rejection is final, not another fetch.
            self._rejected_again(request, outcome)
            return outcome
        if not body_replayable(request):
            # This request cannot go again, but the next one should not fail too.
            await self._obtain(request, call, generation)
            return outcome
        await outcome.aclose()
        obtained = await self._obtain(request, call, generation)
        if isinstance(obtained, Outcome):
            return obtained
        self.replayed.add(call)
        outcome = await call_next(self._attach(request, obtained[0], call), call)
        if outcome.verdict.action is not Action.ACCEPT:
            self._withhold(outcome, call, obtained[0])
        if outcome.verdict.action is Action.REFRESH_AUTH:
            self._rejected_again(request, outcome)
        return outcome

    def _for_us(self, url: httpx.URL) -> bool:
        """Whether the token goes to ``url``'s origin (pinning the first one seen
        when the provider names none). Remembered by the URL's raw scheme, host
        and port, which httpx keeps parsed: most calls go to one origin."""
        try:
            ref = url._uri_reference
            parts: tuple[object, ...] = (ref.scheme, ref.host, ref.port)
        except AttributeError:  # pragma: no cover - another httpx layout
            parts = (url.scheme, url.host, url.port)
        known = self.origins_seen.get(parts)
        if known is not None:
            return known
        origin = origin_of(url)
        allowed = self.allowed
        if allowed is None:
            # A provider with no endpoint: the token is for the first origin sent to.
            self.allowed = allowed = frozenset({origin})
            logger.debug("resilience auth: the token is for %s only", _origin_text(origin))
        if len(self.origins_seen) >= _ORIGINS_KEPT:
            self.origins_seen.clear()
        known = self.origins_seen[parts] = origin in allowed
        return known

    async def _foreign(
        self, request: httpx.Request, call: Call, call_next: CallNext, origin: Origin
    ) -> Outcome:
        """A request for an origin the token is not for: sent as it is, no token,
        no fetch; a rejection there is final (our credentials do not belong there)."""
        if not self.warned:
            self.warned = True
            logger.warning(
                "resilience auth: no token sent to %s: the token is for %s "
                "(AuthRefresh(origins=[...]) names the origins it goes to)",
                _origin_text(origin),
                ", ".join(sorted(_origin_text(o) for o in self.allowed or ())),
            )
        outcome = await call_next(request, call)
        verdict = outcome.verdict
        if verdict.action is Action.REFRESH_AUTH:
            outcome.verdict = attrs.evolve(verdict, action=Action.FAIL, breaker_failure=False)
        return outcome

    def _withhold(self, outcome: Outcome, call: Call, token: Token) -> None:
        """Keep the token out of an unsuccessful attempt's error and problem.

        An HTTP library refusing a header quotes it whole (h11's
        ``LocalProtocolError``), and the pipeline chains that error to the one it
        raises; a server may echo the ``Authorization`` header in its error body,
        which a classifier reads into the problem. Accepted attempts never get
        here, so the hot path pays nothing.
        """
        error = outcome.error
        needles = (token.value,)
        if error is not None and (local_protocol_error(error) or _chain_mentions(error, needles)):
            outcome.error = _withheld_error(error)
        verdict = outcome.verdict
        problem = verdict.problem
        if problem is None:
            return
        forms = self.token_forms
        if forms is None or forms[0] is not token:
            # Once per token: every form the token may come back in.
            forms = self.token_forms = (token, needles_of(token.value), None)
        elif forms[2] is problem:
            return  # found clean for this token already (a shared, frozen problem)
        scrubbed = scrub_with(problem, forms[1])
        if scrubbed is problem:
            if not problem.details:
                # Frozen, with nothing nested: the next attempt that answers with the
                # same problem object (the generic classifier shares one per status)
                # needs no search.
                self.token_forms = (token, forms[1], problem)
            return
        outcome.verdict = attrs.evolve(verdict, problem=scrubbed)
        # The report keeps every attempt's verdict: the same object, so find it.
        verdicts = call.report.verdicts
        for index in range(len(verdicts) - 1, -1, -1):
            if verdicts[index] is verdict:
                verdicts[index] = outcome.verdict
                break

    def _rejected_again(self, request: httpx.Request, outcome: Outcome) -> None:
        problem = outcome.verdict.problem
        logger.warning(
            "resilience auth: %s %s rejected again after a token refresh (%s)%s",
            request.method,
            request.url.host,
            outcome.verdict.reason,
            # The vendor's request id (Turris's requestId), for support tickets.
            f" request_id={problem.request_id}" if problem and problem.request_id else "",
        )

    def _attach(self, request: httpx.Request, token: Token, call: Call) -> httpx.Request:
        instrument = self.env.instrument
        if call.trace is not None and instrument is not None:
            # Telemetry writes the attempt's span before _withhold cleans the outcome.
            instrument.withhold(call, token.value)
        # A copy: the caller's request (which Retry may send again) never holds a token.
        item = self.header_item
        if item is None or item[0] is not token:
            # Once per token: the header as httpx keeps it (raw name, lower-cased
            # name, value), rather than built and encoded on every attempt.
            name = self.config.header
            value = self.prefix + token.value
            # A header name and a token value are printable ASCII (checked when made).
            raw = name.encode("ascii")
            item = self.header_item = (token, name, value, (raw, raw.lower(), value.encode()))
        headers = _with_header(request.headers, item[1], item[2], item[3])
        # Built field by field: httpx.Request() would copy the headers and the URL
        # again and re-check the method, on every attempt (half this step's cost).
        copy = object.__new__(httpx.Request)
        copy.method = request.method
        copy.url = request.url  # immutable: shared
        copy.headers = headers
        copy.extensions = dict(request.extensions)
        copy.stream = request.stream
        content = getattr(request, "_content", None)
        if content is not None:
            # Already read (httpx reads a bytes body when the request is built): the
            # copy has it too, rather than reading the stream again when it is sent.
            copy._content = content
        return copy

    def _usable(self, now: float, rejected: int | None, *, fast: bool) -> tuple[Token, int] | None:
        """The cached token if it serves this caller without a fetch, else ``None``.

        ``rejected`` is the generation of a token the server refused; ``fast`` is
        the check made before taking the lock, where a refresh in flight lets a
        still-valid token be used rather than waited on.
        """
        token = self.token
        if token is None:
            return None
        if rejected is not None:
            # A token already replaced since the rejected one was sent: replay with
            # the replacement, unless that has expired meanwhile too.
            if self.generation != rejected and now < self.expires_at:
                return token, self.generation
            return None
        if now < self.refresh_at:
            return token, self.generation
        if now < self.expires_at and (now < self.pause_until or (fast and self._lock().locked())):
            return token, self.generation
        return None

    def _lock(self) -> anyio.Lock:
        # One lock per async library, so a pipeline built once may serve asyncio and trio.
        library = sniffio.current_async_library()
        lock = self.locks.get(library)
        if lock is None:
            lock = self.locks[library] = anyio.Lock()
        return lock

    async def _obtain(
        self, request: httpx.Request, call: Call, rejected: int | None
    ) -> tuple[Token, int] | Outcome:
        """:meth:`_obtain_now`, ended by the call's deadline when it has one.

        A Timeout(total=...) above keeps no cancel scope of its own (see
        ``_timeout.py``): waiting for the lock or for a slow token endpoint must
        end by the deadline here. Only calls that need a token come this way.
        """
        cutoff = call.cutoff
        if cutoff is None:
            return await self._obtain_now(request, call, rejected)
        remaining = cutoff - time.monotonic()
        with anyio.move_on_after(remaining if remaining > 0.0 else 0.0) as scope:
            return await self._obtain_now(request, call, rejected)
        assert scope.cancelled_caught
        call.report.gave_up = GaveUp.DEADLINE
        total = call.total_timeout
        error = httpx.TimeoutException(
            "no token before the call's deadline"
            + ("" if total is None else f" (its total timeout of {total:g}s)"),
            request=request,
        )
        # The caller's time ran out: not the backend's failure.
        verdict = attrs.evolve(classify_error(self.env.vendor, error), breaker_failure=False)
        return Outcome(request, verdict, error=error)

    async def _obtain_now(
        self, request: httpx.Request, call: Call, rejected: int | None
    ) -> tuple[Token, int] | Outcome:
        """A token for this caller: the cached one, a shared fetch's, or a new fetch's."""
        seen = self.completed
        async with self._lock():
            now = self.env.clock.now()
            got = self._usable(now, rejected, fast=False)
            if got is not None:
                return got
            if self.completed != seen:
                # A fetch finished while this caller waited: share its result.
                if self.failure is not None:
                    return self._failed(request, call, self.failure)
                if self.token is not None:  # e.g. a token with no life at all
                    return self.token, self.generation
            if rejected is not None:
                trigger = "rejected"
            elif self.token is None:
                trigger = "initial"
            else:
                trigger = "proactive"
            return await self._fetch(request, call, trigger, now)

    async def _fetch(
        self, request: httpx.Request, call: Call, trigger: str, started: float
    ) -> tuple[Token, int] | Outcome:
        """Fetch under the lock; a cancellation leaves every field as it was."""
        env = self.env
        fetched = True
        refresh_in: float | None = None
        try:
            if self.shared is None:
                token = await self._call_provider(call, trigger)
            else:
                token, started, refresh_in, fetched = await self._shared(call, trigger)
        except Exception as exc:
            failure = self._failure_of(exc)
            self.completed += 1
            self.failure = failure
            now = env.clock.now()
            current = self.token
            if trigger == "proactive" and current is not None and now < self.expires_at:
                self.pause_until = min(now + PROACTIVE_RETRY_INTERVAL, self.expires_at)
                logger.warning(
                    "resilience auth: proactive token refresh failed (%s); "
                    "using the current token, which expires in %.0fs",
                    failure.message,
                    self.expires_at - now,
                )
                return current, self.generation
            logger.warning("resilience auth: %s token fetch failed: %s", trigger, failure.message)
            return self._failed(request, call, failure)
        if fetched or self.token is None or token.value != self.token.value:
            self.generation += 1
        self.token = token
        self.completed += 1
        self.failure = None
        self.pause_until = -math.inf
        life = token.expires_in
        self.expires_at = math.inf if life is None else started + life
        if refresh_in is None:
            refresh_in = self.config.refresh_after(life)
        self.refresh_at = started + refresh_in
        if not fetched:
            # Another process fetched it: this one emits nothing (one event per fetch).
            return token, self.generation
        env.emit(TokenRefreshed(trigger=trigger, expires_in=life), call)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resilience auth: new token (trigger=%s, expires_in=%s) from %s",
                trigger,
                life,
                type(self.config.provider).__name__,
            )
        return token, self.generation

    async def _shared(self, call: Call, trigger: str) -> tuple[Token, float, float, bool]:
        """The fleet's token from the store, or this process's fetch stored there."""
        shared = self.shared
        assert shared is not None
        if not shared.key:
            client_id = getattr(self.config.provider, "client_id", None)
            who = (
                client_id
                if isinstance(client_id, str) and client_id
                else ",".join(sorted(_origin_text(o) for o in self.allowed or ()))
            )
            shared.key = f"{self.env.vendor}:{who}"
        current = self.token
        return await shared.obtain(
            self.env.clock,
            lambda: self._call_provider(call, trigger),
            self.config.refresh_after,
            current.value if trigger == "rejected" and current is not None else None,
        )

    async def _call_provider(self, call: Call, trigger: str) -> Token:
        provider = self.config.provider
        instrument = self.env.instrument
        async with contextlib.AsyncExitStack() as stack:
            if instrument is not None:
                stack.enter_context(instrument.token_refresh(call, trigger))
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=_BorrowedTransport(call.inner),
                    # Fixed at bind time: a path-only endpoint never follows the
                    # request that needed the token to its host.
                    base_url="" if self.base is None else self.base,
                    # Proxy settings from the environment would route around the
                    # inner transport.
                    trust_env=False,
                    # fetch_timeout bounds the whole fetch; httpx's default 5 s per
                    # read would cut a slow endpoint short of it. Without one, that
                    # default stays.
                    timeout=_HTTPX_DEFAULT_TIMEOUT
                    if self.config.fetch_timeout is None
                    else self.config.fetch_timeout,
                )
            )
            limit = self.config.fetch_timeout
            with anyio.move_on_after(limit) as scope:
                token = await provider.fetch(http)
            if scope.cancelled_caught:
                raise httpx.TimeoutException(f"token request timed out after {limit:g}s")
            if not isinstance(token, Token):
                raise TypeError(
                    f"{type(provider).__name__}.fetch() returned "
                    f"{type(token).__name__}, not a Token"
                )
            value = token.value
            if not isinstance(value, str) or not value or not header_safe(value):
                # A Token whose checks were bypassed: h11 would quote it in an error.
                raise TokenFetchError(
                    f"{type(provider).__name__}.fetch() returned a token an HTTP header "
                    "cannot carry (empty, surrounding whitespace, control or non-ASCII "
                    "characters)",
                    problem=Problem(
                        vendor=self.env.vendor,
                        code="invalid_token",
                        title="the token cannot go in a header",
                    ),
                )
        return token

    def _failure_of(self, exc: Exception) -> _Failure:
        """Why a fetch failed, in words that hold no token, secret or body.

        A provider's own error is also searched for its credentials (a vendor may
        echo them, a provider may quote them): what quotes one is withheld.
        """
        failure = self._describe_failure(exc)
        needles = self._credentials()
        problem = failure.problem
        if problem is not None:
            failure.problem = scrub_problem(problem, needles)
        if mentions(failure.message, needles):
            failure.message = (
                f"{type(self.config.provider).__name__} raised {type(exc).__name__} "
                "(its text is withheld: it quoted a credential)"
            )
        return failure

    def _credentials(self) -> tuple[str, ...]:
        """What must never be shown: the provider's secrets (and the Basic credential
        made of them), the current token."""
        provider = self.config.provider
        found: list[str] = []
        kind: Any = type(provider)
        fields = attrs.fields(kind) if attrs.has(kind) else ()
        names = [f.name for f in fields] or list(getattr(provider, "__dict__", {}))
        client_id = getattr(provider, "client_id", None)
        for name in names:
            value = getattr(provider, name, None)
            if isinstance(value, Secret) and value:
                secret = value.reveal()
                found.append(secret)
                if isinstance(client_id, str):
                    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
                    found.append(base64.b64encode(pair.encode()).decode("ascii"))
        if self.token is not None:
            found.append(self.token.value)
        return tuple(found)

    def _describe_failure(self, exc: Exception) -> _Failure:
        name = type(exc).__name__
        vendor = self.env.vendor
        if isinstance(exc, TokenFetchError):
            hint = exc.retry_after
            if not isinstance(hint, (int, float)) or not 0 <= hint < math.inf:
                hint = None  # a plugin's odd value must not break the verdict
            return _Failure(str(exc), exc.problem, bool(exc.transient), hint)
        if isinstance(exc, AuthenticationError):
            # A plugin's own error: its problem's status tells whether to try again.
            problem = exc.problem
            transient = problem is not None and _transient_status(problem.status)
            return _Failure(str(exc), problem, transient, None)
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            transient = _transient_status(status)
            problem = Problem(
                vendor=vendor, status=status, code=str(status), title="token request refused"
            )
            return _Failure(
                f"token endpoint {_request_host(exc)} answered HTTP {status}",
                problem,
                transient,
                retry_after_of(exc.response) if transient else None,
            )
        if isinstance(exc, RETRY_ERRORS):
            host = _request_host(exc)
            problem = Problem(vendor=vendor, code=name, title="token request failed")
            # A request httpx will not send (a relative URL, an illegal header) fails
            # the same way every time.
            transient = not isinstance(exc, NEVER_RETRY_ERRORS)
            return _Failure(f"token request to {host} failed: {name}", problem, transient, None)
        problem = Problem(vendor=vendor, code=name, title="token provider failed")
        provider = type(self.config.provider).__name__
        return _Failure(f"{provider} raised {name}", problem, False, None)

    def _failed(self, request: httpx.Request, call: Call, failure: _Failure) -> Outcome:
        """An outcome carrying a fresh error (each caller gets its own instance)."""
        error = TokenFetchError(
            f"could not get an access token: {failure.message}",
            transient=failure.transient,
            retry_after=failure.retry_after,
            request=call.request,
            problem=failure.problem,
        )
        # Not chained: an exception's text may quote a header (h11 quotes an illegal
        # header value, token included); the message above names its type instead.
        error.__suppress_context__ = True
        verdict = Verdict(
            Action.RETRY if failure.transient else Action.FAIL,
            problem=failure.problem,
            retry_after=failure.retry_after,
            # A failing token endpoint says nothing about the API host's health.
            breaker_failure=False,
        )
        return Outcome(request, verdict, error=error)


def _chain_mentions(error: BaseException, needles: tuple[str, ...]) -> bool:
    """Whether ``error`` or an exception it chains quotes one of ``needles``."""
    seen: set[int] = set()
    node: BaseException | None = error
    while node is not None and id(node) not in seen and len(seen) < 16:
        seen.add(id(node))
        try:
            text = f"{node} {node.args!r}"
        except Exception:  # a broken __str__: nothing it could show
            text = ""
        if any(needle in text for needle in needles):
            return True
        node = node.__cause__ or node.__context__
    return False


def _withheld_error(error: BaseException) -> BaseException:
    """A stand-in for an attempt's error that quoted the token: same kind, no text,
    no chain (the pipeline chains it to the error it raises)."""
    message = (
        f"the request could not be sent: {type(error).__name__} (its text is withheld: "
        "it quoted a request header)"
    )
    replacement: BaseException
    if local_protocol_error(error):
        # h11's and httpcore's own classes are not httpx's: show httpx's.
        replacement = httpx.LocalProtocolError(message)
    else:
        try:
            replacement = type(error)(message)
        except Exception:
            replacement = RuntimeError(message)
    replacement.__suppress_context__ = True
    return replacement


def _request_host(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPError):
        try:
            return exc.request.url.host or "the token endpoint"
        except RuntimeError:  # raised without a request
            pass
    return "the token endpoint"
