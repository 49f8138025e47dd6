"""resilience: async retry-and-resilience middleware for httpx.

Layers (Timeout, PartialFailureSplitter, Retry, CircuitBreaker, AuthRefresh) stack
into a :class:`Pipeline` that plugs into ``httpx.AsyncClient`` through
:class:`ResilientTransport`; a classifier (generic or a vendor plugin) turns each
attempt into a :class:`Verdict` that tells the layers what to do.
"""

from __future__ import annotations

import contextlib

from . import errors
from ._auth import (
    AuthRefresh,
    OAuth2ClientCredentials,
    StaticToken,
    Token,
    TokenFetchError,
    TokenProvider,
    token_from_response,
)
from ._breaker import Circuit, CircuitBreaker, CircuitRegistry, CircuitState
from ._classifier import (
    Classifier,
    HttpClassifier,
    available_classifiers,
    classify_error,
    classify_status,
    parse_retry_after,
    retry_after_of,
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
from ._plugin import (
    CodeEntry,
    CodeTable,
    ParsedError,
    TableClassifier,
    VendorPlugin,
    jwt_expires_in,
    parse_json_object,
    post_for_token,
)
from ._presets import PresetSettings, standard_pipeline
from ._report import CallReport, PartialReport
from ._retry import Backoff, ExponentialBackoff, Retry, RetryBudget
from ._secret import Secret
from ._splitter import (
    PartialFailureSplitter,
    Split,
    SplittingClassifier,
    merge_json,
    render_json,
)
from ._telemetry import RESEND_COUNT_EXTENSION, request_hook
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
    "Circuit",
    "CircuitBreaker",
    "CircuitRegistry",
    "CircuitState",
    "CircuitStateChanged",
    "Classifier",
    "Clock",
    "CodeEntry",
    "CodeTable",
    "Event",
    "ExponentialBackoff",
    "FieldError",
    "Handler",
    "HttpClassifier",
    "Layer",
    "OAuth2ClientCredentials",
    "Outcome",
    "ParsedError",
    "PartialFailureReported",
    "PartialFailureSplitter",
    "PartialReport",
    "Pipeline",
    "PipelineEnv",
    "PresetSettings",
    "Problem",
    "RESEND_COUNT_EXTENSION",
    "ResilientTransport",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "Secret",
    "Split",
    "SplittingClassifier",
    "StaticToken",
    "SystemClock",
    "TableClassifier",
    "Timeout",
    "Token",
    "TokenFetchError",
    "TokenProvider",
    "TokenRefreshed",
    "VendorPlugin",
    "Verdict",
    "available_classifiers",
    "classify_error",
    "classify_status",
    "errors",
    "jwt_expires_in",
    "merge_json",
    "parse_json_object",
    "parse_retry_after",
    "post_for_token",
    "render_json",
    "request_hook",
    "retry_after_of",
    "standard_pipeline",
    "token_from_response",
]


def _set_public_module() -> None:
    # Reprs and docs say ``resilience.Pipeline``, not the private module's name.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("resilience._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "resilience"


_set_public_module()
