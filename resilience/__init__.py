"""resilience: async retry-and-resilience middleware for httpx.

Layers (Timeout, PartialFailureSplitter, Retry, CircuitBreaker, AuthRefresh) stack
into a :class:`Pipeline` that plugs into ``httpx.AsyncClient`` through
:class:`ResilientTransport` (or use :class:`AsyncClient`, which keeps the client's
settings and proxies); a classifier (generic or a vendor plugin) turns each
attempt into a :class:`Verdict` that tells the layers what to do.
"""

from __future__ import annotations

import contextlib

from . import errors
from ._auth import AuthRefresh
from ._breaker import CircuitBreaker
from ._circuit import Circuit, CircuitRegistry, CircuitState
from ._classifier import (
    Classifier,
    HttpClassifier,
    classify_error,
    classify_status,
    parse_retry_after,
    retry_after_of,
    safe_classify,
)
from ._client import AsyncClient
from ._clock import Clock, SystemClock
from ._concurrency import ConcurrencyLimit
from ._events import (
    CallHeld,
    CallReleased,
    CircuitStateChanged,
    ConcurrencyLimitReached,
    Event,
    FallbackUsed,
    HedgeSent,
    PartialFailureReported,
    RateLimited,
    RetryScheduled,
    TokenRefreshed,
)
from ._fallback import Fallback
from ._hedge import Hedge
from ._hold import Hold
from ._http import IDEMPOTENT_METHODS, MAX_HINT_SECONDS, is_idempotent
from ._layer import Call, CallNext, Handler, Layer, Outcome, PipelineEnv
from ._loader import available_classifiers
from ._order import LayerOrderWarning
from ._pipeline import Pipeline
from ._plugin import (
    CodeEntry,
    CodeTable,
    ParsedError,
    TableClassifier,
    VendorPlugin,
    parse_json_object,
)
from ._presets import PresetSettings, standard_pipeline
from ._ratelimit import RateLimiter
from ._redis_store import RedisStore
from ._report import CallReport, GaveUp, PartialReport, report_of
from ._retry import Backoff, ExponentialBackoff, JitterMode, Retry, RetryBudget
from ._secret import Secret, scrub_problem
from ._splitter import (
    PartialFailureSplitter,
    Split,
    SplittingClassifier,
    merge_json,
    render_json,
)
from ._store import MemoryStore, StateStore
from ._telemetry_names import RESEND_COUNT_EXTENSION, request_hook
from ._timeout import Timeout
from ._tokens import (
    OAuth2ClientCredentials,
    StaticToken,
    Token,
    TokenProvider,
    VendorToken,
    jwt_expires_in,
    post_for_token,
    token_from_response,
)
from ._transport import ResilientTransport
from ._verdict import Action, FieldError, Problem, Verdict
from .errors import TokenFetchError

__version__ = "0.1.0"  # the one place: pyproject.toml and `resilience --version` read it

__all__ = [
    "Action",
    "AsyncClient",
    "AuthRefresh",
    "Backoff",
    "Call",
    "CallHeld",
    "CallNext",
    "CallReleased",
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
    "ConcurrencyLimit",
    "ConcurrencyLimitReached",
    "Event",
    "ExponentialBackoff",
    "Fallback",
    "FallbackUsed",
    "FieldError",
    "GaveUp",
    "Handler",
    "Hedge",
    "HedgeSent",
    "Hold",
    "HttpClassifier",
    "IDEMPOTENT_METHODS",
    "JitterMode",
    "Layer",
    "LayerOrderWarning",
    "MAX_HINT_SECONDS",
    "MemoryStore",
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
    "RateLimited",
    "RateLimiter",
    "RedisStore",
    "ResilientTransport",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "Secret",
    "Split",
    "SplittingClassifier",
    "StateStore",
    "StaticToken",
    "SystemClock",
    "TableClassifier",
    "Timeout",
    "Token",
    "TokenFetchError",
    "TokenProvider",
    "TokenRefreshed",
    "VendorPlugin",
    "VendorToken",
    "Verdict",
    "available_classifiers",
    "classify_error",
    "classify_status",
    "errors",
    "is_idempotent",
    "jwt_expires_in",
    "merge_json",
    "parse_json_object",
    "parse_retry_after",
    "post_for_token",
    "render_json",
    "report_of",
    "request_hook",
    "retry_after_of",
    "safe_classify",
    "scrub_problem",
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
