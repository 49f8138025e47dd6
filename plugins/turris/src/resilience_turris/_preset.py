"""The Turris preset: what the Turris error-handling and rate-limit guides recommend.

* retry 429, 500 and 503 with exponential backoff (4 attempts, waits up to 30 s
  with full jitter);
* ``X-RateLimit-Reset`` honoured up to 60 s (Turris's windows are a minute);
* only GET, HEAD and OPTIONS are replayed freely: POST, PUT, PATCH and DELETE are
  retried only when the request carries an ``Idempotency-Key`` (or
  ``X-Idempotency-Key``) header, which Turris accepts;
* tokens (60 minutes) are renewed 5 minutes before expiry, and once on
  ``unauthorized``; a second rejection is an AuthenticationError;
* a circuit breaker that judges a 50% failure ratio over 60 s once 20 calls
  were seen, opens at once on 10 failures in a row (a total outage), and breaks
  for 1 s at first, then a tenth of the outage's age up to 30 s; calls that meet
  it open are held until a probe succeeds, then released in a ramp;
* 10 s per attempt, 120 s per call (room for one full rate-limit window).
* the documented rate limits, by default (60 writes a minute (GETs unlimited); see
  ``rate_limits``), just inside the total timeout: a call waits for its slot (up
  to 60 s) rather than draw a 429. They are kept per host; key them by client id
  with ``rate_limits=rate_limits("my-client-id")``, or turn them off with
  ``rate_limits=()``. ``store=RedisStore(...)`` shares them, the token, the
  retry budget and the breaker across a fleet.
"""

from __future__ import annotations

from typing import Any

from resilience import (
    CircuitBreaker,
    Clock,
    ExponentialBackoff,
    Pipeline,
    PresetSettings,
    TokenProvider,
)

from ._classifier import TurrisClassifier
from ._rate_limits import rate_limits

__all__ = ["TURRIS_PRESET", "preset"]

TURRIS_PRESET = PresetSettings(
    total_timeout=120.0,
    attempt_timeout=10.0,
    max_attempts=4,
    backoff=ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="full"),
    retry_max_delay=60.0,
    idempotent_methods=frozenset({"GET", "HEAD", "OPTIONS"}),
    breaker=CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=20,
        window=60.0,
        consecutive_failures=10,
        break_duration=1.0,
        max_break_duration=30.0,
        break_growth=0.1,
    ),
    rate_limits=rate_limits(),
    auth_skew=300.0,
)
"""The settings behind :func:`preset`; ``standard_pipeline`` overrides apply on top."""


def preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The Turris pipeline (see the module docstring); ``overrides`` as for
    :func:`resilience.standard_pipeline` (``max_attempts=``, ``breaker=None``, ...)."""
    return TURRIS_PRESET.build(TurrisClassifier(), auth=auth, clock=clock, **overrides)
