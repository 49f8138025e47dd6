"""The Fallback layer: a user's answer for the failures the user selected."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from resilience import (
    Call,
    CallNext,
    CircuitBreaker,
    ExponentialBackoff,
    Fallback,
    FallbackUsed,
    Outcome,
    Pipeline,
    PipelineEnv,
    ResilientTransport,
    Retry,
    Timeout,
)
from resilience.errors import (
    AuthenticationError,
    CircuitOpenError,
    ConfigurationError,
    PermanentError,
    ResilienceError,
    RetriesExhausted,
)
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


def make(
    inner: httpx.AsyncBaseTransport, *layers: Any, events: list[Any] | None = None, **options: Any
) -> ResilientTransport:
    hooks = [events.append] if events is not None else []
    options.setdefault("clock", VirtualClock())
    pipeline = Pipeline(list(layers), hooks=hooks, telemetry=False, **options)
    return ResilientTransport(pipeline, inner=inner)


async def get(transport: ResilientTransport) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(URL)


class Recorder:
    """A fallback function that records what it was given."""

    def __init__(self, status: int = 200) -> None:
        self.seen: list[tuple[httpx.Request, Exception]] = []
        self.status = status

    async def __call__(self, request: httpx.Request, error: Exception) -> httpx.Response:
        self.seen.append((request, error))
        return httpx.Response(self.status, json={"cached": True})


async def test_retries_exhausted_is_answered_by_the_fallback() -> None:
    """Every attempt 503: the fallback's response is returned, the report says a
    fallback answered, an event goes to hooks, and the 503 was closed."""
    inner = ScriptedTransport([reply(503, json={"error": "down"})])
    fallback = Recorder()
    events: list[Any] = []
    layers = [Fallback(fallback, on=(RetriesExhausted,)), Retry(max_attempts=2, backoff=ZERO)]
    response = await get(make(inner, *layers, events=events))
    assert response.json() == {"cached": True}
    rep = response.extensions["resilience"]
    assert (rep.fallback, rep.attempts) == ("RetriesExhausted", 2)
    assert [type(e) for e in events if isinstance(e, FallbackUsed)] == [FallbackUsed]
    used = next(e for e in events if isinstance(e, FallbackUsed))
    assert (used.method, used.host, used.error, used.code) == (
        "GET",
        "api.test",
        "RetriesExhausted",
        "503",
    )
    request, error = fallback.seen[0]
    assert request.url == URL
    assert isinstance(error, RetriesExhausted)
    assert error.report is rep
    assert error.response is not None
    assert error.response.json() == {"error": "down"}
    assert inner.unclosed() == []


async def test_an_open_breaker_is_answered_by_a_sync_function() -> None:
    """A CircuitOpenError (nothing sent) is answered too, by a plain function."""
    inner = ScriptedTransport([reply(500)])
    breaker = CircuitBreaker(minimum_calls=1, failure_ratio=0.5, break_duration=60.0)
    answers: list[str] = []

    def stale(request: httpx.Request, error: Exception) -> httpx.Response:
        answers.append(type(error).__name__)
        return httpx.Response(203, text="stale")

    transport = make(inner, Fallback(stale, on=CircuitOpenError), breaker)
    with pytest.raises(RetriesExhausted):
        await get(transport)  # the 500 opens the breaker: not selected
    response = await get(transport)
    assert (response.status_code, response.text) == (203, "stale")
    assert response.extensions["resilience"].fallback == "CircuitOpenError"
    assert answers == ["CircuitOpenError"]
    assert len(inner.requests) == 1


async def test_codes_select_failures_by_problem_code() -> None:
    """codes= answers a FAIL with a selected problem code and no other."""
    inner = ScriptedTransport([reply(404), reply(400)])
    transport = make(inner, Fallback(Recorder(), codes={"404"}))
    assert (await get(transport)).json() == {"cached": True}
    with pytest.raises(PermanentError) as caught:
        await get(transport)
    assert caught.value.response is not None
    assert caught.value.response.status_code == 400
    assert caught.value.report.fallback is None


async def test_a_predicate_selects_failures() -> None:
    """when= sees the typed error (its response included) and decides."""
    inner = ScriptedTransport([reply(409, json={"retry": False})])

    def conflict(error: Exception) -> bool:
        return (
            isinstance(error, ResilienceError)
            and error.problem is not None
            and error.problem.status == 409
        )

    response = await get(make(inner, Fallback(Recorder(202), when=conflict)))
    assert response.status_code == 202


async def test_an_unselected_failure_is_raised_unchanged() -> None:
    """A failure nobody selected raises the very error the pipeline raises without
    the layer, its response readable."""
    inner = ScriptedTransport([reply(503, json={"n": 1})])
    fallback = Recorder()
    with pytest.raises(RetriesExhausted) as caught:
        await get(make(inner, Fallback(fallback, on=(CircuitOpenError,)), Retry(max_attempts=1)))
    assert caught.value.response is not None
    assert caught.value.response.json() == {"n": 1}
    assert fallback.seen == []
    assert inner.unclosed() == []


async def test_a_success_is_never_touched() -> None:
    """A 200 goes through as it is; the fallback is not called."""
    inner = ScriptedTransport([reply(200, content="ok")])
    fallback = Recorder()
    response = await get(make(inner, Fallback(fallback, on=ResilienceError)))
    assert response.text == "ok"
    assert fallback.seen == []
    assert response.extensions["resilience"].fallback is None


async def test_the_deadline_is_a_failure_it_can_answer_from_outside() -> None:
    """Outermost, above Timeout(total=...): a deadline that cuts the retries short
    ends in RetriesExhausted (gave_up deadline), which the fallback answers."""
    inner = ScriptedTransport([reply(503, headers={"Retry-After": "30"})])
    layers = [Fallback(Recorder(), on=RetriesExhausted), Timeout(total=5.0), Retry()]
    response = await get(make(inner, *layers))
    rep = response.extensions["resilience"]
    assert (response.status_code, rep.gave_up, rep.fallback) == (
        200,
        "deadline",
        "RetriesExhausted",
    )


class Raising:
    """A layer that raises a typed error of its own (as a token fetch might)."""

    def bind(self, env: PipelineEnv) -> Any:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            raise AuthenticationError("no token")

        return handler


async def test_an_exception_from_a_layer_below_is_answered_when_selected() -> None:
    """An error raised (not returned) by a layer below is tested and answered too,
    with the call's report on it."""
    fallback = Recorder()
    response = await get(
        make(ScriptedTransport([reply(200)]), Fallback(fallback, on=AuthenticationError), Raising())
    )
    assert response.extensions["resilience"].fallback == "AuthenticationError"
    assert fallback.seen[0][1].report is response.extensions["resilience"]  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError):
        await get(
            make(
                ScriptedTransport([reply(200)]), Fallback(fallback, on=CircuitOpenError), Raising()
            )
        )


async def test_a_failing_fallback_raises_its_own_error_with_the_context() -> None:
    """When the fallback itself raises, the caller gets that exception, chained to
    the failure it was answering."""

    async def broken(request: httpx.Request, error: Exception) -> httpx.Response:
        raise LookupError("cache miss")

    inner = ScriptedTransport([reply(503)])
    with pytest.raises(LookupError) as caught:
        await get(make(inner, Fallback(broken, on=RetriesExhausted), Retry(max_attempts=1)))
    assert isinstance(caught.value.__context__, RetriesExhausted)
    assert inner.unclosed() == []


async def test_a_fallback_must_return_a_response() -> None:
    """Returning something else is a TypeError naming the function."""

    def wrong(request: httpx.Request, error: Exception) -> Any:
        return {"cached": True}

    with pytest.raises(TypeError, match="wrong returned dict"):
        await get(
            make(
                ScriptedTransport([reply(503)]),
                Fallback(wrong, on=RetriesExhausted),
                Retry(max_attempts=1),
            )
        )


async def test_one_cached_response_can_answer_many_calls() -> None:
    """The same Response object handed out twice: the second call gets a fresh copy
    of it (a response body can be read only once)."""
    cached = httpx.Response(200, json={"v": 1}, headers={"x-cache": "hit"})

    def answer(request: httpx.Request, error: Exception) -> httpx.Response:
        return cached

    transport = make(
        ScriptedTransport([reply(503)]),
        Fallback(answer, on=RetriesExhausted),
        Retry(max_attempts=1),
    )
    first = await get(transport)
    second = await get(transport)
    assert first.json() == second.json() == {"v": 1}
    assert second.headers["x-cache"] == "hit"
    assert second.extensions["resilience"] is not first.extensions["resilience"]


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((None,), {"on": RetriesExhausted}, "function"),
        ((Recorder(),), {}, "on=, codes= or when="),
        ((Recorder(),), {"on": (RetriesExhausted, "x")}, "on"),
        ((Recorder(),), {"on": BaseException}, "on"),
        ((Recorder(),), {"codes": "404"}, "codes"),
        ((Recorder(),), {"codes": {404}}, "codes"),
        ((Recorder(),), {"when": 3}, "when"),
    ],
)
def test_bad_configuration_names_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    """A bad argument fails at construction, naming it."""
    with pytest.raises(ConfigurationError, match=named):
        Fallback(*args, **kwargs)
