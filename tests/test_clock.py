"""Clocks: the virtual clock for tests and the real one on anyio."""

from __future__ import annotations

import math

import anyio
import pytest

from resilience import Clock, SystemClock
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio


async def test_virtual_sleep_returns_at_once_and_moves_time() -> None:
    """Sleeps are recorded and move virtual time; no real time passes."""
    clock = VirtualClock()
    assert clock.now() == 0.0
    with anyio.fail_after(1):
        await clock.sleep(3600.0)
        await clock.sleep(1.5)
    assert clock.now() == 3601.5
    assert clock.sleeps == [3600.0, 1.5]


async def test_virtual_zero_and_negative_sleeps_are_recorded_but_do_not_move_time() -> None:
    """A zero or negative sleep is recorded; time never goes backwards."""
    clock = VirtualClock(start=10.0)
    await clock.sleep(0.0)
    await clock.sleep(-5.0)
    assert clock.now() == 10.0
    assert clock.sleeps == [0.0, -5.0]


async def test_virtual_nan_sleep_is_refused() -> None:
    """Sleeping NaN seconds is a bug worth an error."""
    with pytest.raises(ValueError, match="NaN"):
        await VirtualClock().sleep(math.nan)


async def test_virtual_sleep_is_a_cancellation_checkpoint() -> None:
    """Even a virtual sleep lets a cancelled scope take effect."""
    clock = VirtualClock()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(1.0)
        pytest.fail("the sleep should have been cancelled")  # pragma: no cover
    assert scope.cancelled_caught


def test_virtual_advance() -> None:
    """``advance`` moves time by hand without recording a sleep; never backwards."""
    clock = VirtualClock(start=5.0)
    clock.advance(2.5)
    assert clock.now() == 7.5
    assert clock.sleeps == []
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="seconds"):
            clock.advance(bad)


def test_clocks_satisfy_the_protocol() -> None:
    """Both clocks are Clocks."""
    assert isinstance(VirtualClock(), Clock)
    assert isinstance(SystemClock(), Clock)
    assert repr(SystemClock()) == "SystemClock()"


async def test_system_clock_zero_sleep_is_one_checkpoint() -> None:
    """SystemClock.sleep(0) does not wait but is a cancellation checkpoint."""
    clock = SystemClock()
    before = clock.now()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(0)
        pytest.fail("sleep(0) should be a checkpoint")  # pragma: no cover
    assert scope.cancelled_caught
    await clock.sleep(-1)
    assert clock.now() - before < 1.0


async def test_system_clock_sleeps_on_anyio(monkeypatch: pytest.MonkeyPatch) -> None:
    """A positive SystemClock sleep is an anyio sleep (so it works under trio too);
    a zero one is not."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    clock = SystemClock()
    await clock.sleep(2.5)
    await clock.sleep(0.0)
    assert asked == [2.5]
