"""resilience-turris: the Turris Public API plugin for ``resilience``.

Installing it registers the entry point ``turris`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="turris")`` and
``resilience.standard_pipeline("turris", auth=TurrisToken(...))`` work. The
plugin object :data:`plugin` carries the classifier, the token flow, the preset
and names its simulator
(``resilience_turris.testing``, imported only when a test or the demo calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilience import VendorPlugin

from ._classifier import TURRIS_CODES, TurrisClassifier, rate_limit_reset
from ._preset import TURRIS_PRESET, preset
from ._rate_limits import rate_limits
from ._token import TOKEN_PATH, TurrisToken

__all__ = [
    "TOKEN_PATH",
    "TURRIS_CODES",
    "TURRIS_PRESET",
    "TurrisClassifier",
    "TurrisToken",
    "plugin",
    "preset",
    "rate_limit_reset",
    "rate_limits",
]

__version__ = "0.1.0"

plugin = VendorPlugin(
    name="turris",
    classifier=TurrisClassifier(),
    codes=TURRIS_CODES,
    token_provider=TurrisToken,
    preset=preset,
    simulator="resilience_turris.testing:simulator",
    render_error="resilience_turris.testing:error_response",
    probe="/v1/auth/test-oauth",
    description="Turris Public API: {statusCode, requestId, errorType, errorMessage[]} errors",
)
"""The entry point ``resilience.classifiers:turris``."""

if TYPE_CHECKING:  # the names below moved to resilience_turris.testing
    from .testing import TurrisSimulator as TurrisSimulator
    from .testing import error_response as error_response
    from .testing import render_error as render_error
    from .testing import simulator as simulator

#: Names that moved to :mod:`resilience_turris.testing`, still importable from here.
_MOVED_TO_TESTING = frozenset({"TurrisSimulator", "error_response", "render_error", "simulator"})


def __getattr__(name: str) -> Any:
    # Imported on first use, so building a pipeline never loads the test tooling.
    if name in _MOVED_TO_TESTING:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
