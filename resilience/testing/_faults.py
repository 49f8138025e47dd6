"""Fault plans: what a vendor simulator does wrong, and when.

The plan is data a test writes; :class:`~resilience.testing.Simulator` reads it on
every request (slowness, outage, rate limits, injected faults, in that order).
Every time in a plan is seconds since the simulator was created, on its clock.
A bad value fails at construction with a
:class:`~resilience.errors.ConfigurationError` naming the argument.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

import attrs

from .._validate import number
from ._messages import SimRequest

__all__ = ["Fault", "FaultPlan", "LimitState", "Outage", "RateLimit", "Slowness"]

_PROBABILITY = number(minimum=0.0, maximum=1.0)
_SECONDS = number(minimum=0.0)
_OPTIONAL_SECONDS = number(minimum=0.0, optional=True)


def _methods(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return frozenset(m.upper() for m in value)


@attrs.frozen(kw_only=True)
class _Scope:
    """Which requests, and when, a rule applies to (shared by faults and limits)."""

    methods: frozenset[str] | None = attrs.field(default=None, converter=_methods)
    """Only these methods (``None``: all)."""
    path: str | None = None
    """Only paths matching this shell-style pattern (``*`` matches ``/`` too);
    ``None``: every resource path (not the token endpoint)."""

    def matches(self, request: SimRequest, *, is_auth: bool) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.path is None:
            return not is_auth
        return fnmatch.fnmatchcase(request.path, self.path)


@attrs.frozen(kw_only=True)
class Fault(_Scope):
    """Answer a fraction of matching requests with a vendor code.

    ``code`` is one of the vendor's codes (``"9001"``, ``"internal_error"``), or
    ``"http:<status>"`` for a non-vendor answer: an HTML page from a proxy in
    front of the vendor (``"http:502"``).
    """

    code: str
    """The code to answer with."""
    rate: float = attrs.field(default=1.0, validator=_PROBABILITY)
    """Probability per matching request."""
    status: int | None = None
    """The HTTP status (default: the code's documented one)."""
    start: float = attrs.field(default=0.0, validator=_SECONDS)
    """Active from this time (seconds since the simulator started)."""
    end: float | None = attrs.field(default=None, validator=_OPTIONAL_SECONDS)
    """Active until this time (``None``: for ever)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


@attrs.frozen(kw_only=True)
class Outage(_Scope):
    """Every matching request fails for ``duration`` seconds from ``start``.

    Unlike a :class:`Fault`, an outage with no ``path`` hits the token endpoint too.
    """

    start: float = attrs.field(validator=_SECONDS)
    """When it starts (seconds since the simulator started)."""
    duration: float = attrs.field(validator=_SECONDS)
    """How long it lasts."""
    code: str | None = None
    """What to answer (default: the simulator's ``outage_code``)."""
    status: int | None = None
    """The HTTP status (default: the code's documented one)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.start + self.duration

    def matches(self, request: SimRequest, *, is_auth: bool) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        return self.path is None or fnmatch.fnmatchcase(request.path, self.path)


@attrs.frozen(kw_only=True)
class Slowness(_Scope):
    """Delay a fraction of matching responses by ``delay`` seconds (on the clock)."""

    delay: float = attrs.field(validator=_SECONDS)
    """Seconds added before the answer."""
    rate: float = attrs.field(default=1.0, validator=_PROBABILITY)
    """Probability per matching request."""
    start: float = attrs.field(default=0.0, validator=_SECONDS)
    """Active from this time."""
    end: float | None = attrs.field(default=None, validator=_OPTIONAL_SECONDS)
    """Active until this time (``None``: for ever)."""

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


@attrs.frozen(kw_only=True)
class RateLimit(_Scope):
    """At most ``limit`` matching requests per client in each fixed ``window``.

    Windows are aligned on the simulator's start (0-60 s, 60-120 s, ...); a request
    over the limit is answered by the simulator's rate-limit rendering and does not
    count. ``path=None`` covers resource paths only, as for faults.
    """

    limit: int = attrs.field(validator=number(minimum=0, integer=True))
    """Requests allowed per window."""
    window: float = attrs.field(default=60.0, validator=number(minimum=0.0, exclusive_minimum=True))
    """The window, in seconds."""
    name: str = ""
    """A label (``"query"``, ``"control"``, ``"token"``)."""


@attrs.frozen(kw_only=True)
class LimitState:
    """Where a client stands against one :class:`RateLimit` after a request."""

    rule: RateLimit
    """The rule."""
    remaining: int
    """Requests left in this window."""
    reset_at: float
    """Wall-clock (Unix) time the window ends, on the simulator's epoch."""
    retry_after: float
    """Seconds until the window ends."""
    exceeded: bool
    """Whether this request was over the limit."""


def _faults(value: Mapping[str, float] | Iterable[Fault]) -> tuple[Fault, ...]:
    if isinstance(value, Mapping):
        return tuple(Fault(code=str(code), rate=rate) for code, rate in value.items())
    return tuple(value)


def _outages(value: Iterable[Outage]) -> tuple[Outage, ...]:
    return tuple(value)


def _slowness(value: Iterable[Slowness]) -> tuple[Slowness, ...]:
    return tuple(value)


def _optional_limits(value: Iterable[RateLimit] | None) -> tuple[RateLimit, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class FaultPlan:
    """What a simulator does wrong, and when.

    Example::

        FaultPlan(
            errors={"9001": 0.2, "5001": 0.05},          # 20% internal errors, 5% 429s
            outages=[Outage(start=30, duration=20)],      # everything fails from t=30 to 50
            slow=[Slowness(delay=2.0, rate=0.1)],         # 10% of answers take 2 s longer
            token_ttl=120,                                # tokens expire after 2 minutes
            seed=7,
        )

    ``rate_limits=None`` keeps the vendor's documented limits; ``()`` turns them off.
    """

    errors: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)
    """Injected errors: a mapping code -> rate, or :class:`Fault` objects."""
    outages: tuple[Outage, ...] = attrs.field(default=(), converter=_outages)
    """Periods when every matching request fails."""
    slow: tuple[Slowness, ...] = attrs.field(default=(), converter=_slowness)
    """Slow responses."""
    token_ttl: float | None = attrs.field(
        default=None, validator=number(minimum=1.0, optional=True)
    )
    """Life of issued tokens in seconds (default: the vendor's), at least 1: tokens
    carry whole-second times and announce a whole-second ``expires_in``, so a shorter
    life would be announced as 0 and be expired when issued."""
    rate_limits: tuple[RateLimit, ...] | None = attrs.field(
        default=None, converter=_optional_limits
    )
    """Rate limits (``None``: the vendor's documented ones)."""
    seed: int = 0
    """Seed of the random draws, so a plan replays identically."""
