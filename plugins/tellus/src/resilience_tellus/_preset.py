"""The Tellus preset: what the Tellus error and rate-limit guides recommend.

* at most 5 attempts, waits ``min(1 s * 2^n, 30 s)`` plus up to 30% jitter
  (the guide's own retry loop);
* ``details.retry_after_seconds`` honoured up to 60 s (Tellus's rate-limit
  windows are a minute long);
* refresh the token when less than 60 s is left (the authentication guide's
  sample), and once on 2001/2002; a second rejection is an AuthenticationError;
* a circuit breaker that judges a 50% failure ratio over 60 s once 20 calls
  were seen (so one caller's retries cannot trip it), opens at once on 10
  failures in a row (a total outage), and breaks for 1 s at first, then a tenth
  of the outage's age up to 30 s (a short outage costs about a second once the
  server is back; a long one gets a probe every 30 s); calls that meet it open
  are held until a probe succeeds, then released in a ramp;
* 15 s per attempt, 120 s per call (room for one full rate-limit window).
* the documented rate limits, by default (60 queries and 30 control calls a minute, apart; see
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

from ._classifier import TellusClassifier
from ._rate_limits import rate_limits

__all__ = ["TELLUS_PRESET", "preset"]

TELLUS_PRESET = PresetSettings(
    total_timeout=120.0,
    attempt_timeout=15.0,
    max_attempts=5,
    backoff=ExponentialBackoff(
        initial=1.0, multiplier=2.0, max_delay=30.0, jitter="proportional", jitter_ratio=0.3
    ),
    retry_max_delay=60.0,
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
    auth_skew=60.0,
)
"""The settings behind :func:`preset`; ``standard_pipeline`` overrides apply on top."""


def preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The Tellus pipeline (see the module docstring); ``overrides`` as for
    :func:`resilience.standard_pipeline` (``max_attempts=``, ``breaker=None``, ...)."""
    return TELLUS_PRESET.build(TellusClassifier(), auth=auth, clock=clock, **overrides)
