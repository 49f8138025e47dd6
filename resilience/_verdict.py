"""The verdict vocabulary: what a classifier says about one attempt.

Every attempt that reaches the network (or fails on the way) is classified exactly
once into a :class:`Verdict`. The verdict travels back up through the layers with
the response; each layer acts on the actions that concern it. This module sits at
the bottom of the package (beside :mod:`resilience._http`): the errors, the
classifiers and every layer import it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, Protocol, runtime_checkable

import attrs
import httpx

__all__ = ["Action", "Classifier", "FieldError", "Problem", "Verdict", "verdict_fault"]


class Action(enum.Enum):
    """What should happen after an attempt."""

    ACCEPT = "accept"
    """Success: returned to the caller; a breaker records a success."""
    RETRY = "retry"
    """Transient: rate limited, server error, timeout, connection error."""
    REFRESH_AUTH = "refresh_auth"
    """Our credentials expired or were rejected: refresh once, replay once."""
    SPLIT = "split"
    """Partial success: some parts worked, some failed."""
    FAIL = "fail"
    """Permanent: retrying gives the same answer."""

    def __repr__(self) -> str:
        return f"Action.{self.name}"


def _refuse(message: str) -> NoReturn:
    # Imported here: errors.py builds its messages from Verdict and Problem, so it
    # imports this module; only a bad argument needs the error class.
    from .errors import ConfigurationError

    raise ConfigurationError(message)


def _freeze_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _refuse(f"Problem: details must be a mapping, got {type(value).__name__}")
    return dict(value)


@attrs.frozen(kw_only=True)
class FieldError:
    """One field-level error of a request, as a vendor reported it."""

    pointer: str | None = None
    """A JSON Pointer into the request body (RFC 9457 style), if given."""
    field: str | None = None
    """The parameter or field name, if given."""
    detail: str | None = None
    """The vendor's human-readable text for this field."""


def _field_errors(value: Iterable[FieldError]) -> tuple[FieldError, ...]:
    # A function, not ``tuple`` itself: attrs reads a converter's signature, and a
    # builtin's is parsed from text by tokenize, whose first use compiles a regex
    # that costs every program about 5 ms at import.
    return tuple(value)


@attrs.frozen(kw_only=True)
class Problem:
    """A vendor's error, normalised.

    ``code`` is the vendor's canonical machine-readable code as a string: Tellus's
    numeric ``code``, Turris's ``errorType``, Derapi's ``type`` URI, or the HTTP
    status for the generic classifier.
    """

    vendor: str
    """The classifier's vendor name (``"http"`` for the generic classifier)."""
    status: int | None = None
    """The HTTP status, or ``None`` when no response arrived."""
    code: str | None = None
    """The canonical machine-readable code."""
    title: str | None = None
    """A short summary."""
    detail: str | None = None
    """The explanation of this occurrence, if the vendor gave one."""
    request_id: str | None = None
    """The vendor's request id (Turris's ``requestId``), for support tickets."""
    errors: tuple[FieldError, ...] = attrs.field(default=(), converter=_field_errors)
    """Field-level errors."""
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    """The vendor's raw details, as a mapping."""

    def describe(self) -> str:
        """One line naming vendor, status, code and request id (never a body)."""
        parts = [self.vendor]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.title:
            parts.append(repr(_short(self.title)))
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class _NoDetails(dict[str, Any]):
    """The empty, read-only ``details`` of a problem shared between attempts (see
    :func:`shared_problem`): a change meant for one attempt's problem would show in
    every other's, so it is refused. Still a ``dict`` (equal to ``{}``, and
    serialised as one)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("this Problem is shared between attempts: its details are read-only")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


_NO_DETAILS = _NoDetails()


def shared_problem(
    *, vendor: str, status: int | None, code: str | None, title: str | None
) -> Problem:
    """A :class:`Problem` with no details, fit to be shared: its ``details`` refuse
    changes. For verdicts a classifier builds once and hands out for every attempt
    with the same answer (the generic status reading does)."""
    problem = Problem(vendor=vendor, status=status, code=code, title=title)
    # Frozen: only this way; the converter would copy the mapping into a plain dict.
    object.__setattr__(problem, "details", _NO_DETAILS)
    return problem


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _default_breaker_failure(verdict: Verdict) -> bool:
    # A 429 is a healthy server enforcing our quota: opening the circuit on it would
    # fail the calls the quota still allows. Only other RETRY verdicts count.
    if verdict.action is not Action.RETRY:
        return False
    problem = verdict.problem
    return getattr(problem, "status", None) != 429


def _check_action(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Action):
        _refuse(f"Verdict: {attribute.name} must be an Action, got {type(value).__name__}")


def _check_retry_after(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or value != value or value < 0:
        _refuse(f"Verdict: {attribute.name} must be a non-negative number or None, got {value!r}")


@attrs.frozen
class Verdict:
    """The classification of one attempt."""

    action: Action = attrs.field(validator=_check_action)
    """What should happen next."""
    problem: Problem | None = attrs.field(default=None, kw_only=True)
    """The normalised error, when there was one."""
    retry_after: float | None = attrs.field(
        default=None, kw_only=True, validator=_check_retry_after
    )
    """Seconds the server asked us to wait, when it said."""
    breaker_failure: bool = attrs.field(
        default=attrs.Factory(_default_breaker_failure, takes_self=True), kw_only=True
    )
    """Whether a circuit breaker counts this attempt as a failure (default: a RETRY
    whose problem is not an HTTP 429: a rate limit says nothing of the server's health)."""

    @property
    def reason(self) -> str:
        """A short, bounded label for logs and metrics: the problem code or action."""
        if self.problem is not None and self.problem.code is not None:
            return self.problem.code
        return self.action.value


ACCEPT = Verdict(Action.ACCEPT)


def verdict_fault(verdict: object) -> str | None:
    """What makes ``verdict`` unusable by the layers, or ``None`` when it is sound.

    The constructor checks ``action`` and ``retry_after`` but not ``problem`` or
    ``breaker_failure``, and a classifier may hand back anything at all: the
    answer names the type that is wrong, never a value (a value may be a body).
    """
    if not isinstance(verdict, Verdict):
        return f"classify() returned {type(verdict).__name__}, not a Verdict"
    action = verdict.action
    problem = verdict.problem
    flag = verdict.breaker_failure
    wait = verdict.retry_after
    if not isinstance(action, Action):
        wrong, value = "action", action
    elif problem is not None and not isinstance(problem, Problem):
        wrong, value = "problem", problem
    elif not isinstance(flag, bool):
        wrong, value = "breaker_failure", flag
    elif wait is not None and not (isinstance(wait, (int, float)) and wait >= 0):
        wrong, value = "retry_after", wait
    else:
        return None
    return f"classify() returned a malformed Verdict ({wrong} is {type(value).__name__})"


@runtime_checkable
class Classifier(Protocol):
    """Decides what one attempt means.

    Exactly one of ``response`` and ``error`` is set. An error body (status >= 400)
    has always been read, so ``response.json()`` works; a success body has been
    read too unless the classifier sets ``needs_body = False``.
    """

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict: ...
