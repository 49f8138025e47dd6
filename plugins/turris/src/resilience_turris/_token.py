"""The Turris M2M token flow.

``POST /v1/auth/jwt`` with ``{clientId, clientSecret}`` (camelCase, no
``grant_type``) answers HTTP 201 ``{statusCode, data: {accessToken}, timestamp}``
with no ``expires_in``: the life comes from the JWT's ``exp`` when it has one,
else Turris's documented 60 minutes. The provider only fetches; ``AuthRefresh``
(5 minutes early, in the Turris preset) caches and refreshes.
"""

from __future__ import annotations

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
)
from resilience.errors import describe_failure

from ._classifier import TurrisClassifier

__all__ = ["TOKEN_PATH", "TurrisToken"]

TOKEN_PATH = "/v1/auth/jwt"
"""Where M2M tokens come from, relative to the API's base URL."""

DEFAULT_LIFE = 3600.0
"""Turris tokens live 60 minutes."""

_CLASSIFIER = TurrisClassifier()


@attrs.frozen(kw_only=True)
class TurrisToken:
    """Fetches a Turris M2M JWT.

    Args:
        client_id: the API client's id.
        client_secret: its secret (kept in a :class:`~resilience.Secret`).
        base_url: the API's base URL (``https://public.api.live.turrisfi.com``);
            with neither this nor ``token_url``, :data:`TOKEN_PATH` is resolved
            against the fetching client's own ``base_url``.
        token_url: the full token URL, when it is not under ``base_url``.
        clock: stamps :attr:`resilience.Token.obtained_at` (default: the real clock).

    Example::

        auth = TurrisToken(base_url="https://public.api.sandbox.turrisfi.com",
                           client_id="…", client_secret="…")
        pipeline = resilience.standard_pipeline("turris", auth=auth)
    """

    client_id: str
    client_secret: Secret = attrs.field(converter=Secret)
    base_url: str | None = None
    token_url: str | None = None
    clock: Clock | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def url(self) -> str:
        """The token endpoint's URL (relative when no base URL was given)."""
        if self.token_url is not None:
            return self.token_url
        if self.base_url is not None:
            return self.base_url.rstrip("/") + TOKEN_PATH
        return TOKEN_PATH

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
            raise TokenFetchError(
                describe_failure("turris token request", problem),
                problem=problem,
            )
        value = value.strip()
        life = jwt_expires_in(value, response=response)
        clock = self.clock if self.clock is not None else SystemClock()
        return Token(value, DEFAULT_LIFE if life is None else life, obtained_at=clock.now())
