"""The Acme token flow: ``POST /oauth/token`` with JSON credentials.

TODO(vendor): the vendor's token request and answer. A standard RFC 6749 flow
(form body, HTTP Basic) needs no plugin code: use
``resilience.OAuth2ClientCredentials``. Providers only fetch; ``AuthRefresh``
caches and refreshes, and sends the token only to the origin of the provider's
``token_endpoint`` (so keep that property: it is how the token knows its host).
"""

from __future__ import annotations

from typing import Any

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
from resilience.errors import ConfigurationError

from ._classifier import AcmeClassifier

__all__ = ["TOKEN_PATH", "AcmeToken"]

TOKEN_PATH = "/oauth/token"
"""The token endpoint, relative to the API's base URL."""

_CLASSIFIER = AcmeClassifier()


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
            f"AcmeToken: client_secret must be a non-empty str or Secret, "
            f"got {type(value).__name__}"
        )
    secret = Secret(value)
    if not secret:
        raise ConfigurationError("AcmeToken: client_secret must not be empty")
    return secret


def _check_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} is required: the token "
            "endpoint is never resolved against the request being sent"
        )
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
class AcmeToken:
    """Fetches an Acme access token.

    The token goes only to requests for the token endpoint's origin: the API's.

    Args:
        client_id: the client id (a non-empty str).
        client_secret: the secret, non-empty (a :class:`~resilience.Secret`: never
            shown).
        base_url: the API's base URL (absolute http or https; required: the token
            endpoint is never resolved against the request being sent).
        clock: stamps :attr:`resilience.Token.obtained_at`.

    Raises:
        resilience.errors.ConfigurationError: an argument is missing or malformed.
    """

    client_id: str = attrs.field(validator=_check_client_id)
    client_secret: Secret = attrs.field(converter=_to_secret)
    # A default only so that leaving it out is a ConfigurationError, not a TypeError.
    base_url: str = attrs.field(default=None, validator=_check_url)
    clock: Clock | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def token_endpoint(self) -> str:
        """The token endpoint; ``AuthRefresh`` sends the token to its origin only."""
        return self.base_url.rstrip("/") + TOKEN_PATH

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """Ask Acme for a token; failures raise ``TokenFetchError``."""
        url = self.token_endpoint
        body = {"client_id": self.client_id, "client_secret": self.client_secret.reveal()}
        data, response = await post_for_token(http, url, json_body=body, classifier=_CLASSIFIER)
        value = data.get("access_token")
        if not isinstance(value, str) or not value.strip():
            # No request= here: the token request's body holds the secret.
            raise TokenFetchError("acme token request: no access_token")
        value = value.strip()
        life = data.get("expires_in")
        if not isinstance(life, (int, float)) or isinstance(life, bool) or life <= 0:
            life = jwt_expires_in(value, response=response)
        clock = self.clock if self.clock is not None else SystemClock()
        return Token(value, None if life is None else float(life), obtained_at=clock.now())
