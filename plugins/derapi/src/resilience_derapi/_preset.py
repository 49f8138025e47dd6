"""The Derapi preset: what Derapi's docs (and their silences) call for.

Layers, outermost first:

* ``Timeout(total=120)``: room for a 60 s server-requested wait and the attempt after it;
* ``PartialFailureSplitter()``: a list with failed backends delivers what worked,
  re-asks each transiently failed backend alone (``vendor=`` filter) for up to 3
  rounds, with the same backoff as ``Retry``, and never re-asks a backend that
  rejected the vendor credentials;
* ``Retry``: 4 attempts, full-jitter exponential backoff from 1 s, capped at 30 s;
  ``Retry-After`` (Derapi documents no rate-limit headers, but a 429 may carry
  it) honoured up to 60 s; Derapi Internal Error is retried at most twice, and
  only for idempotent requests (the classifier's rule);
* ``CircuitBreaker``: opens at 50% failures over 30 s once 20 calls were seen, so
  one caller's retries cannot trip it, or at once on 10 failures in a row (a
  total outage); it breaks for 1 s at first, then a tenth of the outage's age up
  to 30 s; calls that meet it open are held until a probe succeeds, then released
  in a ramp; it also keys per-backend circuits (``derapi:solis``) for the splitter;
* ``AuthRefresh(auth)`` when a token provider is given (see
  :func:`~resilience_derapi.token_provider`);
* ``Timeout(attempt=10)``.

List pages are read whole to find failed backends, up to the pipeline's
``max_body_bytes`` (16 MiB; ``preset(max_body_bytes=...)`` changes it); a larger page
is a ``PermanentError`` with code ``body_too_large``, never a silent success.
"""

from __future__ import annotations

from typing import Any

import attrs

from resilience import (
    CircuitBreaker,
    Clock,
    ExponentialBackoff,
    PartialFailureSplitter,
    Pipeline,
    PresetSettings,
    TokenProvider,
)

from ._classifier import DerapiClassifier

__all__ = ["DERAPI_PRESET", "preset"]

DERAPI_PRESET = PresetSettings(
    total_timeout=120.0,
    attempt_timeout=10.0,
    max_attempts=4,
    backoff=ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="full"),
    retry_max_delay=60.0,
    breaker=CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=20,
        window=30.0,
        consecutive_failures=10,
        break_duration=1.0,
        max_break_duration=30.0,
        break_growth=0.1,
    ),
    splitter=PartialFailureSplitter(max_rounds=3),
)
"""The settings behind :func:`preset`; ``standard_pipeline`` overrides apply on top."""


def preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The Derapi pipeline (see the module docstring).

    ``overrides`` as for :func:`resilience.standard_pipeline` (``max_attempts=``,
    ``backoff=``, ``splitter=None``, ``breaker=None``, ``hooks=``, ...). A splitter
    without its own backoff waits as ``Retry`` does.
    """
    settings, options = DERAPI_PRESET.with_overrides(overrides)
    splitter = settings.splitter
    if isinstance(splitter, PartialFailureSplitter) and splitter.backoff is None:
        max_delay = (
            splitter.max_delay if splitter.max_delay is not None else settings.retry_max_delay
        )
        splitter = attrs.evolve(splitter, backoff=settings.backoff, max_delay=max_delay)
        settings = attrs.evolve(settings, splitter=splitter)
    return settings.build(DerapiClassifier(), auth=auth, clock=clock, **options)
