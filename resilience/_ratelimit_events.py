"""The RateLimiter's event, apart from the layer so that ``_events.py`` can count it
in :data:`resilience.Event` without importing the pipeline."""

from __future__ import annotations

import attrs

__all__ = ["RateLimited"]


@attrs.frozen(kw_only=True)
class RateLimited:
    """``RateLimiter`` held a call back to keep to its rate, or refused it."""

    limiter: str
    """The limiter's name (``RateLimiter(name=...)``)."""
    key: str
    """The key whose limit was reached (by default the vendor and client id, or
    ``scheme://host:port``)."""
    outcome: str
    """``"delayed"`` (the call waits :attr:`wait` seconds, then goes) or
    ``"rejected"`` (it fails with ``RateLimitExceeded``)."""
    wait: float
    """Seconds the call waits (delayed), or until a slot frees (rejected)."""
    reason: str | None = None
    """Why a rejected call could not wait: ``"max_wait"`` or ``"deadline"``."""
