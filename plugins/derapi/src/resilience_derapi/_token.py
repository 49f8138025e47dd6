"""The Derapi token flow: plain OAuth2 client credentials against ``/oauth2/token``.

Derapi's token endpoint is RFC 6749 client credentials: a form body
(``grant_type=client_credentials``), the client id and secret in HTTP Basic, and a
JSON answer ``{access_token, token_type, expires_in}``. The core's
:class:`~resilience.OAuth2ClientCredentials` does exactly that; this module only
builds the URL and names Derapi in its errors. ``AuthRefresh`` caches the token
and refreshes it (before ``expires_in`` runs out, and once on a 401 about it), and
sends it only to the token endpoint's origin: ``api.derapi.com`` by default.
"""

from __future__ import annotations

import attrs

from resilience import Clock, OAuth2ClientCredentials
from resilience.errors import ConfigurationError

__all__ = ["DEFAULT_BASE_URL", "TOKEN_PATH", "DerapiClientCredentials", "token_provider"]

DEFAULT_BASE_URL = "https://api.derapi.com"
"""Derapi's production API."""

TOKEN_PATH = "/oauth2/token"
"""The token endpoint, relative to the API's base URL."""


@attrs.frozen
class DerapiClientCredentials(OAuth2ClientCredentials):
    """:class:`~resilience.OAuth2ClientCredentials` whose errors say ``derapi``.

    The flow is the core's, unchanged; a refused or unreadable answer raises a
    :class:`~resilience.TokenFetchError` whose message and problem name the vendor
    (never the secret), so a log line says which API refused the credentials.
    """

    vendor = "derapi"


def token_provider(
    *,
    client_id: str,
    client_secret: str,
    base_url: str = DEFAULT_BASE_URL,
    token_url: str | None = None,
    scope: str | None = None,
    clock: Clock | None = None,
) -> DerapiClientCredentials:
    """The Derapi token provider.

    The token goes only to requests for the token endpoint's origin (the API's,
    from ``base_url``). With a ``token_url`` on another host, name the API:
    ``AuthRefresh(provider, origins=["https://api.derapi.com"])``.

    Args:
        client_id: the Derapi client id (a non-empty str).
        client_secret: its secret, non-empty (kept hidden from reprs, logs and errors).
        base_url: the API's base URL (absolute http or https); the token URL is
            ``base_url`` + ``/oauth2/token``.
        token_url: the full token URL (absolute), when it is elsewhere.
        scope: scopes to ask for (Derapi documents none).
        clock: stamps the token's ``obtained_at``.

    Example::

        auth = resilience_derapi.token_provider(client_id="…", client_secret="…")
        pipeline = resilience.standard_pipeline("derapi", auth=auth)

    Raises:
        resilience.errors.ConfigurationError: an argument is missing or malformed
            (the message names it, never the secret).
    """
    if token_url is None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            # Named here: OAuth2ClientCredentials would name its own token_url.
            got = "" if isinstance(base_url, str) else f", got {type(base_url).__name__}"
            raise ConfigurationError(
                f"token_provider: base_url must be an absolute http(s) URL{got}"
            )
        token_url = base_url.rstrip("/") + TOKEN_PATH
    return DerapiClientCredentials(token_url, client_id, client_secret, scope, clock=clock)
