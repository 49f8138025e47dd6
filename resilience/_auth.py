"""AuthRefresh and token providers (placeholder until the auth issue lands)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs
import httpx

from ._pipeline import Call, CallNext, Handler, Outcome, PipelineEnv

__all__ = ["AuthRefresh", "OAuth2ClientCredentials", "StaticToken", "Token", "TokenProvider"]


@attrs.frozen
class Token:
    """An access token and its life in seconds from the fetch (``None``: no expiry)."""

    value: str = attrs.field(repr=False)
    expires_in: float | None = None


@runtime_checkable
class TokenProvider(Protocol):
    """Fetches a token; AuthRefresh owns caching, refresh and single-flight."""

    async def fetch(self, http: httpx.AsyncClient) -> Token: ...


@attrs.frozen
class StaticToken:
    """A fixed token."""

    value: str = attrs.field(repr=False)

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        return Token(self.value)


@attrs.frozen(kw_only=True)
class OAuth2ClientCredentials:
    """RFC 6749 client credentials (placeholder)."""

    token_url: str
    client_id: str
    client_secret: str = attrs.field(repr=False)
    scope: str | None = None

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        raise NotImplementedError


@attrs.frozen
class AuthRefresh:
    """Placeholder: attaches nothing."""

    provider: TokenProvider

    def bind(self, env: PipelineEnv) -> Handler:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            return await call_next(request, call)

        return handler
