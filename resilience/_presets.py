"""Presets: ``standard_pipeline(vendor)`` builds what a vendor's docs recommend.

The ``"http"`` preset is the core's own; every other name is looked up among the
installed plugins (entry-point group ``resilience.classifiers``), whose plugin
object carries a ``preset`` callable.
"""

from __future__ import annotations

from typing import Any

from ._auth import AuthRefresh, TokenProvider
from ._breaker import CircuitBreaker
from ._classifier import load_plugin
from ._clock import Clock
from ._pipeline import Pipeline
from ._retry import ExponentialBackoff, Retry
from ._timeout import Timeout

__all__ = ["standard_pipeline"]


def http_preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The generic preset: total and per-attempt timeouts, retries, a breaker, auth."""
    layers: list[Any] = [
        Timeout(total=overrides.pop("total_timeout", 60.0)),
        Retry(
            max_attempts=overrides.pop("max_attempts", 3),
            backoff=overrides.pop("backoff", ExponentialBackoff()),
        ),
        overrides.pop("breaker", CircuitBreaker()),
    ]
    if auth is not None:
        layers.append(AuthRefresh(auth))
    layers.append(Timeout(attempt=overrides.pop("attempt_timeout", 10.0)))
    return Pipeline(layers, classifier="http", clock=clock, **overrides)


def standard_pipeline(
    vendor: str, *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The pipeline a vendor's docs recommend.

    Args:
        vendor: a classifier name: ``"http"`` or an installed plugin's name.
        auth: the token provider (e.g. the plugin's own token flow).
        clock: the clock (``VirtualClock()`` in tests).
        **overrides: preset-specific settings (``max_attempts``, ``total_timeout``,
            ``attempt_timeout``, ``breaker``, ...) and ``Pipeline`` keywords
            (``hooks``, ``raise_on_failure``, ``tracer_provider``, ...).
    """
    if vendor == "http":
        return http_preset(auth=auth, clock=clock, **overrides)
    plugin = load_plugin(vendor)
    preset = getattr(plugin, "preset", None)
    if preset is None:
        raise LookupError(f"plugin {vendor!r} has no preset")
    pipeline = preset(auth=auth, clock=clock, **overrides)
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"plugin {vendor!r} preset returned {type(pipeline).__name__}")
    return pipeline
