"""The Turris M2M token flow.

``POST /v1/auth/jwt`` with ``{clientId, clientSecret}`` (camelCase, no
``grant_type``) answers HTTP 201 ``{statusCode, data: {accessToken}, timestamp}``
with no ``expires_in``: the life comes from the JWT's ``exp`` when it has one,
else Turris's documented 60 minutes. The provider only fetches; ``AuthRefresh``
(5 minutes early, in the Turris preset) caches and refreshes, and sends the token
only to the token endpoint's origin (the API's, with ``base_url``).
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from resilience import (
    Clock,
    Problem,
    Secret,
    SystemClock,
    Token,
    TokenFetchError,
    jwt_expires_in,
    post_for_token,
    scrub_problem,
)
from resilience.errors import ConfigurationError, describe_failure

from ._classifier import TurrisClassifier

__all__ = ["TOKEN_PATH", "TurrisToken"]

TOKEN_PATH = "/v1/auth/jwt"
"""Where M2M tokens come from, relative to the API's base URL."""

DEFAULT_LIFE = 3600.0
"""Turris tokens live 60 minutes."""

_CLASSIFIER = TurrisClassifier()


# Arguments are checked when the provider is built: a bad one fails there, named,
# not at the first token request. Messages never quote a secret or a URL (a URL
# may carry user:password).


def _check_client_id(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a non-empty str, "
            f"got {type(value).__name__}"
        )


def _to_secret(value: str | Secret) -> Secret:
    if not isinstance(value, (str, Secret)):
        raise ConfigurationError(
            f"TurrisToken: client_secret must be a non-empty str or Secret, "
            f"got {type(value).__name__}"
        )
    secret = Secret(value)
    if not secret:
        raise ConfigurationError("TurrisToken: client_secret must not be empty")
    return secret


def _check_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    problem = f"{type(instance).__name__}: {attribute.name} must be an absolute http(s) URL"
    if not isinstance(value, str):
        raise ConfigurationError(f"{problem}, got {type(value).__name__}")
    try:
        url: httpx.URL | None = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None  # raised below, not here: httpx's error may quote the URL
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(problem)


@attrs.frozen(kw_only=True)
class TurrisToken:
    """Fetches a Turris M2M JWT.

    The token goes only to requests for the token endpoint's origin (scheme, host,
    port): the API's own when ``base_url`` is given. With a ``token_url`` on
    another host, name the API: ``AuthRefresh(TurrisToken(...),
    origins=["https://public.api.live.turrisfi.com"])``.

    Args:
        client_id: the API client's id (a non-empty str).
        client_secret: its secret, non-empty (kept in a :class:`~resilience.Secret`).
        base_url: the API's base URL (``https://public.api.live.turrisfi.com``);
            the token URL is ``base_url`` + :data:`TOKEN_PATH`.
        token_url: the full token URL (absolute), when it is not under ``base_url``.
            One of ``base_url`` and ``token_url`` is required: the token endpoint is
            never resolved against the request being sent.
        clock: stamps :attr:`resilience.Token.obtained_at` (default: the real clock).

    Raises:
        resilience.errors.ConfigurationError: an argument is missing or malformed
            (the message names it, never the secret).

    Example::

        auth = TurrisToken(base_url="https://public.api.sandbox.turrisfi.com",
                           client_id="…", client_secret="…")
        pipeline = resilience.standard_pipeline("turris", auth=auth)
    """

    client_id: str = attrs.field(validator=_check_client_id)
    client_secret: Secret = attrs.field(converter=_to_secret)
    base_url: str | None = attrs.field(default=None, validator=_check_url)
    token_url: str | None = attrs.field(default=None, validator=_check_url)
    clock: Clock | None = attrs.field(default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.base_url is None and self.token_url is None:
            raise ConfigurationError(
                "TurrisToken: base_url (or token_url) is required: the token endpoint "
                "is never resolved against the request being sent"
            )

    @property
    def url(self) -> str:
        """The token endpoint's URL (absolute)."""
        if self.token_url is not None:
            return self.token_url
        assert self.base_url is not None  # __attrs_post_init__ made sure
        return self.base_url.rstrip("/") + TOKEN_PATH

    @property
    def token_endpoint(self) -> str:
        """The token endpoint; ``AuthRefresh`` sends the token to its origin only."""
        return self.url

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Ask Turris for a fresh JWT.

        Raises:
            resilience.TokenFetchError: (an ``AuthenticationError``) the request
                failed, Turris refused it (the message names the ``errorType`` and
                ``requestId``; 429 and 5xx are ``transient``), or the answer held
                no token.
        """
        body = {"clientId": self.client_id, "clientSecret": self.client_secret.reveal()}
        data, response = await post_for_token(
            http, self.url, json_body=body, classifier=_CLASSIFIER, expect=(200, 201)
        )
        inner = data.get("data")
        value = inner.get("accessToken") if isinstance(inner, dict) else None
        if not isinstance(value, str) or not value.strip():
            # Name Turris's requestId (on every response) for a support ticket.
            problem = Problem(
                vendor="turris",
                status=response.status_code,
                code="invalid_token_response",
                title="the answer has no data.accessToken",
                request_id=_CLASSIFIER.str_field(data, "requestId", limit=200),
            )
            # The request id is the server's text: it may echo what it was sent.
            problem = scrub_problem(problem, [self.client_secret])
            raise TokenFetchError(
                describe_failure("turris token request", problem),
                problem=problem,
            )
        value = value.strip()
        life = jwt_expires_in(value, response=response)
        clock = self.clock if self.clock is not None else SystemClock()
        return Token(value, DEFAULT_LIFE if life is None else life, obtained_at=clock.now())
