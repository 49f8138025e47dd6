"""The Tellus operator token flow, declared on :class:`resilience.VendorToken`.

``POST /v1/operator/oauth/token`` with a JSON body ``{client_id, client_secret,
grant_type: "client_credentials"}`` answers ``{access_token, token_type,
expires_in}`` (documented un-enveloped; a sandbox may wrap it in
``{code: 0, data: ...}``, which is accepted too; an error code in the envelope wins
over the status). The provider only fetches: ``AuthRefresh`` caches the token and
refreshes it, and sends it only to the token endpoint's origin (the API's, with
``base_url``).
"""

from __future__ import annotations

from resilience import VendorToken

from ._classifier import TellusClassifier

__all__ = ["DEFAULT_LIFE", "TOKEN_PATH", "TellusToken"]

TOKEN_PATH = "/v1/operator/oauth/token"
"""Where operator tokens come from, relative to the API's base URL."""

DEFAULT_LIFE = 86_400.0
"""Tellus documents ``expires_in`` as "always 86400"."""


class TellusToken(VendorToken):
    """Fetches a Tellus operator token (OAuth2 client credentials, JSON body).

    The token goes only to requests for the token endpoint's origin (scheme, host,
    port): the API's own when ``base_url`` is given. With a ``token_url`` on
    another host, name the API: ``AuthRefresh(TellusToken(...),
    origins=["https://api.tellus.example"])``.

    Args:
        client_id: the operator's client id (a non-empty str).
        client_secret: its secret, non-empty (kept in a :class:`~resilience.Secret`:
            never in reprs, logs or errors).
        base_url: the API's base URL (absolute http or https); the token URL is
            ``base_url`` + :data:`TOKEN_PATH`.
        token_url: the full token URL (absolute), when it is not under ``base_url``.
            One of ``base_url`` and ``token_url`` is required: the token endpoint is
            never resolved against the request being sent.
        clock: stamps :attr:`resilience.Token.obtained_at` (default: the real clock).

    Raises:
        resilience.errors.ConfigurationError: an argument is missing or malformed
            (the message names it, never the secret).

    Fetch failures are :class:`~resilience.TokenFetchError` naming Tellus's code
    (5001 and 9001 are ``transient``). The life is ``expires_in``, else the JWT's
    ``exp``, else 24 hours.

    Example::

        auth = TellusToken(base_url="https://api.tellus.example", client_id="…",
                           client_secret="…")
        pipeline = resilience.standard_pipeline("tellus", auth=auth)
    """

    vendor = "tellus"
    token_path = TOKEN_PATH
    classifier = TellusClassifier()
    access_token_path = ("access_token", "data.access_token")
    jwt_exp = True
    default_expires_in = DEFAULT_LIFE
