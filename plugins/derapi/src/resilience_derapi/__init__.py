"""resilience-derapi: the Derapi plugin for ``resilience``.

Installing it registers the entry point ``derapi`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="derapi")`` and
``resilience.standard_pipeline("derapi", auth=resilience_derapi.token_provider(...))``
work. The plugin object :data:`plugin` carries the classifier (which also splits
partial-success lists for the :class:`~resilience.PartialFailureSplitter`), the
token flow, the preset and the simulator.
"""

from __future__ import annotations

from resilience import VendorPlugin

from ._classifier import (
    BACKEND_ERROR_NAMES,
    DERAPI_CODES,
    TYPE_PREFIX,
    DerapiClassifier,
    backend_verdict,
    type_uri,
)
from ._preset import DERAPI_PRESET, preset
from ._simulator import (
    API_VERSION,
    Backend,
    DerapiSimulator,
    Touch,
    error_response,
    render_problem,
    simulator,
)
from ._token import DEFAULT_BASE_URL, TOKEN_PATH, DerapiClientCredentials, token_provider

__all__ = [
    "API_VERSION",
    "BACKEND_ERROR_NAMES",
    "DEFAULT_BASE_URL",
    "DERAPI_CODES",
    "DERAPI_PRESET",
    "TOKEN_PATH",
    "TYPE_PREFIX",
    "Backend",
    "DerapiClassifier",
    "DerapiClientCredentials",
    "DerapiSimulator",
    "Touch",
    "backend_verdict",
    "error_response",
    "plugin",
    "preset",
    "render_problem",
    "simulator",
    "token_provider",
    "type_uri",
]

__version__ = "0.1.0"

plugin = VendorPlugin(
    name="derapi",
    classifier=DerapiClassifier(),
    codes=DERAPI_CODES,
    token_provider=token_provider,
    preset=preset,
    simulator=simulator,
    render_error=error_response,
    probe="/sites",
    description="Derapi (solar, batteries): RFC 9457 problem details, partial-success lists",
)
"""The entry point ``resilience.classifiers:derapi``."""
