"""Events: frozen records of what the layers did, handed to hooks and telemetry.

A hook is any callable taking one event; ``Pipeline(hooks=[...])`` registers it.
A hook that raises is logged and ignored: observing a call never breaks it.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._layer_events import ConcurrencyLimitReached, FallbackUsed, HedgeSent
from ._ratelimit_events import RateLimited
from ._verdict import Verdict

__all__ = [
    "CallHeld",
    "CallReleased",
    "CircuitStateChanged",
    "ConcurrencyLimitReached",
    "Event",
    "FallbackUsed",
    "HedgeSent",
    "PartialFailureReported",
    "RateLimited",
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
class CallHeld:
    """A call met an open circuit and waits for it to recover (``Retry(hold=...)``)
    instead of failing."""

    method: str
    """The request's method."""
    host: str
    """The request's host (never the full URL: it may carry secrets)."""
    key: str
    """The key of the circuit it waits for."""
    attempt: int
    """The number of the attempt that met the open circuit (1 for the first)."""
    held: int
    """Calls held on that circuit now, this one included."""


@attrs.frozen(kw_only=True)
class CallReleased:
    """A held call stopped waiting: it goes on (``"recovered"``, ``"probe"``) or gives up."""

    method: str
    """The request's method."""
    host: str
    """The request's host."""
    key: str
    """The key of the circuit it waited for."""
    waited: float
    """Seconds it was held (its turn in the ramp included)."""
    outcome: str
    """``"recovered"`` (a probe succeeded and its turn in the ramp came),
    ``"probe"`` (it goes as the circuit's probe), ``"timeout"`` (the next probe
    could not come before its deadline or ``max_wait``), ``"isolated"`` or
    ``"cancelled"``."""

    @property
    def released(self) -> bool:
        """Whether the call goes on to its next attempt."""
        return self.outcome in ("recovered", "probe")


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


Event = (
    RetryScheduled
    | CircuitStateChanged
    | TokenRefreshed
    | PartialFailureReported
    | HedgeSent
    | ConcurrencyLimitReached
    | FallbackUsed
    | CallHeld
    | CallReleased
    | RateLimited
)
