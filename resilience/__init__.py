"""resilience: async retry-and-resilience middleware for httpx.

Layers (Timeout, PartialFailureSplitter, Retry, CircuitBreaker, AuthRefresh) stack
into a :class:`Pipeline` that plugs into ``httpx.AsyncClient`` through
:class:`ResilientTransport`; a classifier (generic or a vendor plugin) turns each
attempt into a :class:`Verdict` that tells the layers what to do.
"""

from __future__ import annotations

import contextlib

from . import errors
from ._auth import AuthRefresh, OAuth2ClientCredentials, StaticToken, Token, TokenProvider
from ._breaker import CircuitBreaker
from ._classifier import (
    Classifier,
    HttpClassifier,
    available_classifiers,
    parse_retry_after,
)
from ._clock import Clock, SystemClock
from ._events import (
    CircuitStateChanged,
    Event,
    PartialFailureReported,
    RetryScheduled,
    TokenRefreshed,
)
from ._pipeline import Call, CallNext, Handler, Layer, Outcome, Pipeline, PipelineEnv
from ._presets import standard_pipeline
from ._report import CallReport, PartialReport
from ._retry import Backoff, ExponentialBackoff, Retry, RetryBudget
from ._splitter import PartialFailureSplitter
from ._timeout import Timeout
from ._transport import ResilientTransport
from ._verdict import Action, FieldError, Problem, Verdict

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AuthRefresh",
    "Backoff",
    "Call",
    "CallNext",
    "CallReport",
    "CircuitBreaker",
    "CircuitStateChanged",
    "Classifier",
    "Clock",
    "Event",
    "ExponentialBackoff",
    "FieldError",
    "Handler",
    "HttpClassifier",
    "Layer",
    "OAuth2ClientCredentials",
    "Outcome",
    "PartialFailureReported",
    "PartialFailureSplitter",
    "PartialReport",
    "Pipeline",
    "PipelineEnv",
    "Problem",
    "ResilientTransport",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "StaticToken",
    "SystemClock",
    "Timeout",
    "Token",
    "TokenProvider",
    "TokenRefreshed",
    "Verdict",
    "available_classifiers",
    "errors",
    "parse_retry_after",
    "standard_pipeline",
]


def _set_public_module() -> None:
    # Reprs and docs say ``resilience.Pipeline``, not the private module's name.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("resilience._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "resilience"


_set_public_module()
