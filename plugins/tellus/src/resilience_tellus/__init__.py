"""resilience-tellus: the Tellus Open Platform plugin for ``resilience``.

Installing it registers the entry point ``tellus`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="tellus")`` and
``resilience.standard_pipeline("tellus", auth=TellusToken(...))`` work. The
plugin object :data:`plugin` carries the classifier, the token flow, the preset
and the simulator.
"""

from __future__ import annotations

from resilience import VendorPlugin

from ._classifier import TELLUS_CODES, TellusClassifier
from ._preset import TELLUS_PRESET, preset
from ._simulator import TellusSimulator, error_response, render_error, simulator
from ._token import TOKEN_PATH, TellusToken

__all__ = [
    "TELLUS_CODES",
    "TELLUS_PRESET",
    "TOKEN_PATH",
    "TellusClassifier",
    "TellusSimulator",
    "TellusToken",
    "plugin",
    "preset",
    "render_error",
    "simulator",
]

__version__ = "0.1.0"

plugin = VendorPlugin(
    name="tellus",
    classifier=TellusClassifier(),
    codes=TELLUS_CODES,
    token_provider=TellusToken,
    preset=preset,
    simulator=simulator,
    render_error=error_response,
    probe="/v1/operator/sites",
    description="Tellus Open Platform (EV chargers): {code, message, details} envelopes",
)
"""The entry point ``resilience.classifiers:tellus``."""
