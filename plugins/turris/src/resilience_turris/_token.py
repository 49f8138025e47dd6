"""The Turris M2M token flow, declared on :class:`resilience.VendorToken`.

``POST /v1/auth/jwt`` with ``{clientId, clientSecret}`` (camelCase, no
``grant_type``) answers HTTP 201 ``{statusCode, data: {accessToken}, timestamp}``
with no ``expires_in``: the life comes from the JWT's ``exp`` when it has one,
else Turris's documented 60 minutes. The provider only fetches; ``AuthRefresh``
(5 minutes early, in the Turris preset) caches and refreshes, and sends the token
only to the token endpoint's origin (the API's, with ``base_url``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resilience import VendorToken

from ._classifier import TurrisClassifier

__all__ = ["DEFAULT_LIFE", "TOKEN_PATH", "TurrisToken"]

TOKEN_PATH = "/v1/auth/jwt"
"""Where M2M tokens come from, relative to the API's base URL."""

DEFAULT_LIFE = 3600.0
"""Turris tokens live 60 minutes."""


class TurrisToken(VendorToken):
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

    Fetch failures are :class:`~resilience.TokenFetchError` naming the
    ``errorType`` and ``requestId`` (429 and 5xx are ``transient``).

    Example::

        auth = TurrisToken(base_url="https://public.api.sandbox.turrisfi.com",
                           client_id="…", client_secret="…")
        pipeline = resilience.standard_pipeline("turris", auth=auth)
    """

    vendor = "turris"
    token_path = TOKEN_PATH
    classifier = TurrisClassifier()
    access_token_path = "data.accessToken"
    expires_in_path = None
    jwt_exp = True
    default_expires_in = DEFAULT_LIFE

    def request_body(self) -> Mapping[str, Any]:
        """Turris wants camelCase and no ``grant_type``."""
        return {"clientId": self.client_id, "clientSecret": self.client_secret.reveal()}
