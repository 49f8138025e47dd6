"""AuthRefresh and the token providers: attach a token, keep it fresh, fetch it once.

Where it sits: usually below Retry and the circuit breaker, just above the
innermost ``Timeout(attempt=...)``. For every request it attaches the cached token
to a copy of the request (the caller's request is never changed), fetching a new
token first when there is none or the cached one is close to expiry. When an
attempt comes back ``REFRESH_AUTH`` it refreshes once and replays once; the replay
is not a retry (no Retry attempt, no retry budget), though ``report.attempts``
counts it. A second ``REFRESH_AUTH`` travels up unchanged and surfaces as
:class:`~resilience.errors.AuthenticationError`.

Token providers only fetch (``async fetch(http) -> Token``). ``AuthRefresh`` owns
the cache, proactive refresh and single-flight: concurrent callers share one fetch.
The ``http`` client handed to ``fetch`` sends through the pipeline's inner
transport and through none of the layers (token endpoints are rate-limited); its
``base_url`` is fixed when the layer is bound, never the request's origin.

Credentials stay with their origin: a token is attached only to requests for the
origins it was issued for (named in ``origins=``, else the provider's token
endpoint's, else the first request's); any other request passes untouched, causes
no fetch, and its rejection is final.

Secrets (client secrets, tokens) never appear in a repr, a str, an error message,
a log record or an event: providers keep them in :class:`~resilience.Secret`, and
:class:`Token`'s repr hides its value.

Vendor plugins may reuse :func:`token_from_response` (a token endpoint's answer
into a :class:`Token` or a :class:`TokenFetchError`) besides the plugin kit's
``post_for_token`` and ``jwt_expires_in``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import weakref
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote_plus

import anyio
import attrs
import httpx
import sniffio

from . import _validate as v
from ._classifier import (
    NEVER_RETRY_ERRORS,
    RETRY_ERRORS,
    RETRY_STATUSES,
    local_protocol_error,
    retry_after_of,
)
from ._clock import SYSTEM_CLOCK, Clock
from ._events import TokenRefreshed
from ._pipeline import Call, CallNext, Outcome, PipelineEnv
from ._report import CallReport
from ._secret import Secret, mentions, scrub_problem
from ._verdict import Action, Problem, Verdict
from .errors import AuthenticationError, ConfigurationError

__all__ = [
    "AuthRefresh",
    "OAuth2ClientCredentials",
    "StaticToken",
    "Token",
    "TokenFetchError",
    "TokenProvider",
    "token_from_response",
]

logger = logging.getLogger("resilience")

#: After a failed proactive refresh, the still-valid token is used and the fetch is
#: tried again no sooner than this many seconds later (token endpoints allow about
#: ten requests a minute; asking on every call would burn that at once).
PROACTIVE_RETRY_INTERVAL = 5.0

# RFC 9110 token: what a header name (and an auth scheme) may be made of.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (CR and LF above all) would split a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What an error code or request id from a token endpoint may look like to be quoted.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


# --- validators and converters ------------------------------------------------------


def _check_token_value(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str, "
            f"got {type(value).__name__}{' (empty)' if value == '' else ''}"
        )
    if not _header_safe(value):
        # Never quote the value: it is a credential.
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} has surrounding whitespace, "
            "control or non-ASCII characters, which an HTTP header cannot carry"
        )


def _header_safe(value: str) -> bool:
    # httpx encodes header values as ASCII; CR/LF would split the header; h11 refuses
    # a value with surrounding whitespace and quotes it whole in its error.
    return value.isascii() and _CONTROL.search(value) is None and value == value.strip()


def _to_secret(value: Any) -> Any:
    # Anything else is left for the validator, which knows the field's name.
    return Secret(value) if isinstance(value, (str, Secret)) else value


def _check_secret(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Any text will do: a client secret is form-urlencoded before it is sent.
    if not isinstance(value, Secret) or not value:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str or "
            f"Secret, got {type(value).__name__}{' (empty)' if isinstance(value, Secret) else ''}"
        )


def _check_static(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_token_value(instance, attribute, value.reveal() if isinstance(value, Secret) else value)


def _check_non_empty_str(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str, "
            f"got {type(value).__name__}"
        )


def _to_url_text(value: str | httpx.URL) -> str:
    return str(value) if isinstance(value, httpx.URL) else value


def _check_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    problem = f"{type(instance).__name__}: {attribute.name} must be an absolute http(s) URL"
    if not isinstance(value, str):
        raise ConfigurationError(f"{problem}, got {type(value).__name__}")
    try:
        url: httpx.URL | None = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None  # raised below, not here: httpx's error may quote the URL
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(problem)


Origin = tuple[str, str, int]
"""(scheme, host, port) with the default port filled in: what a token is issued for."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: httpx.URL) -> Origin:
    """The origin of ``url`` (RFC 6454): scheme, host and port, ports normalised."""
    scheme = url.scheme
    return scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 0)


def _origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return (
        f"{scheme}://{shown}"
        if _DEFAULT_PORTS.get(scheme) == port
        else (f"{scheme}://{shown}:{port}")
    )


def _absolute_origin(value: object, what: str) -> Origin:
    """The origin of an absolute http(s) URL, else a ConfigurationError naming ``what``."""
    problem = f"{what} must be an absolute http(s) URL"
    if not isinstance(value, (str, httpx.URL)):
        raise ConfigurationError(f"{problem}, got {type(value).__name__}")
    try:
        url: httpx.URL | None = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None  # raised below, not here: httpx's error may quote the URL
    if url is None or url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ConfigurationError(problem)
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


def _to_scope(value: str | list[str] | tuple[str, ...] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return " ".join(value) or None
    raise ConfigurationError(
        f"scope must be a str, a list of str or None, got {type(value).__name__}"
    )


def _check_header_name(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _HTTP_TOKEN.fullmatch(value):
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be an HTTP token "
            f"(letters, digits, !#$%&'*+-.^_`|~), got {value!r}"
        )


def _check_endpoint(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    token_endpoint_of(value)


def _check_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or value == "":
        return
    _check_header_name(instance, attribute, value)


def _hidden(_: object) -> str:
    return "'***'"


# --- tokens and providers -----------------------------------------------------------


@attrs.frozen
class Token:
    """An access token, and its life in seconds from the fetch.

    ``value`` is the plain token (a ``str``); the repr shows ``'***'`` instead.
    ``expires_in`` is ``None`` for a token that does not expire.
    """

    value: str = attrs.field(repr=_hidden, validator=_check_token_value)
    """The token itself, as sent after the scheme (``Bearer <value>``)."""
    expires_in: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, optional=True)
    )
    """Seconds of life from the fetch; ``None`` when it does not expire."""
    obtained_at: float | None = attrs.field(
        default=None, kw_only=True, eq=False, validator=v.number(optional=True)
    )
    """When the provider got it, on the provider's clock (for callers that use a
    provider on its own; ``AuthRefresh`` keeps time on the pipeline's clock)."""

    @property
    def expires_at(self) -> float | None:
        """``obtained_at + expires_in`` on the provider's clock, when both are known."""
        if self.expires_in is None or self.obtained_at is None:
            return None
        return self.obtained_at + self.expires_in


@runtime_checkable
class TokenProvider(Protocol):
    """Fetches a token; :class:`AuthRefresh` owns caching, refresh and single-flight.

    ``http`` sends through the pipeline's inner transport and none of its layers.
    Its ``base_url`` is fixed when the pipeline is built, never taken from the
    request that needed the token: the origin of the provider's ``token_endpoint``
    when it declares one, else the first of ``AuthRefresh(origins=...)``; with
    neither it has no ``base_url`` and the provider must use absolute URLs.

    A provider may declare ``token_endpoint`` (an absolute URL, or ``None`` for a
    provider that sends nothing, like :class:`StaticToken`): ``AuthRefresh`` then
    attaches its tokens to requests for that origin only, unless told otherwise
    (see :class:`AuthRefresh`).

    A provider raises on failure: :class:`TokenFetchError` (e.g. from
    :func:`token_from_response`) says why and whether asking again soon may help;
    an ``httpx.TransportError`` counts as transient; anything else as permanent.
    """

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Get a new token."""
        ...


@attrs.frozen
class StaticToken:
    """A fixed token that never expires (an API key, a long-lived token).

    It has no token endpoint, so nothing says which host the token belongs to:
    give ``AuthRefresh(StaticToken(key), origins=["https://api.example"])``.
    Without ``origins`` the token goes only to the origin of the first request
    the pipeline sends (never to a host a redirect leads to).

    Args:
        value: the token (kept in a :class:`~resilience.Secret`); surrounding
            whitespace, control or non-ASCII characters are a
            :class:`~resilience.errors.ConfigurationError` (an HTTP header cannot
            carry them).
        clock: stamps :attr:`Token.obtained_at` (default: the real clock).
    """

    token_endpoint: ClassVar[None] = None
    """No endpoint: the token is not fetched from anywhere."""

    value: Secret = attrs.field(converter=_to_secret, validator=_check_static)
    """The token, hidden."""
    clock: Clock | None = attrs.field(
        default=None,
        kw_only=True,
        eq=False,
        repr=False,
        validator=v.has_method("now", optional=True),
    )
    """Where :attr:`Token.obtained_at` comes from (default: the real clock)."""

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """The same token every time."""
        return Token(self.value.reveal(), obtained_at=(self.clock or SYSTEM_CLOCK).now())


@attrs.frozen
class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials (RFC 6749 §4.4), as Derapi's token endpoint wants.

    ``fetch`` POSTs the form body ``grant_type=client_credentials`` (plus ``scope``)
    with HTTP Basic authentication, the client id and secret each
    form-urlencoded first (RFC 6749 §2.3.1), and reads ``access_token`` and
    ``expires_in`` from the JSON answer. An error answer (RFC 6749 §5.2,
    ``{"error": "invalid_client"}``) becomes a :class:`TokenFetchError` naming the
    status and the error code.

    ``AuthRefresh`` attaches its tokens only to requests for ``token_url``'s origin
    (scheme, host, port): right when the API and the token endpoint share a host.
    When they do not (``https://auth.example/oauth2/token`` for
    ``https://api.example``), name the API with ``AuthRefresh(provider,
    origins=["https://api.example"])``.

    Args:
        token_url: the token endpoint (an absolute http(s) URL).
        client_id: the client identifier.
        client_secret: the client secret (kept in a :class:`~resilience.Secret`).
        scope: scopes to ask for: a space-separated str or a list (default: none).
        clock: stamps :attr:`Token.obtained_at` (default: the real clock).
    """

    token_url: str = attrs.field(converter=_to_url_text, validator=_check_url)
    """The token endpoint's URL."""
    client_id: str = attrs.field(validator=_check_non_empty_str)
    """The client identifier (not a secret: it shows in the repr)."""
    client_secret: Secret = attrs.field(converter=_to_secret, validator=_check_secret)
    """The client secret, hidden."""
    scope: str | None = attrs.field(default=None, converter=_to_scope)
    """Space-separated scopes, or ``None`` to send no ``scope``."""
    clock: Clock | None = attrs.field(
        default=None,
        kw_only=True,
        eq=False,
        repr=False,
        validator=v.has_method("now", optional=True),
    )
    """Where :attr:`Token.obtained_at` comes from (default: the real clock)."""

    @property
    def token_endpoint(self) -> str:
        """Where tokens come from (``token_url``); its origin is where they go."""
        return self.token_url

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Ask the token endpoint for a new token."""
        form = {"grant_type": "client_credentials"}
        if self.scope is not None:
            form["scope"] = self.scope
        response = await http.post(
            self.token_url,
            data=form,
            headers={"Authorization": self._basic(), "Accept": "application/json"},
        )
        return token_from_response(response, vendor="oauth2", clock=self.clock)

    def _basic(self) -> str:
        # RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic (RFC 7617).
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret.reveal())}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


# --- helpers for token flows (vendor plugins reuse these) ---------------------------


class TokenFetchError(AuthenticationError):
    """A token could not be fetched: the endpoint failed, refused, or answered badly.

    It is an :class:`~resilience.errors.AuthenticationError`. :attr:`transient`
    says whether asking again later may help (a network error, 429, 5xx); then
    ``AuthRefresh`` reports the failure as a RETRY, so a Retry layer above may try
    the call again (within its budget). The message names the endpoint's host, the
    status and the error code, never a body, a token or a secret.
    """

    transient: bool
    """Whether asking again later may help."""
    retry_after: float | None
    """Seconds the token endpoint asked to wait (``Retry-After``), when it did."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        request: httpx.Request | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        super().__init__(message, request=request, problem=problem, report=report)
        self.transient = transient
        self.retry_after = retry_after


#: httpx's own default: 5 s for each of connect, read, write and pool.
_HTTPX_DEFAULT_TIMEOUT = httpx.Timeout(5.0)


def _transient_status(status: int | None) -> bool:
    """Whether a token endpoint answering ``status`` may answer better later: 408,
    425, 429 and every 5xx but 501 (Not Implemented) and 505 (HTTP Version Not
    Supported), which say the request itself will never work."""
    if status is None:
        return False
    return status in RETRY_STATUSES or (500 <= status < 600 and status not in (501, 505))


def token_from_response(
    response: httpx.Response,
    *,
    access_token_path: str = "access_token",
    expires_in_path: str | None = "expires_in",
    default_expires_in: float | None = None,
    vendor: str = "oauth2",
    clock: Clock | None = None,
) -> Token:
    """Turn a token endpoint's (read) answer into a :class:`Token`, or raise.

    Any 2xx is a success (Turris answers 201). The token and its life are looked up
    by dotted paths into the JSON body: ``"access_token"`` (RFC 6749, Tellus,
    Derapi) or ``"data.accessToken"`` (Turris). ``expires_in`` may be a number or a
    numeric string; when it is absent (or ``expires_in_path`` is ``None``),
    ``default_expires_in`` is used.

    Raises:
        TokenFetchError: the status is not 2xx (``problem.code`` is the body's
            ``error`` / ``errorType`` / ``code`` when it looks like a code; 408,
            425, 429 and 5xx but 501 and 505 are ``transient``, with ``Retry-After``
            honoured), or
            the body is not JSON, lacks the token, or has a token or a life of
            the wrong type (a negative ``expires_in`` included).
    """
    where = f"token endpoint {_host(response)}"
    status = response.status_code
    if not 200 <= status < 300:
        code, request_id = _error_fields(response)
        transient = _transient_status(status)
        problem = Problem(
            vendor=vendor,
            status=status,
            code=code or str(status),
            title="token request refused",
            request_id=request_id,
        )
        raise TokenFetchError(
            f"{where} answered HTTP {status}" + (f" (error {code})" if code else ""),
            transient=transient,
            retry_after=retry_after_of(response) if transient else None,
            problem=problem,
        )

    def malformed(why: str) -> TokenFetchError:
        problem = Problem(vendor=vendor, status=status, code="invalid_token_response", title=why)
        return TokenFetchError(f"{where} answered HTTP {status}, but {why}", problem=problem)

    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        body = _MISSING
    if body is _MISSING:
        # Raised outside the except block: a JSONDecodeError keeps the whole body,
        # which may hold a token, and would stay reachable as __context__.
        raise malformed("its body is not JSON")
    value = _lookup(body, access_token_path)
    if value is _MISSING:
        raise malformed(f"its body has no {access_token_path!r}")
    if not isinstance(value, str) or not value.strip():
        raise malformed(f"{access_token_path!r} is not a non-empty string")
    value = value.strip()
    if not _header_safe(value):
        raise malformed(f"{access_token_path!r} has characters no HTTP header can carry")
    expires_in: float | None = default_expires_in
    if expires_in_path is not None:
        raw = _lookup(body, expires_in_path)
        if raw is not _MISSING and raw is not None:
            expires_in = _seconds(raw)
            if expires_in is None:
                raise malformed(f"{expires_in_path!r} is not a non-negative number")
    return Token(value, expires_in, obtained_at=(clock or SYSTEM_CLOCK).now())


_MISSING: Any = object()


def _lookup(body: object, path: str) -> Any:
    node = body
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _seconds(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        # Some endpoints send "3600" (a string); accept plain decimals only.
        if not re.fullmatch(r"\s*\d{1,12}(\.\d+)?\s*", raw):
            return None
        raw = float(raw)
    if not isinstance(raw, (int, float)):
        return None
    try:
        seconds = float(raw)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _host(response: httpx.Response) -> str:
    try:
        return response.request.url.host or "(unknown host)"
    except RuntimeError:  # a response built without a request
        return "(unknown host)"


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """The error code and request id of an error answer, when they look safe to quote.

    RFC 6749 says ``error``, Turris ``errorType``, Tellus ``code``; free text
    (``error_description``, ``message``) is never quoted: it may echo the request.
    """
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    code = None
    for key in ("error", "errorType", "code"):
        candidate = _safe_code(body.get(key))
        if candidate is not None:
            code = candidate
            break
    request_id = _safe_code(body.get("requestId", body.get("request_id")))
    return code, request_id


def _safe_code(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and _SAFE_CODE.fullmatch(value):
        return value
    return None


# --- the layer ----------------------------------------------------------------------


@attrs.frozen
class AuthRefresh:
    """Attaches a token to each request; refreshes it before expiry and on rejection.

    * Origins: a token goes only to requests whose origin (scheme, host, port,
      default ports normalised) is one it was issued for: the ones named in
      ``origins``, else the origin of the provider's ``token_endpoint``
      (``OAuth2ClientCredentials``' ``token_url``, a plugin's token URL), else, for
      a provider with no endpoint (:class:`StaticToken`, a provider that declares
      none), the origin of the first request this pipeline sends. A request for
      any other origin (a redirect to another host, another API on the same
      client) is sent without a token, causes no fetch, and its 401 is a FAIL
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
    * A failed fetch becomes a :class:`TokenFetchError` (an
      ``AuthenticationError``; a RETRY outcome when transient, so a Retry layer
      above may try again, otherwise a FAIL); the cache is left as it was and
      the next call asks again. A cancelled fetch changes nothing.

    Each new token emits :class:`~resilience.TokenRefreshed` with its trigger:
    ``"initial"``, ``"proactive"`` or ``"rejected"``.

    Args:
        provider: fetches tokens (:class:`OAuth2ClientCredentials`, a plugin's
            flow, :class:`StaticToken`, ...).
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
    """

    provider: TokenProvider = attrs.field(validator=[v.has_method("fetch"), _check_endpoint])
    """Where tokens come from."""
    origins: tuple[str, ...] | None = attrs.field(default=None, kw_only=True, converter=_to_origins)
    """The origins (``scheme://host[:port]``) the token is sent to, or ``None`` for
    the default (the token endpoint's origin; the first request's for a provider
    with no endpoint)."""
    skew: float = attrs.field(default=60.0, kw_only=True, validator=v.number(minimum=0))
    """Seconds before expiry at which a token is refreshed before sending."""
    header: str = attrs.field(default="Authorization", kw_only=True, validator=_check_header_name)
    """The request header that carries the token."""
    scheme: str | None = attrs.field(default="Bearer", kw_only=True, validator=_check_scheme)
    """The auth scheme before the token, or ``None`` / ``""`` for the bare token."""
    fetch_timeout: float | None = attrs.field(
        default=30.0,
        kw_only=True,
        validator=v.number(minimum=0, exclusive_minimum=True, optional=True),
    )
    """Seconds one token fetch may take (``Timeout(attempt=...)`` does not cover it);
    a fetch that runs out is a transient failure. ``None``: no limit of its own,
    only httpx's default of 5 s for each connect, read, write and pool wait."""

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
        return _AuthHandler(self, env, prefix, allowed, base)


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

    def __repr__(self) -> str:
        state = "no token" if self.token is None else f"token #{self.generation}"
        return f"<AuthRefresh handler ({state})>"

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        origin = origin_of(request.url)
        allowed = self.allowed
        if allowed is None:
            # A provider with no endpoint: the token is for the first origin sent to.
            self.allowed = allowed = frozenset({origin})
            logger.debug("resilience auth: the token is for %s only", _origin_text(origin))
        if origin not in allowed:
            return await self._foreign(request, call, call_next, origin)
        got = self._usable(self.env.clock.now(), None, fast=True)
        if got is None:
            obtained = await self._obtain(request, call, None)
            if isinstance(obtained, Outcome):
                return obtained
            got = obtained
        token, generation = got
        outcome = await call_next(self._attach(request, token), call)
        if outcome.verdict.action is not Action.ACCEPT:
            self._withhold(outcome, call, token)
        if outcome.verdict.action is not Action.REFRESH_AUTH:
            return outcome
        if call in self.replayed:
            # Refreshed once already in this call (before a Retry of some other
            # failure): a second rejection is final, not another fetch.
            self._rejected_again(request, outcome)
            return outcome
        if not _body_replayable(request):
            # This request cannot go again, but the next one should not fail too.
            await self._obtain(request, call, generation)
            return outcome
        await outcome.aclose()
        obtained = await self._obtain(request, call, generation)
        if isinstance(obtained, Outcome):
            return obtained
        self.replayed.add(call)
        outcome = await call_next(self._attach(request, obtained[0]), call)
        if outcome.verdict.action is not Action.ACCEPT:
            self._withhold(outcome, call, obtained[0])
        if outcome.verdict.action is Action.REFRESH_AUTH:
            self._rejected_again(request, outcome)
        return outcome

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
        scrubbed = scrub_problem(problem, needles)
        if scrubbed is problem:
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

    def _attach(self, request: httpx.Request, token: Token) -> httpx.Request:
        # A copy: the caller's request (which Retry may send again) never holds a token.
        headers = request.headers.copy()
        headers[self.config.header] = self.prefix + token.value
        return httpx.Request(
            request.method,
            request.url,
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

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
        try:
            token = await self._call_provider(call, trigger)
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
        self.token = token
        self.generation += 1
        self.completed += 1
        self.failure = None
        self.pause_until = -math.inf
        life = token.expires_in
        self.expires_at = math.inf if life is None else started + life
        self.refresh_at = started + self.config.refresh_after(life)
        env.emit(TokenRefreshed(trigger=trigger, expires_in=life), call)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resilience auth: new token (trigger=%s, expires_in=%s) from %s",
                trigger,
                life,
                type(self.config.provider).__name__,
            )
        return token, self.generation

    async def _call_provider(self, call: Call, trigger: str) -> Token:
        provider = self.config.provider
        span = getattr(self.env.instrument, "token_refresh", None)
        async with contextlib.AsyncExitStack() as stack:
            if span is not None:
                manager = span(call, trigger)
                if hasattr(manager, "__aenter__"):
                    await stack.enter_async_context(manager)
                else:
                    stack.enter_context(manager)
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
            if not isinstance(value, str) or not value or not _header_safe(value):
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
                f"token endpoint {_host(exc.response)} answered HTTP {status}",
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
    if isinstance(exc, httpx.RequestError):
        try:
            return exc.request.url.host or "the token endpoint"
        except RuntimeError:  # raised without a request
            pass
    return "the token endpoint"


def _body_replayable(request: httpx.Request) -> bool:
    if isinstance(request.stream, httpx.ByteStream):
        return True
    try:
        request.content  # noqa: B018 - raises when the body was never read
    except httpx.RequestNotRead:
        return False
    return True
