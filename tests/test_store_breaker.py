"""A circuit breaker shared through Redis: ``CircuitBreaker(store=RedisStore(...))``.

Against a real ``redis-server`` the tests start (asyncio only: redis-py's
asyncio client). The fleet's break is timed by the Redis server's clock, so to
end one without sleeping, a test sets the stored ``until`` in the past (what the
server's clock would do), and advances each pipeline's VirtualClock past its own.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest

from resilience import (
    CircuitBreaker,
    CircuitStateChanged,
    Pipeline,
    RedisStore,
    ResilientTransport,
)
from resilience.errors import CircuitOpenError, ConfigurationError
from resilience.testing import VirtualClock

pytestmark = pytest.mark.anyio

URL = "https://vendor.test/v1/x"
KEY = b"app:cb:https://vendor.test:443"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client needs asyncio (trio's refusal is tested elsewhere)."""
    return "asyncio"


class Vendor:
    """Answers ``status`` (503 or 200), counting requests; ``gate`` holds them."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.sent = 0
        self.gate: anyio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.gate is not None:
            await self.gate.wait()
        return httpx.Response(self.status)


def process(
    store: RedisStore, vendor: Vendor, clock: VirtualClock, changes: list[str]
) -> httpx.AsyncClient:
    """One process's worth: a client over a shared breaker (3 failures in a row)."""
    breaker = CircuitBreaker(
        store=store, consecutive_failures=3, minimum_calls=1000, break_duration=30.0
    )
    pipeline = Pipeline(
        [breaker],
        clock=clock,
        telemetry=False,
        raise_on_failure=False,
        hooks=[
            lambda e: (
                changes.append(f"{e.old}->{e.new}") if isinstance(e, CircuitStateChanged) else None
            )
        ],
    )
    return httpx.AsyncClient(
        transport=ResilientTransport(pipeline, inner=httpx.MockTransport(vendor))
    )


async def test_one_process_opens_it_and_one_probes_for_all(redis_server: Any) -> None:
    """A's failures open the fleet's circuit; B learns it from its next call's answer
    and fails fast; when the break ends, A probes while B is refused until its next
    look (``retry_after`` = ``probe_poll``, not 0), and A's success closes B's
    circuit too at that look. Each process reports each change once."""
    a_store = RedisStore(url=redis_server.url, prefix="app")
    b_store = RedisStore(url=redis_server.url, prefix="app")
    a_vendor, b_vendor = Vendor(503), Vendor(200)
    a_clock, b_clock = VirtualClock(), VirtualClock()
    a_changes: list[str] = []
    b_changes: list[str] = []
    try:
        async with (
            process(a_store, a_vendor, a_clock, a_changes) as a,
            process(b_store, b_vendor, b_clock, b_changes) as b,
        ):
            for _ in range(3):
                await a.get(URL)
            assert a_changes == ["closed->open"]
            await b.get(URL)  # sent: B's circuit was closed; the answer says open
            assert b_changes == ["closed->open"]
            for _ in range(3):
                with pytest.raises(CircuitOpenError) as info:
                    await b.get(URL)
            assert 29.0 < info.value.retry_after <= 30.0
            assert b_vendor.sent == 1
            # The break ends (the server's clock, and each pipeline's).
            redis_server.command(b"HSET", KEY, b"until", b"1")
            a_clock.advance(31.0)
            b_clock.advance(31.0)
            a_vendor.status, a_vendor.gate = 200, anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.get, URL)
                # A's probe takes its lease in Redis first (real I/O), then is sent.
                with anyio.fail_after(5):
                    while a_vendor.sent < 4:
                        await anyio.sleep(0)
                assert a_vendor.sent == 4  # A's probe is out
                with pytest.raises(CircuitOpenError) as info:
                    await b.get(URL)
                # B: another process probes; B looks again after probe_poll.
                assert info.value.retry_after == b_store.probe_poll
                assert "another process probes it" in str(info.value)
                a_vendor.gate.set()
            assert a_changes == ["closed->open", "open->half_open", "half_open->closed"]
            b_clock.advance(b_store.probe_poll)
            response = await b.get(URL)
            assert response.status_code == 200
            assert b_changes == ["closed->open", "open->closed"]
            assert b_vendor.sent == 2
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_a_failed_probe_reopens_it_for_all(redis_server: Any) -> None:
    """A probe that fails reopens the fleet's circuit for twice the break: B, its own
    break over, asks the store, learns the new break and rejects without sending."""
    a_store = RedisStore(url=redis_server.url, prefix="app")
    b_store = RedisStore(url=redis_server.url, prefix="app")
    a_vendor, b_vendor = Vendor(503), Vendor(200)
    a_clock, b_clock = VirtualClock(), VirtualClock()
    changes: list[str] = []
    try:
        async with (
            process(a_store, a_vendor, a_clock, changes) as a,
            process(b_store, b_vendor, b_clock, []) as b,
        ):
            for _ in range(3):
                await a.get(URL)
            await b.get(URL)  # B learns "open" from this call's answer
            redis_server.command(b"HSET", KEY, b"until", b"1")
            a_clock.advance(31.0)
            await a.get(URL)  # the probe fails: reopened for twice the break
            assert changes[-1] == "half_open->open"
            b_clock.advance(31.0)
            with pytest.raises(CircuitOpenError) as info:
                await b.get(URL)
            assert 59.0 < info.value.retry_after <= 60.0
            assert b_vendor.sent == 1
    finally:
        await a_store.aclose()
        await b_store.aclose()


async def test_redis_killed_the_breaker_goes_on_locally(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed mid-run: calls go on, and this process's own circuit opens after
    its own 3 failures (logged once, counted as fallback calls)."""
    clock = VirtualClock()
    store = RedisStore(
        url=redis_server.url, prefix="app", timeout=0.2, retry_interval=5.0, clock=clock
    )
    caplog.set_level(logging.WARNING, logger="resilience")
    vendor = Vendor(503)
    changes: list[str] = []
    try:
        async with process(store, vendor, clock, changes) as client:
            await client.get(URL)
            redis_server.kill()
            for _ in range(2):
                await client.get(URL)
            assert changes == ["closed->open"]
            with pytest.raises(CircuitOpenError):
                await client.get(URL)
            assert vendor.sent == 3
            assert store.fallback_calls >= 2
    finally:
        await store.aclose()
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_the_store_must_be_a_redis_store() -> None:
    """A store without the breaker's steps fails at construction, naming ``store``."""
    with pytest.raises(ConfigurationError, match="CircuitBreaker: store must be a RedisStore"):
        CircuitBreaker(store=object())


def test_one_process_opens_the_breaker_for_four(redis_helper: Any, redis_server: Any) -> None:
    """A process whose vendor fails opens the shared circuit; then 4 processes whose
    vendor answers each send one call (their circuit was closed), learn "open" from
    its answer, open their own circuit once, and fail the other 9 calls fast."""
    (failer,) = redis_helper.run_breaker_workers(redis_server.url, "fleet", "fail", 1, 10)
    assert failer == "3 7 1"
    watchers = redis_helper.run_breaker_workers(redis_server.url, "fleet", "ok", 4, 10)
    assert watchers == ["1 9 1"] * 4


async def test_a_look_while_the_probe_is_taken_does_not_refuse_it(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet's probe lease is this call's, but another call of the same process
    looked at the fleet while it was being taken, saw a lease (it cannot tell
    whose) and kept the circuit open for another poll: the probe still goes.
    (Refusing it freed the lease, and the next look saw the next take: held calls
    of a whole fleet went round like that until their deadlines.)"""
    from resilience import CircuitRegistry

    store = RedisStore(url=redis_server.url, prefix="app")
    vendor = Vendor(503)
    clock = VirtualClock()
    changes: list[str] = []
    circuits: list[Any] = []
    taking = RedisStore.breaker_probe

    async def take_while_another_looks(self: RedisStore, key: str, **kwargs: Any) -> Any:
        answer = await taking(self, key, **kwargs)
        if kwargs.get("take", True) and circuits:
            # What a concurrent look that saw this very lease does to the circuit.
            circuits[0]._until = clock.now() + store.probe_poll
        return answer

    monkeypatch.setattr(RedisStore, "breaker_probe", take_while_another_looks)
    try:
        async with process(store, vendor, clock, changes) as client:
            for _ in range(3):
                await client.get(URL)
            assert changes == ["closed->open"]
            pipeline = client._transport.pipeline  # type: ignore[attr-defined]
            circuits.append(CircuitRegistry.of(pipeline).get("https://vendor.test:443"))
            redis_server.command(b"HSET", KEY, b"until", b"1")  # the fleet's break is over
            clock.advance(31.0)
            vendor.status = 200
            response = await client.get(URL)
    finally:
        await store.aclose()
    assert response.status_code == 200
    assert vendor.sent == 4
    assert changes == ["closed->open", "open->half_open", "half_open->closed"]
