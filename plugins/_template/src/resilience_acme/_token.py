"""The Acme token flow: ``POST /oauth/token`` with JSON credentials.

TODO(vendor): declare the vendor's token request and answer. A standard RFC 6749
flow (form body, HTTP Basic) needs no plugin code: use
``resilience.OAuth2ClientCredentials``. Anything else is a
:class:`resilience.VendorToken` subclass: the endpoint's path, the request body
(override ``request_body``), where the token and its life are in the answer, the
fallbacks for the life, and the classifier that reads the vendor's error
envelope. Providers only fetch; ``AuthRefresh`` caches and refreshes, and sends
the token only to the origin of the provider's ``token_endpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resilience import VendorToken

from ._classifier import AcmeClassifier

__all__ = ["TOKEN_PATH", "AcmeToken"]

TOKEN_PATH = "/oauth/token"
"""The token endpoint, relative to the API's base URL."""


class AcmeToken(VendorToken):
    """Fetches an Acme access token.

    The token goes only to requests for the token endpoint's origin: the API's.

    Args:
        client_id: the client id (a non-empty str).
        client_secret: the secret, non-empty (a :class:`~resilience.Secret`: never
            shown).
        base_url: the API's base URL (absolute http or https; required unless
            ``token_url`` is given: the token endpoint is never resolved against
            the request being sent).
        token_url: the full token URL, when it is not under ``base_url``.
        clock: stamps :attr:`resilience.Token.obtained_at`.

    Raises:
        resilience.errors.ConfigurationError: an argument is missing or malformed.
    """

    vendor = "acme"
    token_path = TOKEN_PATH
    classifier = AcmeClassifier()
    # The answer: {"access_token": "...", "expires_in": 3600}; without a usable
    # expires_in, the JWT's exp says how long the token lives.
    access_token_path = "access_token"
    expires_in_path = "expires_in"
    jwt_exp = True

    def request_body(self) -> Mapping[str, Any]:
        """Acme takes the bare credentials (no ``grant_type``)."""
        return {"client_id": self.client_id, "client_secret": self.client_secret.reveal()}
