"""The Timeout layer: a deadline for the whole call, a limit for each attempt.

``total=`` bounds everything below the layer, sleeps included: it sets the call's
deadline on the pipeline's clock (so Retry never schedules a wait that cannot
finish, even under a virtual clock). ``attempt=`` bounds each attempt sent below
the layer, wherever the layer sits. Neither opens a cancel scope of its own on the
way down: the engine cuts each attempt at the nearer of the two, with one scope
per attempt (``_pipeline.py``), and every built-in layer that waits (Retry's
backoff and hold, the rate limiter, the concurrency limit, a token fetch) ends
its wait by the deadline. Only when a layer that may wait on its own terms sits
below (a custom layer, Hedge, Fallback, the splitter) does ``total=`` also open a
real-time cancel scope, as it always did. A timed-out attempt is classified (a
timeout is RETRY); a call that runs out of total time ends as
``RetriesExhausted`` with ``report.gave_up == "deadline"``.
"""

from __future__ import annotations

import time

import anyio
import attrs
import httpx

from . import _validate as v
from ._layer import Call, CallNext, Outcome, PipelineEnv
from ._report import GaveUp
from .errors import ConfigurationError

__all__ = ["Timeout"]


@attrs.frozen(kw_only=True)
class Timeout:
    """Deadlines, in seconds: ``total`` for the call, ``attempt`` for each attempt."""

    # Every wait of this layer ends by the call's deadline (see _timeout.py).
    _deadline_aware = True
    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    total: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Seconds the whole call (below this layer) may take, sleeps included."""
    attempt: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Seconds one attempt may take."""

    def __attrs_post_init__(self) -> None:
        if self.total is None and self.attempt is None:
            raise ConfigurationError("Timeout: give total=, attempt=, or both")

    def bind(self, env: PipelineEnv) -> _TimeoutHandler:
        return _TimeoutHandler(self.total, self.attempt, env)


@attrs.define(eq=False, slots=True)
class _TimeoutHandler:
    total: float | None
    attempt: float | None
    env: PipelineEnv
    scoped: bool = True
    """Whether ``total`` needs a cancel scope of its own: the pipeline clears it
    when every layer below ends its waits by the call's deadline (``_pipeline.py``
    reads each layer class's ``_deadline_aware``)."""

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        saved_deadline = call.deadline
        saved_total = call.total_timeout
        saved_cutoff = call.cutoff
        saved_attempt = call.attempt_timeout
        if self.attempt is not None and (saved_attempt is None or self.attempt < saved_attempt):
            call.attempt_timeout = self.attempt
        try:
            if self.total is None:
                return await call_next(request, call)
            clock = self.env.clock
            deadline = clock.now() + self.total
            if saved_deadline is None or deadline < saved_deadline:
                call.deadline = deadline
                call.total_timeout = self.total
            cutoff = time.monotonic() + self.total
            if saved_cutoff is None or cutoff < saved_cutoff:
                call.cutoff = cutoff
            if not self.scoped:
                outcome = await call_next(request, call)
                if (
                    outcome.response is None
                    and call.report.gave_up is None
                    and call.cutoff is not None
                    and time.monotonic() >= call.cutoff
                ):
                    # The engine cut the last attempt at the deadline.
                    call.report.gave_up = GaveUp.DEADLINE
                return outcome
            with anyio.move_on_after(self.total):
                return await call_next(request, call)
            call.report.gave_up = GaveUp.DEADLINE
            error = httpx.TimeoutException(
                f"call exceeded its total timeout of {self.total:g}s", request=request
            )
            return call.classify_unfinished(request, error)
        finally:
            call.deadline = saved_deadline
            call.total_timeout = saved_total
            call.cutoff = saved_cutoff
            call.attempt_timeout = saved_attempt
