"""Clocks: the virtual clock for tests and the real one on anyio."""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel
import httpx
import pytest

import resilience
from resilience import Clock, Pipeline, Retry, SystemClock
from resilience.errors import ConfigurationError
from resilience.testing import (
    ScriptedTransport,
    VirtualClock,
    is_testing,
    reply,
    set_testing,
    virtual_time,
)

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


# --- autojump: one timeline for concurrent sleepers ------------------------------


async def test_autojump_concurrent_sleeps_keep_true_time() -> None:
    """Ten tasks each sleeping 1 s move an autojump clock 1 s, not 10 s."""
    clock = VirtualClock(autojump=True)
    woke: list[float] = []

    async def nap() -> None:
        await clock.sleep(1.0)
        woke.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(nap)
    assert clock.now() == 1.0
    assert woke == [1.0] * 10
    assert clock.sleeps == [1.0] * 10


async def test_autojump_wakes_sleepers_in_order_of_their_wake_up() -> None:
    """Sleepers wake at the earliest wake-up first, each seeing its own time."""
    clock = VirtualClock(start=100.0, autojump=True)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(nap, "slow", 3.0)
        tg.start_soon(nap, "fast", 1.0)
    assert woke == [("fast", 101.0), ("fast", 102.0), ("slow", 103.0), ("slow", 106.0)]


async def test_autojump_waits_for_a_task_that_is_still_running() -> None:
    """Time does not jump while another task still has work to do before it sleeps."""
    clock = VirtualClock(autojump=True)
    seen: list[float] = []

    async def busy_then_sleep() -> None:
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        seen.append(clock.now())
        await clock.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 2.0)
        tg.start_soon(busy_then_sleep)
    assert seen == [0.0]
    assert clock.now() == 2.0


async def test_autojump_sequential_sleeps_read_as_in_real_time() -> None:
    """A lone task's sleeps add up exactly as with the instant clock."""
    clock = VirtualClock(autojump=True)
    await clock.sleep(1.5)
    await clock.sleep(0.0)
    await clock.sleep(2.5)
    assert clock.now() == 4.0
    assert clock.sleeps == [1.5, 0.0, 2.5]


async def test_autojump_cancelled_sleeper_leaves_the_others_on_time() -> None:
    """The earliest sleeper, cancelled while it waits, does not hold the others back
    nor move time to its own wake-up."""
    clock = VirtualClock(autojump=True)
    finished: list[str] = []
    scope = anyio.CancelScope()

    async def nap(name: str, seconds: float, within: anyio.CancelScope) -> None:
        with within:
            await clock.sleep(seconds)
            finished.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(nap, "cancelled", 1.0, scope)
        tg.start_soon(nap, "kept", 5.0, anyio.CancelScope())
        await anyio.lowlevel.checkpoint()
        scope.cancel()
    assert finished == ["kept"]
    assert clock.now() == 5.0


async def test_autojump_retries_of_concurrent_calls_keep_true_time() -> None:
    """Ten calls each backing off 1 s end at virtual time 1 s, as they would in real time."""
    from resilience import ExponentialBackoff, Retry, report_of
    from resilience.testing import ScriptedTransport, reply, through

    clock = VirtualClock(autojump=True)
    inner = ScriptedTransport.of(*([reply(503)] * 10 + [reply(200)] * 10))
    retry = Retry(backoff=ExponentialBackoff(initial=1.0, jitter="none"), budget=None)
    transport = through(inner, retry, clock=clock)
    delays: list[list[float]] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def call() -> None:
            r = await client.get("https://api.example.test/")
            delays.append(report_of(r).delays)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
    assert delays == [[1.0]] * 10
    assert clock.now() == 1.0


def test_autojump_must_be_a_bool() -> None:
    """A wrong autojump is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="autojump"):
        VirtualClock(autojump="yes")  # type: ignore[arg-type]


# --- one switch: virtual time for everything built without clock= ---------------


async def test_virtual_time_is_the_default_clock_inside_the_block() -> None:
    """Pipelines, token providers and simulators built inside virtual_time() take its
    clock; an explicit clock= wins; the real clock comes back on exit."""
    mine = VirtualClock()
    with virtual_time() as clock:
        assert clock.autojump
        assert is_testing()
        assert Pipeline([Retry()], telemetry=False).clock is clock
        assert Pipeline(telemetry=False, clock=mine).clock is mine
        assert resilience.standard_pipeline("http", telemetry=False).clock is clock
        clock.advance(42.0)
        async with httpx.AsyncClient() as http:
            token = await resilience.StaticToken("k").fetch(http)
        assert token.obtained_at == 42.0
    assert not is_testing()
    assert isinstance(Pipeline(telemetry=False).clock, SystemClock)


def test_virtual_time_nests_and_restores() -> None:
    """An inner block's clock applies inside it only."""
    outer_clock = VirtualClock(start=1.0)
    with virtual_time(outer_clock):
        with virtual_time() as inner:
            assert Pipeline(telemetry=False).clock is inner
        assert Pipeline(telemetry=False).clock is outer_clock
    assert isinstance(Pipeline(telemetry=False).clock, SystemClock)


def test_set_testing_switches_on_and_off() -> None:
    """set_testing(True) returns the clock in use until set_testing(False)."""
    try:
        clock = set_testing(True)
        assert clock is not None
        assert clock.autojump
        assert Pipeline(telemetry=False).clock is clock
        given = VirtualClock()
        assert set_testing(True, clock=given) is given
        assert Pipeline(telemetry=False).clock is given
    finally:
        assert set_testing(False) is None
    assert isinstance(Pipeline(telemetry=False).clock, SystemClock)
    with pytest.raises(TypeError, match="VirtualClock"):
        set_testing(True, clock=SystemClock())  # type: ignore[arg-type]


async def test_code_that_builds_its_own_pipeline_runs_on_virtual_time() -> None:
    """A 30 s backoff inside application code finishes at once under virtual_time()."""

    async def application(inner: httpx.AsyncBaseTransport) -> int:
        # Production code: builds its own pipeline, knows nothing of clocks.
        retry = Retry(backoff=resilience.ExponentialBackoff(initial=30.0, jitter="none"))
        transport = resilience.ResilientTransport(Pipeline([retry], telemetry=False), inner=inner)
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get("https://api.example.test/")).status_code

    with virtual_time() as clock, anyio.fail_after(5):
        status = await application(ScriptedTransport.of(reply(503), reply(200)))
    assert status == 200
    assert clock.sleeps == [30.0]
    assert clock.now() == 30.0
