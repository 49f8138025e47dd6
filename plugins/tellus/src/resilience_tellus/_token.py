"""The Tellus operator token flow.

``POST /v1/operator/oauth/token`` with a JSON body ``{client_id, client_secret,
grant_type: "client_credentials"}`` answers ``{access_token, token_type,
expires_in}`` (documented un-enveloped; a sandbox may wrap it in
``{code: 0, data: ...}``, which is accepted too). The provider only fetches:
``AuthRefresh`` caches the token and refreshes it.
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
)
from resilience.errors import describe_failure

from ._classifier import TellusClassifier

__all__ = ["TOKEN_PATH", "TellusToken"]

TOKEN_PATH = "/v1/operator/oauth/token"
"""Where operator tokens come from, relative to the API's base URL."""

#: Tellus documents ``expires_in`` as "always 86400".
DEFAULT_LIFE = 86_400.0

_CLASSIFIER = TellusClassifier()


@attrs.frozen(kw_only=True)
class TellusToken:
    """Fetches a Tellus operator token (OAuth2 client credentials, JSON body).

    Args:
        client_id: the operator's client id.
        client_secret: its secret (kept in a :class:`~resilience.Secret`: never in
            reprs, logs or errors).
        base_url: the API's base URL; the token URL is ``base_url`` +
            :data:`TOKEN_PATH`. With neither this nor ``token_url``, the path is
            resolved against the fetching client's own ``base_url``.
        token_url: the full token URL, when it is not under ``base_url``.
        clock: stamps :attr:`resilience.Token.obtained_at` (default: the real clock).

    Example::

        auth = TellusToken(base_url="https://api.tellus.example", client_id="…",
                           client_secret="…")
        pipeline = resilience.standard_pipeline("tellus", auth=auth)
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
            raise TokenFetchError(
                describe_failure("tellus token request", verdict.problem, "no access_token"),
                transient=transient,
                retry_after=verdict.retry_after if transient else None,
                problem=verdict.problem,
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
