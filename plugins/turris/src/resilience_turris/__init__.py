"""resilience-turris: the Turris Public API plugin for ``resilience``.

Installing it registers the entry point ``turris`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="turris")`` and
``resilience.standard_pipeline("turris", auth=TurrisToken(...))`` work. The
plugin object :data:`plugin` carries the classifier, the token flow, the preset
and the simulator.
"""

from __future__ import annotations

from resilience import VendorPlugin

from ._classifier import TURRIS_CODES, TurrisClassifier, rate_limit_reset
from ._preset import TURRIS_PRESET, preset
from ._simulator import TurrisSimulator, error_response, render_error, simulator
from ._token import TOKEN_PATH, TurrisToken

__all__ = [
    "TOKEN_PATH",
    "TURRIS_CODES",
    "TURRIS_PRESET",
    "TurrisClassifier",
    "TurrisSimulator",
    "TurrisToken",
    "plugin",
    "preset",
    "rate_limit_reset",
    "render_error",
    "simulator",
]

__version__ = "0.1.0"

plugin = VendorPlugin(
    name="turris",
    classifier=TurrisClassifier(),
    codes=TURRIS_CODES,
    token_provider=TurrisToken,
    preset=preset,
    simulator=simulator,
    render_error=error_response,
    probe="/v1/auth/test-oauth",
    description="Turris Public API: {statusCode, requestId, errorType, errorMessage[]} errors",
)
"""The entry point ``resilience.classifiers:turris``."""
