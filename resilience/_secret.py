"""Secret: a string that never shows itself in a repr, a str or a log line.

Token providers keep client secrets (and ``StaticToken`` its token) in a
:class:`Secret`, so printing a provider, a layer or a pipeline, or logging one with
``%s`` / ``%r``, prints ``***``. The value comes out only through :meth:`reveal`,
at the one place that sends it.
"""

from __future__ import annotations

import hmac
from typing import Any, final

__all__ = ["Secret"]


@final
class Secret:
    """A string that hides itself: ``repr`` is ``Secret('***')``, ``str`` is ``***``.

    Args:
        value: the secret; a :class:`Secret` is unwrapped, anything else but a
            ``str`` is a :class:`TypeError` (whose message never shows the value).

    Two secrets are equal when their values are (compared in constant time).
    """

    __slots__ = ("_value",)

    _value: str

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, got {type(value).__name__}")
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
