"""Time, injected: every wait and every deadline in the package goes through a Clock.

The real clock sleeps on anyio (so it works under asyncio and trio); tests and
benchmarks use :class:`VirtualClock`, whose sleeps move time on instead of waiting.
What is built without ``clock=`` reads :func:`default_clock` once, when it is built:
the real clock, unless a test switched virtual time on
(:func:`resilience.testing.virtual_time`, which sets the hook; the runtime never
imports the testing package).
"""

from __future__ import annotations

import heapq
import math
import sys
import time
import weakref
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import attrs
from sniffio import current_async_library

from . import _validate as v

__all__ = ["Clock", "SystemClock", "VirtualClock", "default_clock", "set_default_clock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time and of waiting."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a zero or negative wait is one cancellation checkpoint)."""
        ...


async def checkpoint() -> None:
    """Yield to the scheduler and take any pending cancellation, as cheaply as the
    running loop allows (a zero wait, a rejected call: neither may monopolise the
    loop, and each is one cancellation point)."""
    if current_async_library() == "asyncio":
        # What anyio's checkpoint does under asyncio, without its dispatch. asyncio
        # runs this, so it is loaded; ``import resilience`` alone does not load it.
        await sys.modules["asyncio"].sleep(0)
    else:
        await anyio.lowlevel.checkpoint()


def scope_after(seconds: float) -> AbstractContextManager[Any]:
    """A cancel scope that ends its block after ``seconds`` (real time), as
    :func:`anyio.move_on_after`; under trio, trio's own scope, which anyio's wraps
    (the wrapper costs about 2 µs more per scope there, on every limited attempt)."""
    if current_async_library() == "trio":
        return sys.modules["trio"].move_on_after(seconds)  # type: ignore[no-any-return]
    return anyio.move_on_after(seconds)


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await anyio.sleep(seconds)
        else:
            await checkpoint()

    def __repr__(self) -> str:
        return "SystemClock()"


@attrs.define(eq=False)
class VirtualClock:
    """A clock for tests: ``sleep`` moves time on instead of waiting.

    Every sleep asked for is recorded in :attr:`sleeps`; :meth:`advance` moves time
    by hand (to expire tokens, half-open breakers, or jump hours ahead).

    With ``autojump=True`` (as trio's ``MockClock`` with autojump) it keeps true
    time when tasks sleep at once: a sleeping task waits until every task of the
    event loop is blocked, then time jumps to the earliest wake-up and that
    sleeper goes on. Ten concurrent calls that each back off 1 s move it 1 s.

    With ``autojump=False`` (the default) each sleep returns at once and moves the
    shared time on by its own length, one after the other: sequential scenarios
    read exactly as in real time, but ten concurrent 1 s sleeps move it 10 s.
    It stays the default because it needs no event-loop turns per sleep and
    existing tests of concurrent calls assert on its timeline;
    :func:`resilience.testing.virtual_time` hands out autojump clocks.

    Autojump is per event loop: a task blocked on real I/O (a server on another
    thread) counts as blocked, and time may jump while it waits, as with trio's.
    """

    start: float = 0.0
    """The time :meth:`now` reports before anything sleeps."""
    autojump: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    """Keep one timeline for concurrent sleepers (see above)."""
    sleeps: list[float] = attrs.field(factory=list, init=False)
    """Every sleep asked for, in order, in seconds."""
    _now: float = attrs.field(init=False)
    _sleepers: list[_Sleeper] = attrs.field(factory=list, init=False, repr=False)
    _order: int = attrs.field(default=0, init=False, repr=False)
    _woke: anyio.Event | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._now = self.start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError("cannot sleep NaN seconds")
        self.sleeps.append(seconds)
        if not self.autojump or seconds <= 0:
            if seconds > 0:
                self._now += seconds
            await anyio.lowlevel.checkpoint()
            return
        await self._jump_sleep(seconds)

    async def _jump_sleep(self, seconds: float) -> None:
        self._order += 1
        # Ties wake in the order they fell asleep, as a real timer queue does.
        me = _Sleeper(self._now + seconds, self._order)
        heapq.heappush(self._sleepers, me)
        try:
            while True:
                if self._sleepers[0] is me:
                    # The earliest: jump once nothing else can still run.
                    await _all_tasks_blocked()
                    if self._sleepers[0] is me:
                        break
                else:
                    # Not the earliest: wait, blocked, until a sleeper wakes.
                    if self._woke is None:
                        self._woke = anyio.Event()
                    await self._woke.wait()
        except BaseException:
            self._sleepers.remove(me)
            heapq.heapify(self._sleepers)
            self._wake_others()
            raise
        heapq.heappop(self._sleepers)
        if me.wake > self._now:
            self._now = me.wake
        self._wake_others()

    def _wake_others(self) -> None:
        woke, self._woke = self._woke, None
        if woke is not None:
            woke.set()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` without recording a sleep."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._now += seconds


@attrs.define(order=True, slots=True)
class _Sleeper:
    wake: float
    order: int


#: Rounds of the event loop a sleeper waits for the others to block before it
#: gives up looking and jumps anyway (a task that only ever yields, never blocks).
_MAX_ROUNDS = 1000


async def _all_tasks_blocked() -> None:
    """Return once every other task of the running event loop is blocked.

    A task is blocked when it waits on something (a future under asyncio, what
    anyio's ``wait_all_tasks_blocked`` checks; under trio, when it is not in the run
    queue), not when it only yields. Other sleepers looking at the same time count
    as blocked: each would otherwise see the other running and neither would jump.
    After :data:`_MAX_ROUNDS` rounds (under trio, :data:`_BUSY_CAP` real seconds)
    it returns anyway, so a test that polls in a loop (``while not done: await
    checkpoint()``) still sees time move on.
    """
    # Imported here: only an autojump sleeper needs asyncio, and a plain
    # ``import resilience`` should not pay for loading it.
    import asyncio

    try:
        this: Any = asyncio.current_task()
    except RuntimeError:
        this = None
    if this is None:
        await _trio_blocked()
        return
    _looking.add(this)
    try:
        for _ in range(_MAX_ROUNDS):
            await asyncio.sleep(0)
            for task in asyncio.all_tasks():
                if task is this or task in _looking:
                    continue
                waiter = getattr(task, "_fut_waiter", None)
                if waiter is None or waiter.done():
                    break
            else:
                return
    finally:
        _looking.discard(this)


async def _trio_blocked() -> None:
    import trio
    import trio.testing

    # trio knows exactly when every task is blocked; a task that only ever yields
    # would keep it from saying so, hence the (real-time) cap.
    with trio.move_on_after(_BUSY_CAP):
        await trio.testing.wait_all_tasks_blocked()


#: Real seconds an autojump sleeper under trio waits for a task that never blocks.
_BUSY_CAP = 0.05


_looking: weakref.WeakSet[Any] = weakref.WeakSet()
"""The tasks of autojump sleepers looking for the others to block."""


_default_clock: Clock | None = None


def default_clock() -> Clock:
    """The clock a pipeline (or token provider, or simulator) built without
    ``clock=`` uses: the real one, unless a test switched on virtual time
    (:func:`resilience.testing.virtual_time`)."""
    return SYSTEM_CLOCK if _default_clock is None else _default_clock


def set_default_clock(clock: Clock | None) -> Clock | None:
    """Make ``clock`` the default (``None``: the real clock); returns the previous one.

    The hook behind :func:`resilience.testing.set_testing`; the runtime only reads it.
    """
    global _default_clock
    previous, _default_clock = _default_clock, clock
    return previous


SYSTEM_CLOCK = SystemClock()
