"""attrs validators that fail with a ConfigurationError naming the argument."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .errors import ConfigurationError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _owner(instance: Any) -> str:
    return type(instance).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits_a_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    optional: bool = False,
    integer: bool = False,
) -> Validator:
    """A finite number (or int) within bounds; ``None`` allowed when ``optional``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        kind = "an integer" if integer else "a number"
        ok = (
            (isinstance(value, int) and not isinstance(value, bool))
            if integer
            else _is_number(value)
        )
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must be {kind}"
                f"{' or None' if optional else ''}, got {value!r}"
            )
        if not integer and isinstance(value, int) and not _fits_a_float(value):
            # Times and ratios are computed as floats: 10**400 would overflow later.
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must be a finite number, "
                "got an integer too large for a float"
            )
        if minimum is not None:
            if exclusive_minimum and not value > minimum:
                raise ConfigurationError(
                    f"{_owner(instance)}: {attribute.name} must be > {minimum}, got {value!r}"
                )
            if not exclusive_minimum and not value >= minimum:
                raise ConfigurationError(
                    f"{_owner(instance)}: {attribute.name} must be >= {minimum}, got {value!r}"
                )
        if maximum is not None and not value <= maximum:
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must be <= {maximum}, got {value!r}"
            )

    return check


def one_of(choices: tuple[str, ...]) -> Validator:
    """One of a fixed set of names."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must be one of "
                f"{', '.join(repr(c) for c in choices)}; got {value!r}"
            )

    return check


def instance_of(kind: type | tuple[type, ...], *, optional: bool = False) -> Validator:
    """An instance of ``kind`` (or ``None`` when optional)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must be {names}"
                f"{' or None' if optional else ''}, got {type(value).__name__}"
            )

    return check


def has_method(name: str, *, optional: bool = False) -> Validator:
    """An object with a callable ``name`` attribute."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not callable(getattr(value, name, None)):
            raise ConfigurationError(
                f"{_owner(instance)}: {attribute.name} must have a {name}() method, "
                f"got {type(value).__name__}"
            )

    return check


def method_set(value: Any, owner: str, name: str, *, non_empty: bool = False) -> frozenset[str]:
    """A collection of HTTP method names as an upper-case frozenset (for converters).

    One bare string is refused (``"GET"`` would read as its letters), and an empty
    collection too when ``non_empty``.
    """
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{owner}: {name} must be a collection of method names")
    methods = frozenset(str(method).upper() for method in value)
    if non_empty and not methods:
        raise ConfigurationError(f"{owner}: {name} must name at least one method, or be None")
    return methods
