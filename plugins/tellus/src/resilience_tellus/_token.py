"""The Tellus operator token flow.

``POST /v1/operator/oauth/token`` with a JSON body ``{client_id, client_secret,
grant_type: "client_credentials"}`` answers ``{access_token, token_type,
expires_in}`` (documented un-enveloped; a sandbox may wrap it in
``{code: 0, data: ...}``, which is accepted too). The provider only fetches:
``AuthRefresh`` caches the token and refreshes it, and sends it only to the token
endpoint's origin (the API's, with ``base_url``).
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from resilience import (
    Action,
    Clock,
    Secret,
    SystemClock,
    Token,
    TokenFetchError,
    jwt_expires_in,
    post_for_token,
    scrub_problem,
)
from resilience.errors import ConfigurationError, describe_failure

from ._classifier import TellusClassifier

__all__ = ["TOKEN_PATH", "TellusToken"]

TOKEN_PATH = "/v1/operator/oauth/token"
"""Where operator tokens come from, relative to the API's base URL."""

#: Tellus documents ``expires_in`` as "always 86400".
DEFAULT_LIFE = 86_400.0

_CLASSIFIER = TellusClassifier()


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
            f"TellusToken: client_secret must be a non-empty str or Secret, "
            f"got {type(value).__name__}"
        )
    secret = Secret(value)
    if not secret:
        raise ConfigurationError("TellusToken: client_secret must not be empty")
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
class TellusToken:
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

    Example::

        auth = TellusToken(base_url="https://api.tellus.example", client_id="…",
                           client_secret="…")
        pipeline = resilience.standard_pipeline("tellus", auth=auth)
    """

    client_id: str = attrs.field(validator=_check_client_id)
    client_secret: Secret = attrs.field(converter=_to_secret)
    base_url: str | None = attrs.field(default=None, validator=_check_url)
    token_url: str | None = attrs.field(default=None, validator=_check_url)
    clock: Clock | None = attrs.field(default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.base_url is None and self.token_url is None:
            raise ConfigurationError(
                "TellusToken: base_url (or token_url) is required: the token endpoint "
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
        """Ask Tellus for a fresh token.

        Raises:
            resilience.TokenFetchError: (an ``AuthenticationError``) the request
                failed, Tellus refused it (the message names its code; 5001 and
                9001 are ``transient``), or the answer held no token.
        """
        body: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.reveal(),
            "grant_type": "client_credentials",
        }
        data, response = await post_for_token(
            http, self.url, json_body=body, classifier=_CLASSIFIER, what="token request"
        )
        inner = data.get("data")
        if "access_token" not in data and isinstance(inner, dict) and data.get("code") == 0:
            # A sandbox that wraps every answer in the envelope, as v1.3 allows.
            data = inner
        value = data.get("access_token")
        if not isinstance(value, str) or not value.strip():
            # An error envelope on a 200 (code wins over status): its code decides.
            verdict = _CLASSIFIER.classify(response.request, response, None)
            transient = verdict.action is Action.RETRY
            problem = verdict.problem
            if problem is not None:
                # The envelope may echo the request: its message, its details.
                problem = scrub_problem(problem, [self.client_secret])
            raise TokenFetchError(
                describe_failure("tellus token request", problem, "no access_token"),
                transient=transient,
                retry_after=verdict.retry_after if transient else None,
                problem=problem,
            )
        clock = self.clock if self.clock is not None else SystemClock()
        return Token(value.strip(), _life(data, value, response), obtained_at=clock.now())


def _life(data: dict[str, Any], value: str, response: httpx.Response) -> float:
    """Seconds of life: ``expires_in``, else the JWT's ``exp``, else 24 hours."""
    raw = data.get("expires_in")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 < raw < 10**9:
        return float(raw)
    from_jwt = jwt_expires_in(value, response=response)
    return from_jwt if from_jwt is not None else DEFAULT_LIFE
