"""Turris's documented rate limit as a ready-made ``RateLimiter`` layer.

Turris counts per API client (or per restricted access token): 60 writes (POST,
PUT, PATCH, DELETE) a minute and no limit on GET (guides/rate-limiting), and
answers the one over with 429 ``rate_limit_exceeded`` and ``X-RateLimit-Reset``.
``burst + rate`` is kept at 60, so no minute sees more whatever the window.
"""

from __future__ import annotations

from resilience import RateLimiter, StateStore

__all__ = ["rate_limits"]


def rate_limits(
    client_id: str | None = None, *, store: StateStore | None = None, max_wait: float | None = 60.0
) -> tuple[RateLimiter]:
    """The write limit (POST, PUT, PATCH, DELETE: 60/min); GETs are not limited.

    Args:
        client_id: the API client id (the key Turris counts by); without it, the
            limit is kept per host.
        store: a shared store (``RedisStore``) for a fleet; default: per process.
        max_wait: seconds a call may wait for its slot.

    Token requests (10/min) do not pass through the layers: ``AuthRefresh`` makes
    one per token lifetime (60 min).
    """
    writes = RateLimiter(
        rate=50,
        per=60.0,
        burst=10,
        methods={"POST", "PUT", "PATCH", "DELETE"},
        name="turris-writes",
        client_id=client_id,
        store=store,
        max_wait=max_wait,
    )
    return (writes,)
