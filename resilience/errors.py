"""The errors ``resilience`` raises.

Exception tree::

    httpx.HTTPError
    └── ResilienceError                 every error raised by a pipeline
        ├── PermanentError              a FAIL verdict: retrying gives the same answer
        ├── RetriesExhausted            RETRY verdicts, and no retry was left (or allowed)
        ├── CircuitOpenError            the breaker is open: nothing was sent
        ├── ConcurrencyLimitExceeded    too many calls in flight for a key: nothing was sent
        ├── RateLimitExceeded           no slot of the client's rate limit in time: nothing was sent
        ├── AuthenticationError         refresh did not help, or the token fetch failed
        │   └── TokenFetchError         the token endpoint failed, refused or answered badly
        ├── PartialFailureError         a strict splitter saw parts that still failed
        └── ConfigurationError          a bad argument (also a ValueError)

Each error that wraps a response is, in addition, an :class:`httpx.HTTPStatusError`
(so ``except httpx.HTTPStatusError`` keeps working) and carries ``.response``, whose
body has been read. Every error carries ``.problem`` (the normalised vendor error,
or ``None``) and ``.report`` (the call's :class:`~resilience.CallReport`).

``str(error)`` is one line, built when it is shown (raising costs nothing extra)::

    GET https://api.example/v1/sites?key=[redacted]: acme HTTP 429 code=rate_limited
    'Slow down' request_id=req-42; 3 attempts, gave up: max_attempts (every allowed
    attempt was used)

the method and URL (query values redacted, no user or password), the vendor, status,
code, title and request id, then how many attempts were sent and why it stopped.
Never a body or a secret; the traceback's ``RetriesExhausted:`` is the only class name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx

from ._report import CallReport, GaveUp
from ._verdict import Action, Problem, Verdict

_E = TypeVar("_E", bound="CircuitOpenError")

__all__ = [
    "AuthenticationError",
    "CircuitOpenError",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "PartialFailureError",
    "PermanentError",
    "RateLimitExceeded",
    "ResilienceError",
    "RetriesExhausted",
    "TokenFetchError",
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

    def __str__(self) -> str:
        # Built here, not when raised: the request and report are final only once
        # the pipeline hands the error out, and most errors are caught, never shown.
        text = str(self.args[0]) if self.args else ""
        request = self.__dict__.get("_request")
        if isinstance(request, httpx.Request):
            text = f"{request.method} {redact_url(request.url)}: {text}"
        report = self.__dict__.get("report")
        if isinstance(report, CallReport):
            text += _outcome(report)
        return text

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

    ``report.gave_up`` says why (a :class:`~resilience.GaveUp`); :attr:`verdicts`
    holds every attempt's verdict.
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


class ConcurrencyLimitExceeded(ResilienceError):
    """``ConcurrencyLimit`` had no slot for :attr:`key` in time; nothing was sent.

    :attr:`reason` says why: ``"queue_full"`` (``limit`` calls in flight and
    ``max_queued`` waiting), ``"max_wait"`` (it queued for ``max_wait`` seconds) or
    ``"deadline"`` (the call's deadline came first). :attr:`retry_after` is always
    ``None``: a slot frees when a call ends, which nobody can foretell.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        limit: int,
        reason: str,
        request: httpx.Request | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        ResilienceError.__init__(self, message, request=request, problem=problem, report=report)
        self.key = key
        self.limit = limit
        self.reason = reason
        self.retry_after: float | None = None


class RateLimitExceeded(ResilienceError):
    """``RateLimiter`` had no slot for :attr:`key` in time; nothing was sent.

    :attr:`retry_after` is the seconds until the key's next slot frees (if nobody
    else takes it first); :attr:`reason` says why the call did not wait for it:
    ``"max_wait"`` (it was further off than the limiter's ``max_wait``) or
    ``"deadline"`` (it came after the call's deadline). A FAIL: not retried, and
    no breaker failure.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        limiter: str,
        retry_after: float,
        reason: str,
        request: httpx.Request | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        ResilienceError.__init__(self, message, request=request, problem=problem, report=report)
        self.key = key
        self.limiter = limiter
        self.retry_after = retry_after
        self.reason = reason


@_status_variant
class AuthenticationError(ResilienceError):
    """Credentials were rejected after a refresh, or a token could not be fetched."""


class TokenFetchError(AuthenticationError):
    """A token could not be fetched: the endpoint failed, refused, or answered badly.

    :attr:`transient` says whether asking again later may help (a network error,
    429, 5xx); then ``AuthRefresh`` reports the failure as a RETRY, so a Retry
    layer above may try the call again (within its budget). The message names the
    endpoint's host, the status and the error code, never a body, a token or a
    secret, and the error never holds the token request.
    """

    transient: bool
    """Whether asking again later may help."""
    retry_after: float | None
    """Seconds the token endpoint asked to wait (``Retry-After``), when it did."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        request: httpx.Request | None = None,
        problem: Problem | None = None,
        report: CallReport | None = None,
    ) -> None:
        super().__init__(message, request=request, problem=problem, report=report)
        self.transient = transient
        self.retry_after = retry_after


@_status_variant
class PartialFailureError(ResilienceError):
    """A strict splitter saw parts that still failed; ``.response`` holds what worked."""


def describe_failure(kind: str | None, problem: Problem | None, extra: str | None = None) -> str:
    """An error message from a problem: vendor, status, code, title, request id.

    ``kind`` says what failed (``"acme token request"``); leave it ``None`` when the
    error's class says it already. The error adds the method, URL and attempts.
    """
    text = describe_problem(problem) if problem is not None else ""
    if kind:
        text = f"{kind}: {text}" if text else kind
    if extra is not None:
        text = f"{text} ({extra})" if text else extra
    return text or "failed"


def describe_problem(problem: Problem) -> str:
    """``problem.describe()``, less what says nothing: the generic classifier's
    vendor name ``http`` and a code that only repeats the status."""
    text = problem.describe()
    if problem.vendor == "http":
        text = text.removeprefix("http").lstrip()
    if problem.status is not None and problem.code == str(problem.status):
        text = text.replace(f" code={problem.code}", "", 1)
    return text


def _from_verdict(
    verdict: Verdict,
    request: httpx.Request,
    response: httpx.Response | None,
    report: CallReport,
) -> ResilienceError:
    """The error for a call whose last verdict was not ACCEPT (RETRY left over,
    REFRESH_AUTH no layer handled, or FAIL)."""
    problem = verdict.problem
    kind: type[ResilienceError] = PermanentError
    extra: str | None = None
    if verdict.action is Action.RETRY:
        kind = RetriesExhausted
    elif verdict.action is Action.REFRESH_AUTH:
        kind = AuthenticationError
        extra = "credentials rejected"
    if problem is None and response is not None:
        message = describe_failure(f"HTTP {response.status_code}", None, extra)
    else:
        message = describe_failure(None, problem, extra)
    return kind(message, request=request, response=response, problem=problem, report=report)


_MAX_URL = 300

_GAVE_UP: dict[str, str] = {
    GaveUp.MAX_ATTEMPTS: "every allowed attempt was used",
    GaveUp.DEADLINE: "no time was left before the total deadline",
    GaveUp.BUDGET: "the retry budget was spent",
    GaveUp.NOT_IDEMPOTENT: "the method is not idempotent, so it is never sent twice",
    GaveUp.BODY_NOT_REPLAYABLE: "the request body was a stream that cannot be sent again",
    GaveUp.CIRCUIT_OPEN: "the circuit breaker is open",
    GaveUp.MAX_ROUNDS: "the partial-failure splitter ran out of rounds",
}


def _outcome(report: CallReport) -> str:
    parts = []
    if report.attempts:
        parts.append(f"{report.attempts} attempt{'' if report.attempts == 1 else 's'}")
    if report.gave_up:
        why = _GAVE_UP.get(report.gave_up)
        parts.append(f"gave up: {report.gave_up}" + (f" ({why})" if why else ""))
    return "; " + ", ".join(parts) if parts else ""


def redact_url(url: httpx.URL | str) -> str:
    """A URL fit for a message or a log line: no user or password, every query
    value replaced by ``[redacted]`` (the names stay), no fragment, at most 300
    characters."""
    url = httpx.URL(url)
    path = url.raw_path.partition(b"?")[0].decode("ascii", "replace")
    text = path
    if url.is_absolute_url:
        text = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{path}"
    query = url.query.decode("ascii", "replace")
    if query:
        text += "?" + "&".join(_redact_pair(pair) for pair in query.split("&"))
    return text if len(text) <= _MAX_URL else text[: _MAX_URL - 1] + "…"


def _redact_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals:
        # A bare item (``?abc123``) may itself be the secret.
        return "[redacted]" if name else ""
    return f"{name}=[redacted]" if value else f"{name}="
