"""resilience-acme: the Acme API plugin for ``resilience`` (the plugin template).

TODO(vendor): say which API this is, and link its error and auth pages.
"""

from __future__ import annotations

from resilience import VendorPlugin

from ._classifier import ACME_CODES, AcmeClassifier
from ._preset import ACME_PRESET, preset
from ._simulator import AcmeSimulator, error_response, render_error, simulator
from ._token import AcmeToken

__all__ = [
    "ACME_CODES",
    "ACME_PRESET",
    "AcmeClassifier",
    "AcmeSimulator",
    "AcmeToken",
    "plugin",
    "preset",
    "render_error",
    "simulator",
]

plugin = VendorPlugin(
    name="acme",
    classifier=AcmeClassifier(),
    codes=ACME_CODES,
    token_provider=AcmeToken,
    preset=preset,
    simulator=simulator,
    render_error=error_response,
    probe="/v1/widgets",
    description="Acme API (template)",
)
"""The entry point ``resilience.classifiers:acme``."""
