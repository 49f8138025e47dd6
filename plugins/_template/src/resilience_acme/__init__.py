"""resilience-acme: the Acme API plugin for ``resilience`` (the plugin template).

TODO(vendor): say which API this is, and link its error and auth pages.

The simulator lives in ``resilience_acme.testing`` (test tooling): the plugin object
names it as a string, so building a pipeline never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilience import VendorPlugin

from ._classifier import ACME_CODES, AcmeClassifier
from ._preset import ACME_PRESET, preset
from ._token import AcmeToken

__all__ = [
    "ACME_CODES",
    "ACME_PRESET",
    "AcmeClassifier",
    "AcmeToken",
    "plugin",
    "preset",
]

__version__ = "0.1.0"  # the one place: pyproject.toml reads it

plugin = VendorPlugin(
    name="acme",
    classifier=AcmeClassifier(),
    codes=ACME_CODES,
    token_provider=AcmeToken,
    preset=preset,
    simulator="resilience_acme.testing:simulator",
    render_error="resilience_acme.testing:error_response",
    probe="/v1/widgets",
    description="Acme API (template)",
)
"""The entry point ``resilience.classifiers:acme``."""

if TYPE_CHECKING:  # the names below moved to resilience_acme.testing
    from .testing import AcmeSimulator as AcmeSimulator
    from .testing import error_response as error_response
    from .testing import render_error as render_error
    from .testing import simulator as simulator

#: Names that moved to :mod:`resilience_acme.testing`, still importable from here.
_MOVED_TO_TESTING = frozenset({"AcmeSimulator", "error_response", "render_error", "simulator"})


def __getattr__(name: str) -> Any:
    # Imported on first use, so building a pipeline never loads the test tooling.
    if name in _MOVED_TO_TESTING:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
