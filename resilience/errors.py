"""The errors ``resilience`` raises.

Exception tree::

    httpx.HTTPError
    └── ResilienceError                 every error raised by a pipeline
        ├── PermanentError              a FAIL verdict: retrying gives the same answer
        ├── RetriesExhausted            RETRY verdicts, and no retry was left (or allowed)
        ├── CircuitOpenError            the breaker is open: nothing was sent
        ├── AuthenticationError         refresh did not help, or the token fetch failed
        ├── PartialFailureError         a strict splitter saw parts that still failed
        └── ConfigurationError          a bad argument (also a ValueError)

Each error that wraps a response is, in addition, an :class:`httpx.HTTPStatusError`
(so ``except httpx.HTTPStatusError`` keeps working) and carries ``.response``, whose
body has been read. Every error carries ``.problem`` (the normalised vendor error,
or ``None``) and ``.report`` (the call's :class:`~resilience.CallReport`).
Messages name the vendor, status, code and request id; never a body or a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx

from ._report import CallReport
from ._verdict import Problem, Verdict

_E = TypeVar("_E", bound="CircuitOpenError")

__all__ = [
    "AuthenticationError",
    "CircuitOpenError",
    "ConfigurationError",
    "PartialFailureError",
    "PermanentError",
    "ResilienceError",
    "RetriesExhausted",
]


class ResilienceError(httpx.HTTPError):
    """Base of every error a pipeline raises."""

    _with_response: ClassVar[type[ResilienceError] | None] = None

    problem: Problem | None
    report: CallReport
    response: httpx.Response | None

    def __new__(cls, *args: Any, response: httpx.Response | None = None, **kwargs: Any) -> Any:
        variant = cls.__dict__.get("_with_response")
        if response is not None and variant is not None:
            cls = variant
        return super().__new__(cls, *args)

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        Exception.__init__(self, message)
        self._request = request
        self.response = response
        self.problem = problem
        self.report = report if report is not None else CallReport()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass of an error that wraps responses (a vendor's own PermanentError,
        # say) needs its own twin, or it would not be an HTTPStatusError.
        inherited = getattr(cls, "_with_response", None)
        if inherited is not None and not issubclass(cls, httpx.HTTPStatusError):
            _status_variant(cls)

    def __reduce__(self) -> Any:
        # A twin is not reachable by name: pickle the public class and pick the twin
        # again on the way back.
        cls = type(self).__dict__.get("_twin_of", type(self))
        return (_rebuild, (cls, self.args, self.__dict__))


def _rebuild(cls: type[ResilienceError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    variant = cls.__dict__.get("_with_response")
    if variant is not None and state.get("response") is not None:
        cls = variant
    err = Exception.__new__(cls, *args)
    err.__dict__.update(state)
    return err


def _status_variant(cls: type[ResilienceError]) -> type[ResilienceError]:
    """Give ``cls`` a twin that is also an :class:`httpx.HTTPStatusError`.

    ``cls(..., response=r)`` then builds the twin, whose name and module are the
    same, so ``except httpx.HTTPStatusError`` catches errors that carry a response.
    """
    variant = type(
        cls.__name__,
        (cls, httpx.HTTPStatusError),
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_twin_of": cls,
        },
    )
    cls._with_response = variant
    return cls


class ConfigurationError(ResilienceError, ValueError):
    """A bad argument, found when a layer or pipeline was built."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@_status_variant
class PermanentError(ResilienceError):
    """The classifier said FAIL: retrying would give the same answer."""


@_status_variant
class RetriesExhausted(ResilienceError):
    """Every attempt was transient and no retry was left, allowed or affordable.

    ``report.gave_up`` says why; :attr:`verdicts` holds every attempt's verdict.
    """

    @property
    def verdicts(self) -> list[Verdict]:
        """The verdict of each attempt, in order."""
        return self.report.verdicts


class CircuitOpenError(ResilienceError):
    """The circuit breaker for :attr:`key` is open; nothing was sent."""

    # It never carries a response, so it has no twin to choose: the C constructor
    # skips ResilienceError.__new__, which costs as much as the rest of building it.
    if TYPE_CHECKING:

        def __new__(cls: type[_E], *args: Any, **kwargs: Any) -> _E: ...

    else:
        __new__ = BaseException.__new__

    def __init__(
        self,
        message: str,
        *,
        key: str,
        retry_after: float,
        request: httpx.Request | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        ResilienceError.__init__(self, message, request=request, problem=problem, report=report)
        self.key = key
        self.retry_after = retry_after


@_status_variant
class AuthenticationError(ResilienceError):
    """Credentials were rejected after a refresh, or a token could not be fetched."""


@_status_variant
class PartialFailureError(ResilienceError):
    """A strict splitter saw parts that still failed; ``.response`` holds what worked."""


def describe_failure(kind: str, problem: Problem | None, extra: str | None = None) -> str:
    """Build an error message from a problem: vendor, status, code, request id."""
    text = kind if problem is None else f"{kind}: {problem.describe()}"
    return text if extra is None else f"{text} ({extra})"
