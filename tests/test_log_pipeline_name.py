"""Which pipeline wrote a log record (``record.resilience_pipeline``), without a
context variable set on every call.

A call of built-in layers runs in the caller's task, so a record finds its
pipeline on the stack; a pipeline with a layer that may run work in tasks of its
own (a layer of your own) also names itself in the context, for those tasks.
"""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    Outcome,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Timeout,
)
from resilience._telemetry_names import LOG_ATTRIBUTE
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)


def flaky() -> httpx.MockTransport:
    """503 on odd requests, 200 on even ones."""
    count = 0

    def app(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(503 if count % 2 else 200)

    return httpx.MockTransport(app)


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resilience" and "retry" in r.getMessage()]


async def test_built_in_layers_name_their_records_from_the_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layers = [
        Timeout(total=30.0),
        Retry(backoff=ZERO, budget=None),
        CircuitBreaker(failure_ratio=1.0),
        AuthRefresh(StaticToken("t0ken")),
        Timeout(attempt=10.0),
    ]
    pipeline = Pipeline(layers, name="edge", telemetry=False)
    transport = ResilientTransport(pipeline, inner=flaky())
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        response = await transport.handle_async_request(httpx.Request("GET", URL))
        logging.getLogger("resilience").warning("outside any call")
    assert response.status_code == 200
    (retry,) = retry_records(caplog)
    assert getattr(retry, LOG_ATTRIBUTE) == "edge"
    assert getattr(caplog.records[-1], LOG_ATTRIBUTE) is None


async def test_a_call_inside_a_call_names_the_inner_pipeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The outer pipeline's transport is the inner pipeline: each retry record
    # names the pipeline whose Retry wrote it, the innermost call on the stack.
    inner = ResilientTransport(
        Pipeline([Retry(backoff=ZERO, budget=None)], name="inner", telemetry=False),
        inner=flaky(),
    )
    outer = ResilientTransport(
        Pipeline(
            [Retry(backoff=ZERO, budget=None)],
            name="outer",
            telemetry=False,
            raise_on_failure=False,
        ),
        inner=inner,
    )
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        response = await outer.handle_async_request(httpx.Request("GET", URL))
    assert response.status_code == 200
    assert [getattr(r, LOG_ATTRIBUTE) for r in retry_records(caplog)] == ["inner"]


class InATask:
    """A layer of your own that sends the rest of the call from a task it starts."""

    def bind(self, env: object) -> object:
        async def handler(request: httpx.Request, call: object, call_next: object) -> Outcome:
            result: list[Outcome] = []

            async def rest() -> None:
                result.append(await call_next(request, call))  # type: ignore[operator]

            async with anyio.create_task_group() as group:
                group.start_soon(rest)
            return result[0]

        return handler


async def test_records_from_a_task_a_layer_starts_still_name_the_pipeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = Pipeline(
        [InATask(), Retry(backoff=ZERO, budget=None)],
        name="tasks",
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=flaky())
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        response = await transport.handle_async_request(httpx.Request("GET", URL))
    assert response.status_code == 200
    (retry,) = retry_records(caplog)
    assert getattr(retry, LOG_ATTRIBUTE) == "tasks"


async def test_a_call_inside_a_call_of_a_pipeline_that_names_its_tasks_names_the_inner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The outer pipeline has a layer of its own, so it puts its name in the context;
    # the inner call (built-in layers) runs inside it, and its records still name
    # the inner pipeline: the call on the stack comes before the context.
    inner = ResilientTransport(
        Pipeline([Retry(backoff=ZERO, budget=None)], name="inner", telemetry=False),
        inner=flaky(),
    )
    outer = ResilientTransport(Pipeline([InATask()], name="outer", telemetry=False), inner=inner)
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        response = await outer.handle_async_request(httpx.Request("GET", URL))
    assert response.status_code == 200
    assert [getattr(r, LOG_ATTRIBUTE) for r in retry_records(caplog)] == ["inner"]
