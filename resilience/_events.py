"""Events: frozen records of what the layers did, handed to hooks and telemetry.

A hook is any callable taking one event; ``Pipeline(hooks=[...])`` registers it.
A hook that raises is logged and ignored: observing a call never breaks it.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._verdict import Verdict

__all__ = [
    "CircuitStateChanged",
    "Event",
    "PartialFailureReported",
    "RetryScheduled",
    "TokenRefreshed",
]


@attrs.frozen(kw_only=True)
class RetryScheduled:
    """A retry was decided: the call sleeps ``delay`` seconds, then sends again."""

    method: str
    """The request's method."""
    host: str
    """The request's host (never the full URL: it may carry secrets)."""
    attempt: int
    """The number of the attempt that failed (1 for the first)."""
    delay: float
    """Seconds the call sleeps before the next attempt."""
    verdict: Verdict
    """The verdict of the attempt that failed."""

    @property
    def reason(self) -> str:
        """The failed attempt's problem code, or its action."""
        return self.verdict.reason


@attrs.frozen(kw_only=True)
class CircuitStateChanged:
    """A circuit breaker moved from ``old`` to ``new`` state."""

    key: str
    """The breaker's key (by default ``scheme://host:port``)."""
    old: str
    """The previous state: ``"closed"``, ``"open"``, ``"half_open"`` or ``"isolated"``."""
    new: str
    """The new state."""


@attrs.frozen(kw_only=True)
class TokenRefreshed:
    """AuthRefresh fetched a new token."""

    trigger: str
    """``"initial"``, ``"proactive"`` (near expiry) or ``"rejected"`` (REFRESH_AUTH)."""
    expires_in: float | None
    """Seconds of life of the new token, when known."""


@attrs.frozen(kw_only=True)
class PartialFailureReported:
    """A split response was delivered with parts that still failed."""

    failures: Mapping[str, Verdict]
    """Part key to the verdict of its last try."""


Event = RetryScheduled | CircuitStateChanged | TokenRefreshed | PartialFailureReported
