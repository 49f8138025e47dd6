"""Secret: a string that never shows itself in a repr, a str or a log line.

Token providers keep client secrets (and ``StaticToken`` its token) in a
:class:`Secret`, so printing a provider, a layer or a pipeline, or logging one with
``%s`` / ``%r``, prints ``***``. The value comes out only through :meth:`reveal`,
at the one place that sends it.

:func:`scrub_problem` is the other half: a vendor's error body may echo what it was
sent (a client secret, a token); a token flow passes the :class:`Problem` built from
such a body through it before the problem reaches an error, a log or a span.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any, final
from urllib.parse import quote, quote_plus

import attrs

from ._verdict import FieldError, Problem
from .errors import ConfigurationError

__all__ = ["Secret", "scrub_problem"]

#: A credential shorter than this is not looked for in a cut-off text's tail (a
#: 2-character tail matching would withhold half of every vendor message).
_MIN_TAIL = 6
#: How deep ``details`` is walked; anything deeper is dropped, not searched.
_MAX_DEPTH = 8
WITHHELD = "(withheld: it quoted a credential)"
"""What replaces a text that mentioned a credential."""


@final
class Secret:
    """A string that hides itself: ``repr`` is ``Secret('***')``, ``str`` is ``***``.

    Args:
        value: the secret; a :class:`Secret` is unwrapped, anything else but a
            ``str`` is a :class:`~resilience.errors.ConfigurationError` (whose
            message never shows the value).

    Two secrets are equal when their values are (compared in constant time).
    """

    __slots__ = ("_value",)

    _value: str

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise ConfigurationError(f"Secret: value must be a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call it only where the value is sent."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        # f"{secret:>20}" must not fall back to formatting the value.
        return format("***", spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


def _needles(secrets: Iterable[str | Secret | None]) -> tuple[str, ...]:
    """Every form a credential may come back in: as is, URL-encoded, JSON-escaped."""
    found: set[str] = set()
    for item in secrets:
        value = item.reveal() if isinstance(item, Secret) else item
        if not isinstance(value, str) or not value:
            continue
        found.add(value)
        found.add(quote_plus(value))
        found.add(quote(value, safe=""))
        found.add(json.dumps(value)[1:-1])
    return tuple(found)


def mentions(text: str, needles: tuple[str, ...]) -> bool:
    """Whether ``text`` holds a needle, or was cut short (it ends in an ellipsis)
    right after a long enough start of one: a field reader shortened the echo."""
    # Strip exactly one ellipsis: a secret may itself end in dots ("Sx9.…").
    tails = [text[: -len(mark)] for mark in ("…", "...") if text.endswith(mark)]
    for needle in needles:
        if needle in text:
            return True
        for tail in tails:
            for length in range(min(len(needle) - 1, len(tail)), _MIN_TAIL - 1, -1):
                if tail.endswith(needle[:length]):
                    return True
    return False


def scrub_problem(problem: Problem, secrets: Iterable[str | Secret | None]) -> Problem:
    """``problem`` without any text that quotes one of ``secrets``.

    A token endpoint's error body may echo the request (the client secret) and an
    API's may echo the ``Authorization`` header (the token). Every text of the
    problem (``code``, ``title``, ``detail``, ``request_id``, each field error and
    every string anywhere in ``details``, keys included) that contains a secret,
    URL-encoded or JSON-escaped or as is, or that was cut short (an ellipsis)
    after the first characters of one, is replaced by a fixed note; ``details`` deeper than 8
    levels is dropped. The same ``problem`` is returned when nothing matched.
    """
    return scrub_with(problem, _needles(secrets))


def needles_of(secret: str) -> tuple[str, ...]:
    """The forms :func:`scrub_with` looks for one secret in (see :func:`scrub_problem`)."""
    return _needles((secret,))


def scrub_with(problem: Problem, needles: tuple[str, ...]) -> Problem:
    """:func:`scrub_problem` with the needles made already (:func:`needles_of`): a
    layer that scrubs every failed attempt for one token makes them once per token."""
    if not needles:
        return problem
    changes: dict[str, Any] = {}
    for name in ("code", "title", "detail", "request_id"):
        value = getattr(problem, name)
        if isinstance(value, str) and mentions(value, needles):
            changes[name] = WITHHELD
    if problem.errors:
        errors = tuple(_scrub_field_error(error, needles) for error in problem.errors)
        if any(new is not old for new, old in zip(errors, problem.errors, strict=True)):
            changes["errors"] = errors
    if problem.details:
        details = _scrub_value(problem.details, needles, 0)
        if details != problem.details:
            changes["details"] = details
    return attrs.evolve(problem, **changes) if changes else problem


def _scrub_field_error(error: FieldError, needles: tuple[str, ...]) -> FieldError:
    changes = {
        name: WITHHELD
        for name in ("pointer", "field", "detail")
        if isinstance(getattr(error, name), str) and mentions(getattr(error, name), needles)
    }
    return attrs.evolve(error, **changes) if changes else error


def _scrub_value(value: Any, needles: tuple[str, ...], depth: int) -> Any:
    if isinstance(value, str):
        return WITHHELD if mentions(value, needles) else value
    if isinstance(value, Mapping):
        if depth >= _MAX_DEPTH:
            return {}
        return {
            (WITHHELD if isinstance(key, str) and mentions(key, needles) else key): (
                _scrub_value(item, needles, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        kind = list if isinstance(value, list) else tuple
        if depth >= _MAX_DEPTH:
            return kind()
        return kind(_scrub_value(item, needles, depth + 1) for item in value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    # Anything else a classifier put there shows through its repr: search that.
    return WITHHELD if mentions(repr(value), needles) else value
