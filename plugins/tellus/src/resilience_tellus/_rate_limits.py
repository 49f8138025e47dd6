"""Tellus's documented rate limits as ready-made ``RateLimiter`` layers.

Tellus counts per ``client_id``: 60 queries a minute and 30 control calls a minute
(operator side; guides/rate-limits), and answers the one over with a 429 and code
5001. Its window is not documented, so each limiter keeps ``burst + rate`` at the
documented figure: whatever the server's window, no minute sees more.
"""

from __future__ import annotations

from resilience import RateLimiter, StateStore

__all__ = ["rate_limits"]

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def rate_limits(
    client_id: str | None = None, *, store: StateStore | None = None, max_wait: float | None = 60.0
) -> tuple[RateLimiter, RateLimiter]:
    """The query limit (GET, 60/min) and the control limit (writes, 30/min).

    Args:
        client_id: the operator client id (the key Tellus counts by); without it,
            the limit is kept per host.
        store: a shared store (``RedisStore``) for a fleet; default: per process.
        max_wait: seconds a call may wait for its slot.

    Place both just inside ``Timeout(total=...)``. Token requests (10/min) do not
    pass through the layers: ``AuthRefresh`` makes one per token lifetime (24 h).
    """
    queries = RateLimiter(
        rate=50,
        per=60.0,
        burst=10,
        methods={"GET", "HEAD"},
        name="tellus-queries",
        client_id=client_id,
        store=store,
        max_wait=max_wait,
    )
    control = RateLimiter(
        rate=25,
        per=60.0,
        burst=5,
        methods=_WRITES,
        name="tellus-control",
        client_id=client_id,
        store=store,
        max_wait=max_wait,
    )
    return queries, control
