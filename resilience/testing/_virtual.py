"""One switch that puts everything built inside a test on virtual time.

Code under test builds its own pipelines (``standard_pipeline("tellus")`` deep in
an application), so a test cannot hand each one ``clock=``. These functions set
the default-clock hook of :mod:`resilience._clock`: a :class:`Pipeline`, token
provider or simulator built without ``clock=`` while the switch is on takes the
switch's :class:`VirtualClock` (one clock, so they all agree on the time). The
clock is read when each object is built; an explicit ``clock=`` always wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._clock import VirtualClock, default_clock, set_default_clock

__all__ = ["is_testing", "set_testing", "virtual_time"]


@contextmanager
def virtual_time(clock: VirtualClock | None = None) -> Iterator[VirtualClock]:
    """Within the block, what is built without ``clock=`` runs on virtual time.

    Yields the clock (by default a new ``VirtualClock(autojump=True)``, which keeps
    one timeline however many calls sleep at once) so that the test can read
    ``now()`` and ``sleeps`` or ``advance()`` it. Blocks nest; on exit the previous
    default comes back.
    """
    chosen = VirtualClock(autojump=True) if clock is None else _checked(clock)
    previous = set_default_clock(chosen)
    try:
        yield chosen
    finally:
        set_default_clock(previous)


def set_testing(on: bool, *, clock: VirtualClock | None = None) -> VirtualClock | None:
    """Switch virtual time on (``True``) or off (``False``) until switched again.

    On, it returns the clock now in use (``clock``, or a new
    ``VirtualClock(autojump=True)``); off, ``None``. Prefer :func:`virtual_time`
    in a fixture, which switches back even when the test fails.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_testing: on must be True or False, got {type(on).__name__}")
    if not on:
        set_default_clock(None)
        return None
    chosen = VirtualClock(autojump=True) if clock is None else _checked(clock)
    set_default_clock(chosen)
    return chosen


def is_testing() -> bool:
    """Whether virtual time is on (the default clock is a :class:`VirtualClock`)."""
    return isinstance(default_clock(), VirtualClock)


def _checked(clock: object) -> VirtualClock:
    if not isinstance(clock, VirtualClock):
        raise TypeError(f"clock must be a VirtualClock, got {type(clock).__name__}")
    return clock
