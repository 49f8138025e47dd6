"""resilience-derapi: the Derapi plugin for ``resilience``.

Installing it registers the entry point ``derapi`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="derapi")`` and
``resilience.standard_pipeline("derapi", auth=resilience_derapi.token_provider(...))``
work. The plugin object :data:`plugin` carries the classifier (which also splits
partial-success lists for the :class:`~resilience.PartialFailureSplitter`), the
token flow, the preset and names its simulator
(``resilience_derapi.testing``, imported only when a test or the demo calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from ._token import DEFAULT_BASE_URL, TOKEN_PATH, DerapiClientCredentials, token_provider

__all__ = [
    "BACKEND_ERROR_NAMES",
    "DEFAULT_BASE_URL",
    "DERAPI_CODES",
    "DERAPI_PRESET",
    "TOKEN_PATH",
    "TYPE_PREFIX",
    "DerapiClassifier",
    "DerapiClientCredentials",
    "backend_verdict",
    "plugin",
    "preset",
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
    simulator="resilience_derapi.testing:simulator",
    render_error="resilience_derapi.testing:error_response",
    probe="/sites",
    description="Derapi (solar, batteries): RFC 9457 problem details, partial-success lists",
)
"""The entry point ``resilience.classifiers:derapi``."""

if TYPE_CHECKING:  # the names below moved to resilience_derapi.testing
    from .testing import API_VERSION as API_VERSION
    from .testing import Backend as Backend
    from .testing import DerapiSimulator as DerapiSimulator
    from .testing import Touch as Touch
    from .testing import error_response as error_response
    from .testing import render_problem as render_problem
    from .testing import simulator as simulator

#: Names that moved to :mod:`resilience_derapi.testing`, still importable from here.
_MOVED_TO_TESTING = frozenset(
    {
        "API_VERSION",
        "Backend",
        "DerapiSimulator",
        "Touch",
        "error_response",
        "render_problem",
        "simulator",
    }
)


def __getattr__(name: str) -> Any:
    # Imported on first use, so building a pipeline never loads the test tooling.
    if name in _MOVED_TO_TESTING:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
