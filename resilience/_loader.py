"""Plugins by name: the entry-point group ``resilience.classifiers``.

``Pipeline(classifier="tellus")`` and ``standard_pipeline("tellus")`` come here when
they are built, never per call. Each name maps to a target (``"module:attribute"``)
that is imported on first use and kept. The built-in ``"http"`` plugin is a
:class:`~resilience.VendorPlugin` like any other, declared as an entry point too;
it is also listed in :data:`BUILTIN_PLUGINS` so that the default classifier never
reads package metadata (slow to import, and absent from a source checkout), and it
is loaded by the same code as every entry point.

A plugin that fails to import is logged and skipped, as if it were not installed:
one broken distribution never breaks the others.
"""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Mapping
from typing import Any

from ._verdict import Classifier
from .errors import ConfigurationError

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "available_classifiers",
    "load_plugin",
    "resolve_classifier",
]

logger = logging.getLogger("resilience")

ENTRY_POINT_GROUP = "resilience.classifiers"

BUILTIN_PLUGINS: Mapping[str, str] = types.MappingProxyType(
    {"http": "resilience._http_plugin:HTTP_PLUGIN"}
)
"""Plugins that ship with the core, by name, with the same target as their entry
point. An installed entry point of the same name does not replace them."""

_cache: dict[str, Any] = {}


def _entry_points() -> dict[str, str]:
    """Installed entry points of the group, name to target (the first one wins)."""
    # Imported here: it costs more to import than the rest of the package's loader,
    # and only naming a plugin that is not built in needs it.
    from importlib import metadata

    found: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _import_target(target: str) -> Any:
    """The object an entry point's value names: ``module[:attribute.path] [extras]``."""
    module, _, path = target.split("[", 1)[0].partition(":")
    found: Any = importlib.import_module(module.strip())
    for part in path.strip().split("."):
        if part:
            found = getattr(found, part)
    return found


def _load(name: str, target: str) -> Any | None:
    """The object ``target`` names, imported once; ``None`` (and a warning) if it fails."""
    if name in _cache:
        return _cache[name]
    try:
        plugin = _import_target(target)
    except Exception as exc:
        logger.warning(
            "resilience plugin %r (%s) failed to import and was skipped: %s: %s",
            name,
            target,
            type(exc).__name__,
            exc,
        )
        return None
    _cache[name] = plugin
    return plugin


def available_classifiers() -> list[str]:
    """Names of the classifiers installed (built in, or entry points that import), sorted."""
    targets = {**_entry_points(), **BUILTIN_PLUGINS}
    return sorted(name for name, target in targets.items() if _load(name, target) is not None)


def load_plugin(name: str) -> Any:
    """The object registered under ``name`` in the ``resilience.classifiers`` group.

    Raises :class:`LookupError` when none matches (or the one that matches failed
    to import), naming the installed plugins and the closest one to ``name``.
    """
    plugin = _cache.get(name)
    if plugin is not None:
        return plugin
    target = BUILTIN_PLUGINS.get(name)
    if target is None:
        target = _entry_points().get(name)
    plugin = None if target is None else _load(name, target)
    if plugin is None:
        raise LookupError(_not_found(name, failed=target is not None))
    return plugin


def _not_found(name: str, *, failed: bool) -> str:
    import difflib

    names = available_classifiers()
    why = "failed to import (see the log)" if failed else "is not installed"
    by_lower = {known.lower(): known for known in names}
    close = difflib.get_close_matches(name.strip().lower(), by_lower, n=1, cutoff=0.6)
    hint = f" (did you mean {by_lower[close[0]]!r}?)" if close and not failed else ""
    known = ", ".join(repr(n) for n in names)
    return (
        f"classifier {name!r} {why}{hint}; installed classifiers: {known}. "
        "First-party plugins: pip install httpx-resilience-tellus "
        "httpx-resilience-turris httpx-resilience-derapi"
    )


def resolve_classifier(spec: str | Classifier) -> Classifier:
    """A classifier from a name (a plugin, loaded) or a classifier object (as is).

    A plugin's entry point may name a plugin object (its ``classifier`` is used),
    a classifier, a classifier class or a factory (called with no argument), or a
    module with a ``classifier``. An unknown name raises :class:`LookupError` (see
    :func:`load_plugin`); anything without a ``classify()`` method raises
    :class:`~resilience.errors.ConfigurationError` naming ``classifier``.
    """
    if not isinstance(spec, str):
        if not callable(getattr(spec, "classify", None)):
            raise ConfigurationError(
                f"classifier must be a plugin name or an object with a classify() "
                f"method, got {type(spec).__name__}"
            )
        return spec
    plugin = load_plugin(spec)
    classifier = getattr(plugin, "classifier", plugin)
    # A class (whose classify is an unbound function) or a factory: build it.
    if isinstance(classifier, type) or (
        callable(classifier) and not hasattr(classifier, "classify")
    ):
        classifier = classifier()
    if not callable(getattr(classifier, "classify", None)):
        raise ConfigurationError(
            f"classifier {spec!r}: the plugin gives a {type(classifier).__name__}, "
            f"which has no classify() method"
        )
    return classifier  # type: ignore[no-any-return]
