"""The Acme preset: what the vendor's docs recommend, as one PresetSettings value.

TODO(vendor): attempts, backoff and jitter as the vendor's retry guide says; the
longest server hint to honour (at least 60 s); which methods may be replayed
without an idempotency key; the token refresh skew; keep ``minimum_calls=20`` and
the breaker's consecutive-failure trip and growing break.
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

from ._classifier import AcmeClassifier

__all__ = ["ACME_PRESET", "preset"]

ACME_PRESET = PresetSettings(
    total_timeout=60.0,
    attempt_timeout=10.0,
    max_attempts=3,
    backoff=ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="full"),
    retry_max_delay=60.0,
    # A total outage trips it at once (10 failures in a row); the break is 1 s at
    # first, then a tenth of the outage's age up to 30 s, so a short outage costs
    # about a second once the server is back. Calls that meet it open are held
    # (PresetSettings.hold) until a probe succeeds, then released in a ramp.
    breaker=CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=20,
        window=30.0,
        consecutive_failures=10,
        break_duration=1.0,
        max_break_duration=30.0,
        break_growth=0.1,
    ),
    auth_skew=60.0,
)
"""The settings behind :func:`preset`."""


def preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The Acme pipeline; ``overrides`` as for :func:`resilience.standard_pipeline`."""
    return ACME_PRESET.build(AcmeClassifier(), auth=auth, clock=clock, **overrides)
