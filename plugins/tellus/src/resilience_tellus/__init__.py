"""resilience-tellus: the Tellus Open Platform plugin for ``resilience``.

Installing it registers the entry point ``tellus`` in ``resilience.classifiers``,
so ``Pipeline([...], classifier="tellus")`` and
``resilience.standard_pipeline("tellus", auth=TellusToken(...))`` work. The
plugin object :data:`plugin` carries the classifier, the token flow, the preset
and names its simulator
(``resilience_tellus.testing``, imported only when a test or the demo calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilience import VendorPlugin

from ._classifier import TELLUS_CODES, TellusClassifier
from ._preset import TELLUS_PRESET, preset
from ._rate_limits import rate_limits
from ._token import TOKEN_PATH, TellusToken

__all__ = [
    "TELLUS_CODES",
    "TELLUS_PRESET",
    "TOKEN_PATH",
    "TellusClassifier",
    "TellusToken",
    "plugin",
    "preset",
    "rate_limits",
]

__version__ = "0.1.0"

plugin = VendorPlugin(
    name="tellus",
    classifier=TellusClassifier(),
    codes=TELLUS_CODES,
    token_provider=TellusToken,
    preset=preset,
    simulator="resilience_tellus.testing:simulator",
    render_error="resilience_tellus.testing:error_response",
    probe="/v1/operator/sites",
    description="Tellus Open Platform (EV chargers): {code, message, details} envelopes",
)
"""The entry point ``resilience.classifiers:tellus``."""

if TYPE_CHECKING:  # the names below moved to resilience_tellus.testing
    from .testing import TellusSimulator as TellusSimulator
    from .testing import error_response as error_response
    from .testing import render_error as render_error
    from .testing import simulator as simulator

#: Names that moved to :mod:`resilience_tellus.testing`, still importable from here.
_MOVED_TO_TESTING = frozenset({"TellusSimulator", "error_response", "render_error", "simulator"})


def __getattr__(name: str) -> Any:
    # Imported on first use, so building a pipeline never loads the test tooling.
    if name in _MOVED_TO_TESTING:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
