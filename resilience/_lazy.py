"""Lazy references: a plugin names its test tooling as ``"module:attribute"``.

A :class:`~resilience.VendorPlugin` is built when its entry point loads, on the
runtime path, but its simulator and error renderer are test tooling (they import
:mod:`resilience.testing`). Given as a string, such a part becomes a
:class:`LazyCallable`: calling it imports the module then, when the demo or the
conformance suite asks, and never when a pipeline is built.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import attrs

from .errors import ConfigurationError

__all__ = ["LazyCallable", "callable_or_lazy", "later"]

_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class LazyCallable:
    """A callable named by ``"module:attribute"``, imported on first call (or :meth:`load`)."""

    __slots__ = ("_resolved", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self._resolved: Callable[..., Any] | None = None

    @property
    def well_formed(self) -> bool:
        """Whether :attr:`target` reads ``"package.module:attribute"``."""
        return _TARGET.match(self.target) is not None

    def load(self) -> Callable[..., Any]:
        """The object the target names (imported once, then kept)."""
        if self._resolved is None:
            module_name, _, path = self.target.partition(":")
            found: Any = importlib.import_module(module_name)
            for part in path.split("."):
                found = getattr(found, part)
            if not callable(found):
                raise TypeError(f"{self.target} is not callable")
            self._resolved = found
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LazyCallable):
            return NotImplemented
        return self.target == other.target

    def __hash__(self) -> int:
        return hash(self.target)

    def __repr__(self) -> str:
        return f"<lazy {self.target}>"


def later(value: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    """attrs converter: a ``"module:attribute"`` string becomes a :class:`LazyCallable`."""
    return LazyCallable(value) if isinstance(value, str) else value


def callable_or_lazy(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: ``None``, a callable, or a well-formed lazy reference."""
    if value is None:
        return
    if isinstance(value, LazyCallable) and not value.well_formed:
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a callable or a "
            f"'module:attribute' string, got {value.target!r}"
        )
    if not callable(value):
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be a callable or a "
            f"'module:attribute' string, got {type(value).__name__}"
        )
