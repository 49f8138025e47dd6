"""resilience: async retry-and-resilience middleware for httpx.

Layers (Timeout, PartialFailureSplitter, Retry, CircuitBreaker, AuthRefresh) stack
into a :class:`Pipeline` that plugs into ``httpx.AsyncClient`` through
:class:`ResilientTransport` (or use :class:`AsyncClient`, which keeps the client's
settings and proxies); a classifier (generic or a vendor plugin) turns each
attempt into a :class:`Verdict` that tells the layers what to do.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

# The engine loads with the package: a pipeline, its transport and client, the
# verdict vocabulary, classifiers and errors.
from . import errors
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
from ._http import IDEMPOTENT_METHODS, MAX_HINT_SECONDS, is_idempotent
from ._layer import Call, CallNext, Handler, Layer, Outcome, PipelineEnv
from ._loader import available_classifiers
from ._order import LayerOrderWarning
from ._pipeline import Pipeline
from ._report import CallReport, GaveUp, PartialReport, report_of
from ._telemetry_names import RESEND_COUNT_EXTENSION, request_hook
from ._transport import ResilientTransport
from ._verdict import Action, FieldError, Problem, Verdict
from .errors import TokenFetchError

if TYPE_CHECKING:
    # The layers, their events, token providers, stores, presets and the plugin kit
    # load on first use (``__getattr__`` below): most programs use a few of them,
    # and each one's frozen attrs classes cost import time.
    from ._auth import AuthRefresh
    from ._breaker import CircuitBreaker
    from ._circuit import Circuit, CircuitRegistry, CircuitState
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
    from ._retry import Backoff, ExponentialBackoff, JitterMode, Retry, RetryBudget
    from ._secret import Secret, scrub_problem
    from ._splitter import (
        PartialFailureSplitter,
        Split,
        SplittingClassifier,
        merge_json,
        render_json,
    )
    from ._store import MemoryStore, StateStore, TokenClaim
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
    "TokenClaim",
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


#: The public names that load with their module on first use, by module.
_LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "_auth": ("AuthRefresh",),
    "_breaker": ("CircuitBreaker",),
    "_circuit": ("Circuit", "CircuitRegistry", "CircuitState"),
    "_concurrency": ("ConcurrencyLimit",),
    "_events": (
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
    ),
    "_fallback": ("Fallback",),
    "_hedge": ("Hedge",),
    "_hold": ("Hold",),
    "_plugin": (
        "CodeEntry",
        "CodeTable",
        "ParsedError",
        "TableClassifier",
        "VendorPlugin",
        "parse_json_object",
    ),
    "_presets": ("PresetSettings", "standard_pipeline"),
    "_ratelimit": ("RateLimiter",),
    "_redis_store": ("RedisStore",),
    "_retry": ("Backoff", "ExponentialBackoff", "JitterMode", "Retry", "RetryBudget"),
    "_secret": ("Secret", "scrub_problem"),
    "_splitter": (
        "PartialFailureSplitter",
        "Split",
        "SplittingClassifier",
        "merge_json",
        "render_json",
    ),
    "_store": ("MemoryStore", "StateStore", "TokenClaim"),
    "_timeout": ("Timeout",),
    "_tokens": (
        "OAuth2ClientCredentials",
        "StaticToken",
        "Token",
        "TokenProvider",
        "VendorToken",
        "jwt_expires_in",
        "post_for_token",
        "token_from_response",
    ),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}


def _set_public_module(obj: Any) -> None:
    # Reprs and docs say ``resilience.Pipeline``, not the private module's name.
    if getattr(obj, "__module__", "").startswith("resilience._"):
        with contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = "resilience"


def _load(name: str) -> Any:
    """``resilience.<name>`` for a lazy name: import its module, publish its names."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    for public in _LAZY_MODULES[module_name]:
        value = getattr(module, public)
        _set_public_module(value)
        globals()[public] = value  # later look-ups find it without __getattr__
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if not TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise take any misspelt
    # ``resilience.<name>`` for a lazily loaded one; they see the imports above.
    __getattr__ = _load

for _name in __all__:
    if _name in globals():
        _set_public_module(globals()[_name])
del _name
