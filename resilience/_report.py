"""The per-call report: what happened during one logical call.

It is found in ``response.extensions["resilience"]`` and on every error as
``.report``. Layers fill it in while the call runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._verdict import Verdict

__all__ = ["CallReport", "PartialReport"]


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
    """Seconds slept before each retry, in order."""
    verdicts: list[Verdict] = attrs.field(factory=list)
    """The verdict of each attempt, in order."""
    partial: PartialReport | None = None
    """For a split response: the parts that still failed."""
    gave_up: str | None = None
    """Why the call stopped retrying, when it did (``"max_attempts"``, ``"deadline"``,
    ``"budget"``, ``"not_idempotent"``, ``"body_not_replayable"``, ``"circuit_open"``)."""

    @property
    def retries(self) -> int:
        """How many retries were scheduled (the number of delays)."""
        return len(self.delays)
