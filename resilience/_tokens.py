"""Tokens and the providers that fetch them: the one place a token endpoint is read.

Where it sits: below :class:`~resilience.AuthRefresh` (``_auth.py``), which caches
a provider's tokens, refreshes them and attaches them to requests. A provider only
fetches (``async fetch(http) -> Token``) through the client ``AuthRefresh`` lends
it, which sends through the pipeline's inner transport and none of its layers.

Every provider here and in the vendor plugins answers through one reader,
:func:`token_from_response`: the accepted statuses, the vendor's error envelope
(read by its classifier when it has one), the JSON path of the token and of its
life, a JWT's ``exp`` and a documented default as fallbacks, and secrets
scrubbed from whatever the endpoint echoed. :class:`VendorToken` is the base a
vendor's client-credentials flow declares itself on (endpoint path, request body,
where the token and its life are, default life), so a plugin's provider is a
few class attributes.

Secrets (client secrets, tokens) never appear in a repr, a str, an error message,
a log record or an event: providers keep them in :class:`~resilience.Secret`, and
:class:`Token`'s repr hides its value. A :class:`~resilience.TokenFetchError`
never holds the token request (its body or headers carry the secret).
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote_plus

import attrs
import httpx

from . import _validate as v
from ._bodies import aclose_quietly, buffer_response
from ._classifier import (
    NEVER_RETRY_ERRORS,
    RETRY_STATUSES,
    Classifier,
    response_date,
    retry_after_of,
)
from ._clock import Clock, default_clock
from ._plugin import MAX_JSON_BYTES, number_field, parse_json_object
from ._secret import Secret, scrub_problem
from ._verdict import Action, Problem, Verdict
from .errors import ConfigurationError, TokenFetchError

__all__ = [
    "OAuth2ClientCredentials",
    "StaticToken",
    "Token",
    "TokenProvider",
    "VendorToken",
    "jwt_claims",
    "jwt_expires_in",
    "post_for_token",
    "token_from_response",
]

# RFC 9110 token: what a header name (and an auth scheme) may be made of.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (CR and LF above all) would split a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What an error code or request id from a token endpoint may look like to be quoted.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_MISSING: Any = object()

#: The most of a token endpoint's answer that is read (a token answer is a few KiB).
MAX_ANSWER_BYTES = MAX_JSON_BYTES


# --- validators and converters ------------------------------------------------------


def header_safe(value: str) -> bool:
    """Whether ``value`` can go in an HTTP header as it is."""
    # httpx encodes header values as ASCII; CR/LF would split the header; h11 refuses
    # a value with surrounding whitespace and quotes it whole in its error.
    return value.isascii() and _CONTROL.search(value) is None and value == value.strip()


def _check_token_value(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str, "
            f"got {type(value).__name__}{' (empty)' if value == '' else ''}"
        )
    if not header_safe(value):
        # Never quote the value: it is a credential.
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} has surrounding whitespace, "
            "control or non-ASCII characters, which an HTTP header cannot carry"
        )


def _to_secret(value: Any) -> Any:
    # Anything else is left for the validator, which knows the field's name.
    return Secret(value) if isinstance(value, (str, Secret)) else value


def _check_secret(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Any text will do: a client secret is encoded before it is sent.
    if not isinstance(value, Secret) or not value:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str or "
            f"Secret, got {type(value).__name__}{' (empty)' if isinstance(value, Secret) else ''}"
        )


def _check_static(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_token_value(instance, attribute, value.reveal() if isinstance(value, Secret) else value)


def _check_client_id(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str, "
            f"got {type(value).__name__}"
        )


def _to_url_text(value: Any) -> Any:
    return str(value) if isinstance(value, httpx.URL) else value


def absolute_url(value: object) -> httpx.URL | None:
    """``value`` as an absolute http(s) URL, or ``None`` when it is not one."""
    if not isinstance(value, (str, httpx.URL)):
        return None
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None  # never re-raised: httpx's error may quote the URL
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def _check_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # Never quote the value: a URL may carry user:password.
    if absolute_url(value) is None:
        got = "" if isinstance(value, str) else f", got {type(value).__name__}"
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be an absolute http(s) URL{got}"
        )


def _check_optional_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _check_url(instance, attribute, value)


def _to_scope(value: str | list[str] | tuple[str, ...] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return " ".join(value) or None
    raise ConfigurationError(
        f"scope must be a str, a list of str or None, got {type(value).__name__}"
    )


def check_header_name(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An HTTP token (RFC 9110): what a header name or an auth scheme is made of."""
    if not isinstance(value, str) or not _HTTP_TOKEN.fullmatch(value):
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be an HTTP token "
            f"(letters, digits, !#$%&'*+-.^_`|~), got {value!r}"
        )


def check_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An auth scheme (an HTTP token), or ``None`` / ``""`` for none."""
    if value is None or value == "":
        return
    check_header_name(instance, attribute, value)


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
    """Fetches a token; :class:`~resilience.AuthRefresh` owns caching, refresh and
    single-flight.

    ``http`` sends through the pipeline's inner transport and none of its layers.
    Its ``base_url`` is fixed when the pipeline is built, never taken from the
    request that needed the token: the origin of the provider's ``token_endpoint``
    when it declares one, else the first of ``AuthRefresh(origins=...)``; with
    neither it has no ``base_url`` and the provider must use absolute URLs.

    A provider may declare ``token_endpoint`` (an absolute URL, or ``None`` for a
    provider that sends nothing, like :class:`StaticToken`): ``AuthRefresh`` then
    attaches its tokens to requests for that origin only, unless told otherwise.

    A provider raises on failure: :class:`~resilience.TokenFetchError` (e.g. from
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
        return Token(self.value.reveal(), obtained_at=(self.clock or default_clock()).now())


@attrs.frozen
class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials (RFC 6749 §4.4), as Derapi's token endpoint wants.

    ``fetch`` POSTs the form body ``grant_type=client_credentials`` (plus ``scope``)
    with HTTP Basic authentication, the client id and secret each
    form-urlencoded first (RFC 6749 §2.3.1), and reads ``access_token`` and
    ``expires_in`` from the JSON answer with :func:`token_from_response`. An error
    answer (RFC 6749 §5.2, ``{"error": "invalid_client"}``) becomes a
    :class:`~resilience.TokenFetchError` naming the host, the status and the error
    code.

    ``AuthRefresh`` attaches its tokens only to requests for ``token_url``'s origin
    (scheme, host, port): right when the API and the token endpoint share a host.
    When they do not (``https://auth.example/oauth2/token`` for
    ``https://api.example``), name the API with ``AuthRefresh(provider,
    origins=["https://api.example"])``.

    A subclass may set :attr:`vendor` to name its vendor in errors and problems.

    Args:
        token_url: the token endpoint (an absolute http(s) URL).
        client_id: the client identifier.
        client_secret: the client secret (kept in a :class:`~resilience.Secret`).
        scope: scopes to ask for: a space-separated str or a list (default: none).
        clock: stamps :attr:`Token.obtained_at` (default: the real clock).
    """

    vendor: ClassVar[str] = "oauth2"
    """The name errors and problems give the token endpoint."""

    token_url: str = attrs.field(converter=_to_url_text, validator=_check_url)
    """The token endpoint's URL."""
    client_id: str = attrs.field(validator=_check_client_id)
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
        basic = self._basic()
        secrets = (self.client_secret, basic.removeprefix("Basic "))
        request = http.build_request(
            "POST",
            self.token_url,
            data=form,
            headers={"Authorization": basic, "Accept": "application/json"},
        )
        response = await _send(http, request, self.vendor)
        return token_from_response(response, vendor=self.vendor, clock=self.clock, secrets=secrets)

    def _basic(self) -> str:
        # RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic (RFC 7617).
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret.reveal())}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


@attrs.frozen(kw_only=True)
class VendorToken:
    """The base of a vendor's client-credentials token provider.

    A subclass declares the vendor's flow in class attributes and, when the body
    is not ``{grant_type, client_id, client_secret}``, overrides
    :meth:`request_body`; ``fetch`` POSTs the body as JSON to the endpoint and
    reads the answer with :func:`token_from_response`::

        class AcmeToken(VendorToken):
            vendor = "acme"
            token_path = "/oauth/token"
            classifier = AcmeClassifier()      # reads Acme's error envelope
            access_token_path = "data.accessToken"
            expires_in_path = None             # Acme sends no life...
            jwt_exp = True                     # ...the JWT's exp says it
            default_expires_in = 3600.0        # else the documented hour

    The arguments are checked when the provider is built: a bad one is a
    :class:`~resilience.errors.ConfigurationError` naming it (never quoting the
    secret or a URL). The token goes only to requests for the token endpoint's
    origin (see :class:`~resilience.AuthRefresh`): the API's own with
    ``base_url``; with a ``token_url`` on another host, name the API in
    ``AuthRefresh(provider, origins=[...])``.

    Args:
        client_id: the client id (a non-empty str).
        client_secret: its secret, non-empty (kept in a :class:`~resilience.Secret`).
        base_url: the API's base URL (absolute http or https); the token URL is
            ``base_url`` + :attr:`token_path`.
        token_url: the full token URL (absolute), when it is not under
            ``base_url``. One of the two is required: the token endpoint is never
            resolved against the request being sent.
        clock: stamps :attr:`Token.obtained_at` (default: the real clock).
    """

    vendor: ClassVar[str] = "vendor"
    """The vendor's name, in every error and problem."""
    token_path: ClassVar[str] = "/oauth/token"
    """The token endpoint, relative to ``base_url``."""
    classifier: ClassVar[Classifier | None] = None
    """Reads the vendor's error envelope (its code wins over the status)."""
    access_token_path: ClassVar[str | tuple[str, ...]] = "access_token"
    """Where the token is in the JSON answer (dotted; the first path found wins)."""
    expires_in_path: ClassVar[str | None] = "expires_in"
    """Where its life in seconds is, or ``None`` when the vendor sends none."""
    jwt_exp: ClassVar[bool] = False
    """Without a usable life in the answer, take it from the JWT's ``exp``."""
    default_expires_in: ClassVar[float | None] = None
    """The life when nothing else says it (``None``: the token does not expire)."""
    statuses: ClassVar[tuple[int, ...] | None] = None
    """The statuses of a successful answer (``None``: any 2xx)."""

    client_id: str = attrs.field(validator=_check_client_id)
    """The client id (it shows in the repr)."""
    client_secret: Secret = attrs.field(converter=_to_secret, validator=_check_secret)
    """The secret, hidden."""
    base_url: str | None = attrs.field(
        default=None, converter=_to_url_text, validator=_check_optional_url
    )
    """The API's base URL."""
    token_url: str | None = attrs.field(
        default=None, converter=_to_url_text, validator=_check_optional_url
    )
    """The full token URL, when it is not ``base_url`` + :attr:`token_path`."""
    clock: Clock | None = attrs.field(
        default=None, repr=False, eq=False, validator=v.has_method("now", optional=True)
    )
    """Where :attr:`Token.obtained_at` comes from (default: the real clock)."""

    def __attrs_post_init__(self) -> None:
        if self.base_url is None and self.token_url is None:
            raise ConfigurationError(
                f"{type(self).__name__}: base_url (or token_url) is required: the token "
                "endpoint is never resolved against the request being sent"
            )

    @property
    def url(self) -> str:
        """The token endpoint's URL (absolute)."""
        if self.token_url is not None:
            return self.token_url
        assert self.base_url is not None  # __attrs_post_init__ made sure
        return self.base_url.rstrip("/") + self.token_path

    @property
    def token_endpoint(self) -> str:
        """The token endpoint; ``AuthRefresh`` sends the token to its origin only."""
        return self.url

    def request_body(self) -> Mapping[str, Any]:
        """The JSON body of a token request (override for the vendor's shape)."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret.reveal(),
            "grant_type": "client_credentials",
        }

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Ask the vendor for a fresh token.

        Raises:
            resilience.TokenFetchError: (an ``AuthenticationError``) the request
                failed, the vendor refused it (the message names its code and
                request id; what the vendor's classifier calls RETRY is
                ``transient``), or the answer held no usable token.
        """
        request = http.build_request(
            "POST", self.url, json=dict(self.request_body()), headers={"Accept": "application/json"}
        )
        response = await _send(http, request, self.vendor)
        return token_from_response(
            response,
            access_token_path=self.access_token_path,
            expires_in_path=self.expires_in_path,
            default_expires_in=self.default_expires_in,
            jwt_exp=self.jwt_exp,
            statuses=self.statuses,
            classifier=self.classifier,
            secrets=(self.client_secret,),
            vendor=self.vendor,
            clock=self.clock,
        )


# --- the one reader of a token endpoint's answer --------------------------------------


def token_from_response(
    response: httpx.Response,
    *,
    access_token_path: str | Iterable[str] = "access_token",
    expires_in_path: str | None = "expires_in",
    default_expires_in: float | None = None,
    jwt_exp: bool = False,
    statuses: Iterable[int] | None = None,
    classifier: Classifier | None = None,
    secrets: Iterable[str | Secret | None] = (),
    vendor: str = "oauth2",
    clock: Clock | None = None,
) -> Token:
    """Turn a token endpoint's (read) answer into a :class:`Token`, or raise.

    * **Status**: ``statuses`` are the successful ones (default: any 2xx; Turris
      answers 201). With a ``classifier``, the vendor's envelope is read too, even
      on a 2xx: an error code there wins over the status.
    * **Token**: looked up by dotted path into the JSON object: ``"access_token"``
      (RFC 6749, Tellus, Derapi) or ``"data.accessToken"`` (Turris); given several
      paths, the first found. It must be a string an HTTP header can carry
      (surrounding whitespace is stripped).
    * **Life**: the number (or numeric string) at ``expires_in_path``; else, with
      ``jwt_exp``, the token's JWT ``exp`` (:func:`jwt_expires_in`); else
      ``default_expires_in`` (``None``: the token does not expire). A life that is
      present but not a non-negative number is an error, unless a fallback
      (``jwt_exp`` or ``default_expires_in``) is declared, which then applies.

    Raises:
        TokenFetchError: the endpoint refused (``problem.code`` is the
            classifier's, else the body's ``error`` / ``errorType`` / ``code``
            when it looks like a code; 408, 425, 429 and 5xx but 501 and 505, or
            what the classifier calls RETRY, are ``transient``, with the wait it
            asked for), or the body is not a JSON object (or over 1 MiB), lacks
            the token, or has a token or a life of the wrong type. ``secrets``
            (the client secret, say) are withheld from every text of the problem,
            in case the endpoint echoes them; free text (``error_description``,
            ``message``) is quoted only through the classifier's problem.
    """
    paths = (access_token_path,) if isinstance(access_token_path, str) else tuple(access_token_path)
    secrets = tuple(secrets)
    accepted = None if statuses is None else frozenset(statuses)
    body = _accepted_body(response, vendor, accepted, classifier, secrets)
    value: Any = _MISSING
    path = paths[0] if paths else "access_token"
    for candidate in paths:
        value = _lookup(body, candidate)
        if value is not _MISSING:
            path = candidate
            break
    if value is _MISSING:
        raise _malformed(response, vendor, body, secrets, f"its body has no {path!r}")
    if not isinstance(value, str) or not value.strip():
        raise _malformed(response, vendor, body, secrets, f"{path!r} is not a non-empty string")
    value = value.strip()
    if not header_safe(value):
        why = f"{path!r} has characters no HTTP header can carry"
        raise _malformed(response, vendor, body, secrets, why)
    life: float | None = None
    if expires_in_path is not None:
        raw = _lookup(body, expires_in_path)
        if raw is not _MISSING and raw is not None:
            life = _seconds(raw)
            if life is None and not jwt_exp and default_expires_in is None:
                why = f"{expires_in_path!r} is not a non-negative number"
                raise _malformed(response, vendor, body, secrets, why)
    if life is None and jwt_exp:
        life = jwt_expires_in(value, response=response)
    if life is None:
        life = default_expires_in
    return Token(value, life, obtained_at=(clock or default_clock()).now())


async def post_for_token(
    http: httpx.AsyncClient,
    url: str,
    *,
    json_body: Mapping[str, Any],
    classifier: Classifier,
    expect: tuple[int, ...] = (200,),
    what: str = "token request",
) -> tuple[dict[str, Any], httpx.Response]:
    """POST a JSON token request; return the JSON object answered, and the response.

    For a flow whose answer :func:`token_from_response` cannot read (most can:
    prefer :class:`VendorToken`). The answer is checked as that reader checks it
    (statuses, the classifier's envelope, a JSON object of at most 1 MiB), and
    every failure raises :class:`~resilience.TokenFetchError`, without the token
    request (its body holds the secret) and with the values under keys naming a
    secret or password withheld from the vendor's text. ``what`` is kept for
    compatibility and no longer used: messages name the endpoint's host.
    """
    vendor = str(getattr(classifier, "vendor", "vendor"))
    hidden = [
        str(value)
        for key, value in json_body.items()
        if any(word in key.lower() for word in ("secret", "password")) and value
    ]
    request = http.build_request(
        "POST", url, json=dict(json_body), headers={"Accept": "application/json"}
    )
    response = await _send(http, request, vendor)
    return _accepted_body(response, vendor, frozenset(expect), classifier, hidden), response


async def _send(http: httpx.AsyncClient, request: httpx.Request, vendor: str) -> httpx.Response:
    """Send a token request; return the answer read, at most ``MAX_ANSWER_BYTES`` of it
    (a longer one is cut, and reads as no JSON: a refusal by its status, or a
    malformed answer).

    A transport failure becomes a :class:`TokenFetchError` naming its type only
    (its text may quote the request, which carries the secret).
    """
    failed: type[BaseException] | None = None
    try:
        response = await http.send(request, stream=True)
        try:
            answer = await buffer_response(response, request, MAX_ANSWER_BYTES)
        finally:
            await aclose_quietly(response)
    except httpx.TransportError as exc:
        failed = type(exc)
    if failed is not None:
        # Raised here, not in the except block, so the original (which may quote
        # the request) is not kept as __context__.
        name = failed.__name__
        host = request.url.host or "the token endpoint"
        raise TokenFetchError(
            f"{vendor} token request to {host} failed: {name}",
            # A request httpx will not send (a relative URL) fails every time.
            transient=not issubclass(failed, NEVER_RETRY_ERRORS),
            problem=Problem(vendor=vendor, code=name, title="token request failed"),
        )
    return answer


def _accepted_body(
    response: httpx.Response,
    vendor: str,
    statuses: frozenset[int] | None,
    classifier: Classifier | None,
    secrets: Iterable[str | Secret | None],
) -> dict[str, Any]:
    """The JSON object of a successful answer; a refusal or a non-object raises."""
    status = response.status_code
    accepted = 200 <= status < 300 if statuses is None else status in statuses
    verdict = None if classifier is None else _classify(classifier, response)
    if not accepted or (verdict is not None and verdict.action is not Action.ACCEPT):
        raise _refused(response, vendor, verdict, secrets)
    body = parse_json_object(response, max_bytes=MAX_ANSWER_BYTES)
    if body is None:
        raise _malformed(response, vendor, None, secrets, "its body is not a JSON object")
    return body


def _classify(classifier: Classifier, response: httpx.Response) -> Verdict:
    try:
        return classifier.classify(response.request, response, None)
    except Exception:  # a broken classifier: the status decides
        return Verdict(Action.FAIL)


def _refused(
    response: httpx.Response,
    vendor: str,
    verdict: Verdict | None,
    secrets: Iterable[str | Secret | None],
) -> TokenFetchError:
    status = response.status_code
    if verdict is not None:
        problem = verdict.problem or Problem(vendor=vendor, status=status)
        transient = verdict.action is Action.RETRY
        retry_after = verdict.retry_after if transient else None
        quoted_title = True
    else:
        body = parse_json_object(response, max_bytes=MAX_ANSWER_BYTES)
        code = _first_code(body, ("error", "errorType", "code"))
        transient = _transient_status(status)
        problem = Problem(
            vendor=vendor,
            status=status,
            code=code or str(status),
            title="token request refused",
            request_id=_first_code(body, ("requestId", "request_id")),
        )
        retry_after = retry_after_of(response) if transient else None
        quoted_title = False  # ours, not the vendor's: it says nothing new
    problem = scrub_problem(problem, secrets)
    parts = []
    if problem.code and problem.code != str(status):
        parts.append(f"code={problem.code}")
    if quoted_title and problem.title:
        title = problem.title if len(problem.title) <= 120 else problem.title[:119] + "…"
        parts.append(repr(title))
    if problem.request_id:
        parts.append(f"request_id={problem.request_id}")
    details = f": {' '.join(parts)}" if parts else ""
    return TokenFetchError(
        f"{_where(response, vendor)} answered HTTP {status}{details}",
        transient=transient,
        retry_after=retry_after,
        problem=problem,
    )


def _malformed(
    response: httpx.Response,
    vendor: str,
    body: Mapping[str, Any] | None,
    secrets: Iterable[str | Secret | None],
    why: str,
) -> TokenFetchError:
    status = response.status_code
    request_id = _first_code(body, ("requestId", "request_id"))
    problem = Problem(
        vendor=vendor,
        status=status,
        code="invalid_token_response",
        title=why,
        request_id=request_id,
    )
    # The request id is the server's text: it may echo what it was sent.
    problem = scrub_problem(problem, secrets)
    shown = f" (request_id={problem.request_id})" if problem.request_id else ""
    return TokenFetchError(
        f"{_where(response, vendor)} answered HTTP {status}, but {why}{shown}", problem=problem
    )


def _where(response: httpx.Response, vendor: str) -> str:
    try:
        host = response.request.url.host or "(unknown host)"
    except RuntimeError:  # a response built without a request
        host = "(unknown host)"
    return f"{vendor} token endpoint {host}"


def _transient_status(status: int | None) -> bool:
    """Whether a token endpoint answering ``status`` may answer better later: 408,
    425, 429 and every 5xx but 501 (Not Implemented) and 505 (HTTP Version Not
    Supported), which say the request itself will never work."""
    if status is None:
        return False
    return status in RETRY_STATUSES or (500 <= status < 600 and status not in (501, 505))


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


def _first_code(body: Mapping[str, Any] | None, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` whose value looks like a code (never free text, which
    may echo the request)."""
    if body is None:
        return None
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _SAFE_CODE.fullmatch(value):
            return value
    return None


# --- JWT lifetimes ------------------------------------------------------------------


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, decoded without verifying anything; ``None`` if not one.

    Only for reading ``exp``/``iat``: the vendor verifies the signature, we only
    want to know when to refresh.
    """
    if not isinstance(token, str) or len(token) > 16_384:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (ValueError, TypeError):
        return None
    return parse_json_object(raw)


def jwt_expires_in(
    token: str, *, now: float | None = None, response: httpx.Response | None = None
) -> float | None:
    """Seconds of life left in a JWT, from its ``exp``; ``None`` when it has none.

    The reference time is, in order: the token's own ``iat`` (immune to clock
    skew between us and the vendor), the response's ``Date`` header, ``now``,
    then :func:`time.time`. The result is never negative.
    """
    claims = jwt_claims(token)
    exp = number_field(claims, "exp")
    if exp is None:
        return None
    reference = number_field(claims, "iat")
    if reference is None and response is not None:
        reference = response_date(response)
    if reference is None:
        reference = time.time() if now is None else now
    return max(exp - reference, 0.0)
