"""Time, injected: every wait and every deadline in the package goes through a Clock.

The real clock sleeps on anyio (so it works under asyncio and trio); tests and
benchmarks use :class:`VirtualClock`, whose sleeps return at once and move time on.
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time and of waiting."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a zero or negative wait is one cancellation checkpoint)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await anyio.sleep(seconds)
        else:
            await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return "SystemClock()"


@attrs.define(eq=False)
class VirtualClock:
    """A clock for tests: ``sleep`` returns at once and moves time on.

    Every sleep asked for is recorded in :attr:`sleeps`; :meth:`advance` moves time
    by hand (to expire tokens, half-open breakers, or jump hours ahead).

    It is not a discrete-event scheduler: concurrent sleeps each move the shared
    time on by their own length, one after the other. Sequential scenarios read
    exactly as in real time; for many concurrent calls, assert on :attr:`sleeps`
    (and the reports' ``delays``) rather than on :meth:`now`.
    """

    start: float = 0.0
    """The time :meth:`now` reports before anything sleeps."""
    sleeps: list[float] = attrs.field(factory=list, init=False)
    """Every sleep asked for, in order, in seconds."""
    _now: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._now = self.start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError("cannot sleep NaN seconds")
        self.sleeps.append(seconds)
        if seconds > 0:
            self._now += seconds
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` without recording a sleep."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._now += seconds


SYSTEM_CLOCK = SystemClock()
