"""The per-call report: what happened during one logical call.

It is found in ``response.extensions["resilience"]`` and on every error as
``.report``. Layers fill it in while the call runs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs
import httpx

from ._verdict import Verdict

__all__ = ["CallReport", "GaveUp", "PartialReport", "report_of"]


class GaveUp(str, enum.Enum):
    """Why a call stopped retrying (``CallReport.gave_up``).

    A ``str`` enum: each member equals its value (``GaveUp.DEADLINE ==
    "deadline"``) and prints as it, so code comparing ``report.gave_up`` with the
    plain strings keeps working.

    - ``MAX_ATTEMPTS`` (``"max_attempts"``): every attempt ``Retry`` allows was used.
    - ``DEADLINE`` (``"deadline"``): the next wait would end past the total
      deadline (``Timeout(total=...)``), or the time ran out.
    - ``BUDGET`` (``"budget"``): the pipeline's retry budget was spent.
    - ``NOT_IDEMPOTENT`` (``"not_idempotent"``): the method is not idempotent and
      the request carries no idempotency key, so it is never sent twice.
    - ``BODY_NOT_REPLAYABLE`` (``"body_not_replayable"``): the body was a stream
      that cannot be sent again.
    - ``CIRCUIT_OPEN`` (``"circuit_open"``): the breaker below is open and would
      refuse the next attempt (or a held call's hold ended without the backend
      back).
    - ``MAX_ROUNDS`` (``"max_rounds"``): the partial-failure splitter used all its
      rounds with parts still failing.
    """

    MAX_ATTEMPTS = "max_attempts"
    DEADLINE = "deadline"
    BUDGET = "budget"
    NOT_IDEMPOTENT = "not_idempotent"
    BODY_NOT_REPLAYABLE = "body_not_replayable"
    CIRCUIT_OPEN = "circuit_open"
    MAX_ROUNDS = "max_rounds"

    def __str__(self) -> str:
        # The value, in messages and f-strings, on every Python (3.12 changed format()).
        return str(self.value)


@attrs.frozen(kw_only=True)
class PartialReport:
    """What a split response still lacks: per-part failures."""

    failures: Mapping[str, Verdict] = attrs.field(factory=dict)
    """Part key (e.g. a vendor backend name) to the verdict of its last try."""
    recovered: tuple[str, ...] = ()
    """Parts that failed at first and were recovered by narrowed re-requests."""


@attrs.define(eq=False, kw_only=True)
class CallReport:
    """How a logical call went."""

    attempts: int = 0
    """How many attempts were sent (including auth replays and split re-requests)."""
    delays: list[float] = attrs.field(factory=list)
    """Seconds waited before each retry, in order: the backoff slept (or as much of
    it as passed, when a deadline or a cancellation cut it short), or the time a
    call was held for an open circuit (``Retry(hold=...)``; a hold that ended
    without the backend back counts too, and the call then gives up with
    ``GaveUp.CIRCUIT_OPEN``)."""
    verdicts: list[Verdict] = attrs.field(factory=list)
    """The verdict of each attempt, in order."""
    partial: PartialReport | None = None
    """For a split response: the parts that still failed."""
    gave_up: GaveUp | None = None
    """Why the call stopped retrying, when it did (see :class:`GaveUp` for every
    value); equal to the plain string (``report.gave_up == "deadline"``)."""
    hedges: int = 0
    """How many of the attempts were hedges: sent by ``Hedge`` while an earlier
    attempt was still out."""
    fallback: str | None = None
    """When ``Fallback`` answered instead of the call: the class name of the error it
    replaced (``"CircuitOpenError"``)."""

    @property
    def retries(self) -> int:
        """How many retries were scheduled (the number of delays)."""
        return len(self.delays)


def report_of(message: httpx.Response | httpx.Request) -> CallReport:
    """The report of a response a :class:`~resilience.Pipeline` returned, or of the
    call a request is part of.

    The typed way to read ``response.extensions["resilience"]`` (also set on an
    error's ``.response``). A response that did not come through a pipeline (a
    client without ``ResilientTransport``, a response built by hand) has none:
    that is a :class:`LookupError` saying so, rather than a ``None`` every caller
    would have to check.

    A request carries the report of its call from the moment a pipeline starts
    it, and so does every copy a layer sends (a token-bearing copy, a hedge, a
    narrowed re-request): a classifier that needs the call's history (how many
    attempts already failed some way) reads ``report_of(request).verdicts``,
    which hold every earlier attempt's verdict, rather than keeping state of its
    own. The current attempt's verdict is added after ``classify()`` returns.
    """
    if not isinstance(message, (httpx.Response, httpx.Request)):
        raise TypeError(
            f"report_of() takes an httpx.Response or httpx.Request, got {type(message).__name__}"
        )
    report = message.extensions.get("resilience")
    if not isinstance(report, CallReport):
        raise LookupError(
            f"this {type(message).__name__.lower()} did not come through a resilience "
            'Pipeline (its extensions have no "resilience" report); send it with '
            "ResilientTransport or resilience.AsyncClient"
        )
    return report
