"""The Acme token flow: ``POST /oauth/token`` with JSON credentials.

TODO(vendor): the vendor's token request and answer. A standard RFC 6749 flow
(form body, HTTP Basic) needs no plugin code: use
``resilience.OAuth2ClientCredentials``. Providers only fetch; ``AuthRefresh``
caches and refreshes.
"""

from __future__ import annotations

import attrs
import httpx

from resilience import (
    Clock,
    Secret,
    SystemClock,
    Token,
    TokenFetchError,
    jwt_expires_in,
    post_for_token,
)

from ._classifier import AcmeClassifier

__all__ = ["TOKEN_PATH", "AcmeToken"]

TOKEN_PATH = "/oauth/token"
"""The token endpoint, relative to the API's base URL."""

_CLASSIFIER = AcmeClassifier()


@attrs.frozen(kw_only=True)
class AcmeToken:
    """Fetches an Acme access token.

    Args:
        client_id: the client id.
        client_secret: the secret (a :class:`~resilience.Secret`: never shown).
        base_url: the API's base URL (default: the fetching client's own).
        clock: stamps :attr:`resilience.Token.obtained_at`.
    """

    client_id: str
    client_secret: Secret = attrs.field(converter=Secret)
    base_url: str | None = None
    clock: Clock | None = attrs.field(default=None, repr=False, eq=False)

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Ask Acme for a token; failures raise ``TokenFetchError``."""
        url = (self.base_url or "").rstrip("/") + TOKEN_PATH
        body = {"client_id": self.client_id, "client_secret": self.client_secret.reveal()}
        data, response = await post_for_token(http, url, json_body=body, classifier=_CLASSIFIER)
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            # No request= here: the token request's body holds the secret.
            raise TokenFetchError("acme token request: no access_token")
        life = data.get("expires_in")
        if not isinstance(life, (int, float)) or isinstance(life, bool) or life <= 0:
            life = jwt_expires_in(value, response=response)
        clock = self.clock if self.clock is not None else SystemClock()
        return Token(value, None if life is None else float(life), obtained_at=clock.now())
