"""The Fallback layer: answer a call that failed in a way the user chose.

It belongs outermost, above ``Timeout(total=...)``: it then sees every way a call
can fail, the deadline included (the total timeout ends the call with a
``RetriesExhausted`` whose ``report.gave_up`` is ``"deadline"``), and the user's
function runs outside that deadline, so a slow cache lookup does not turn an
answer into a timeout. Below the total timeout it would miss the deadline's
failure, and its function would be cut by it.

Layers hand failures up as outcomes; only the pipeline, at the top, turns one into
a typed error. So for an outcome that is not an answer (not ACCEPT nor SPLIT) this
layer builds the error the pipeline would raise (an open breaker's
``CircuitOpenError`` is already in the outcome; otherwise the same
``errors._from_verdict`` the pipeline uses, with the body read the same bounded
way) and tests it; an exception raised by a layer below is tested as it is. A
failure it does not select travels on unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import attrs
import httpx

from . import errors
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._layer_events import FallbackUsed
from ._verdict import Action, Verdict
from .errors import ConfigurationError, ResilienceError

__all__ = ["Fallback"]

FallbackFunction = Callable[
    [httpx.Request, Exception], "httpx.Response | Awaitable[httpx.Response]"
]
"""``fallback(request, error) -> httpx.Response`` (or an ``async def`` one)."""

_ACCEPT = Action.ACCEPT
_SPLIT = Action.SPLIT


def _name(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or type(function).__name__)


def _classes(value: Any) -> tuple[type[Exception], ...]:
    found = (value,) if isinstance(value, type) else value
    if isinstance(found, (str, bytes)) or not isinstance(found, Collection):
        raise ConfigurationError(
            f"Fallback: on must be an exception class or a tuple of them, got {value!r}"
        )
    found = tuple(found)
    for kind in found:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise ConfigurationError(
                f"Fallback: on must hold exception classes (Exception subclasses), got {kind!r}"
            )
    return found


def _codes(value: Any) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise ConfigurationError(
            f"Fallback: codes must be a collection of problem codes, got {value!r}"
        )
    for code in value:
        if not isinstance(code, str):
            raise ConfigurationError(
                f"Fallback: codes must hold strings (problem codes), got {code!r}"
            )
    return frozenset(value)


def _callable(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None and attribute.name == "when":
        return
    if not callable(value):
        raise ConfigurationError(
            f"Fallback: {attribute.name} must be callable, got {type(value).__name__}"
        )


@attrs.frozen
class Fallback:
    """Answers a selected failure with what ``function(request, error)`` returns.

    Select failures by class (``on=(CircuitOpenError, RetriesExhausted)``), by
    problem code (``codes={"9001"}``: the ``problem.code`` of the error, a FAIL's
    vendor code, say), and/or with a predicate (``when=lambda error: ...``); a
    failure that any of them selects is answered. ``function`` may be sync or
    ``async def``; it gets the caller's request and the typed error the call would
    have raised (its ``.report`` and ``.response`` filled in) and returns an
    ``httpx.Response``. The failed attempt's response is closed first.

    The call then returns that response; its report's ``fallback`` names the error
    class that was replaced, and a :class:`~resilience.FallbackUsed` event goes to
    hooks and telemetry. An exception the function raises reaches the caller (with
    the replaced error as its context). Put this layer outermost.
    """

    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    function: FallbackFunction = attrs.field(validator=_callable)
    """``fallback(request, error) -> httpx.Response``, sync or async."""
    on: tuple[type[Exception], ...] = attrs.field(default=(), converter=_classes, kw_only=True)
    """Error classes answered (a failure that is an instance of one)."""
    codes: frozenset[str] = attrs.field(default=frozenset(), converter=_codes, kw_only=True)
    """Problem codes answered (``error.problem.code``)."""
    when: Callable[[Exception], bool] | None = attrs.field(
        default=None, validator=_callable, kw_only=True
    )
    """A predicate: ``True`` answers the failure."""

    def __attrs_post_init__(self) -> None:
        if not self.on and not self.codes and self.when is None:
            raise ConfigurationError(
                "Fallback: give on=, codes= or when= to say which failures it answers"
            )

    def selects(self, error: Exception) -> bool:
        """Whether ``error`` is a failure this fallback answers."""
        if self.on and isinstance(error, self.on):
            return True
        if self.codes:
            problem = getattr(error, "problem", None)
            if getattr(problem, "code", None) in self.codes:
                return True
        return self.when is not None and bool(self.when(error))

    def bind(self, env: PipelineEnv) -> _FallbackHandler:
        return _FallbackHandler(self, env)


class _FallbackHandler:
    __slots__ = ("_config", "_env", "_verdict")

    def __init__(self, config: Fallback, env: PipelineEnv) -> None:
        self._config = config
        self._env = env
        self._verdict = Verdict(_ACCEPT, breaker_failure=False)

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        try:
            outcome = await call_next(request, call)
        except Exception as exc:
            if not self._config.selects(exc):
                raise
            if isinstance(exc, ResilienceError):
                exc.report = call.report
            return await self._answer(request, call, exc)
        action = outcome.verdict.action
        if action is _ACCEPT or action is _SPLIT:
            return outcome
        error = await self._error_of(outcome, call)
        if not self._config.selects(error):
            return outcome  # the pipeline raises (or returns) it as it would have
        # The error holds a read copy of the body, if any: the connection can go.
        await outcome.aclose()
        outcome.error = None
        return await self._answer(request, call, error)

    async def _error_of(self, outcome: Outcome, call: Call) -> ResilienceError:
        """The typed error the pipeline would raise for ``outcome``."""
        error = outcome.error
        if isinstance(error, ResilienceError):
            built = error
        else:
            view = None
            response = outcome.response
            if response is not None:
                view = await outcome.read_view(self._env.body_limit(response.status_code))
                if view is not None:
                    view.request = call.request
            built = errors._from_verdict(outcome.verdict, call.request, view, call.report)
            built.__cause__ = error
        built.report = call.report
        if built._request is None:
            built._request = call.request
        return built

    async def _answer(self, request: httpx.Request, call: Call, error: Exception) -> Outcome:
        config = self._config
        try:
            result = config.function(call.request, error)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            if exc is not error and exc.__context__ is None:
                exc.__context__ = error
            raise
        if not isinstance(result, httpx.Response):
            raise TypeError(
                f"Fallback: {_name(config.function)} returned {type(result).__name__}, "
                "not an httpx.Response"
            )
        response = _fresh(result)
        kind = type(error).__name__
        problem = getattr(error, "problem", None)
        code = getattr(problem, "code", None)
        call.report.fallback = kind
        self._env.emit(
            FallbackUsed(
                method=request.method,
                host=request.url.host,
                error=kind,
                code=code if isinstance(code, str) else None,
            ),
            call,
        )
        return Outcome(request, self._verdict, response=response)


def _fresh(response: httpx.Response) -> httpx.Response:
    """``response``, or a copy when its body was read already (a cached response
    handed out again: a client can read a response only once)."""
    if not response.is_stream_consumed:
        return response
    headers = httpx.Headers(response.headers)
    # .content is decoded: the copy must not claim an encoding nor the old length.
    for name in ("content-encoding", "content-length", "transfer-encoding"):
        headers.pop(name, None)
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=response.content,
        extensions={k: v for k, v in response.extensions.items() if k != "resilience"},
    )
