"""Events of the Hedge, ConcurrencyLimit and Fallback layers.

Each layer emits its event through ``env.emit`` (hooks and telemetry see it);
``_events.py`` re-exports them and counts them in :data:`resilience.Event`.
"""

from __future__ import annotations

import attrs

__all__ = ["ConcurrencyLimitReached", "FallbackUsed", "HedgeSent"]


@attrs.frozen(kw_only=True)
class HedgeSent:
    """``Hedge`` sent another attempt while earlier ones were still out."""

    method: str
    """The request's method."""
    host: str
    """The request's host (never the full URL: it may carry secrets)."""
    hedge: int
    """The hedge's number (1 for the first hedge, the call's second attempt)."""
    elapsed: float
    """Seconds since the call's first attempt was sent (on the pipeline's clock)."""
    trigger: str
    """``"delay"`` (an attempt was slower than the hedging delay) or ``"failure"``
    (an attempt failed fast with a RETRY verdict)."""


@attrs.frozen(kw_only=True)
class ConcurrencyLimitReached:
    """``ConcurrencyLimit`` refused a call: its key had no slot in time."""

    key: str
    """The key whose slots were all taken (by default ``scheme://host:port``)."""
    limit: int
    """Calls the key allows in flight."""
    reason: str
    """``"queue_full"``, ``"max_wait"`` or ``"deadline"``."""


@attrs.frozen(kw_only=True)
class FallbackUsed:
    """``Fallback`` answered a call that failed."""

    method: str
    """The request's method."""
    host: str
    """The request's host."""
    error: str
    """The class name of the error the fallback replaced (``"RetriesExhausted"``)."""
    code: str | None
    """That error's problem code, when it had one."""
