"""What the circuit breaker costs: per call, per rejection, per key.

Run it with ``python benchmarks/breaker.py`` (``--quick`` for a short run). Under
asyncio it measures:

* **Closed path, transport level**: ``await transport.handle_async_request(request)``
  (then ``aclose()``) on the bare ``httpx.MockTransport``, on
  ``ResilientTransport(Pipeline([], telemetry=False))`` over it, and on
  ``ResilientTransport(Pipeline([CircuitBreaker()], telemetry=False))``. The
  breaker's own cost is the difference between the last two.
* **Open path (fast fail)**: the same call on a tripped breaker, which raises
  ``CircuitOpenError`` without touching the inner transport; and the decision
  alone, ``registry.allow(key)`` on an open key. Next to them, when installed
  (they are not dependencies): purgatory's ``async with await
  factory.get_breaker(name)``, aiobreaker's ``await breaker.call_async(f)`` and
  pybreaker's (synchronous) ``breaker.call(f)`` on an open breaker.
* **Memory per idle keyed breaker** (tracemalloc): 20,000 keys, each having seen
  one successful call, then idle, divided by the number of keys; with the key
  strings made outside the measurement and, separately, inside it. Peers get the
  same keys, one breaker per key in a dict (purgatory: its factory's registry).
* **Memory held after 100,000 rejected calls**, at the transport level and at the
  registry level: the traced memory after minus before (after a GC), which stays
  flat when nothing accumulates (no growing traceback, no per-call record).

Variants run interleaved in rounds (each round times every variant, in rotating
order) and the tables report the median, so drift of the machine hits all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    Outcome,
    Pipeline,
    ResilientTransport,
    Verdict,
)
from resilience._breaker import _open_error  # what the layer builds on rejection
from resilience.errors import CircuitOpenError
from resilience.testing import VirtualClock

# Optional peers, for comparison only.
try:
    import purgatory
    from purgatory.domain.model import OpenedState
except ImportError:  # pragma: no cover - depends on the environment
    purgatory = None
try:
    import aiobreaker
except ImportError:  # pragma: no cover
    aiobreaker = None
try:
    import pybreaker
except ImportError:  # pragma: no cover
    pybreaker = None

URL = "https://api.test/v1/things"
KEY = "https://api.test:443"
OK = Verdict(Action.ACCEPT)
FAILED = Verdict(Action.RETRY)
NOT_INSTALLED = "not installed"

Step = Callable[[], Awaitable[None]]


def ok_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"{}")


def failing_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, content=b"{}")


# -- steps: one call each ------------------------------------------------------


def transport_step(transport: httpx.AsyncBaseTransport) -> Step:
    request = httpx.Request("GET", URL)

    async def step() -> None:
        response = await transport.handle_async_request(request)
        await response.aclose()

    return step


async def open_transport() -> tuple[ResilientTransport, CircuitRegistry]:
    """A transport whose breaker for KEY is open for good (tripped by one 503)."""
    pipeline = Pipeline(
        [CircuitBreaker(minimum_calls=1, break_duration=1e9)],
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(failing_handler))
    with contextlib.suppress(Exception):
        await transport.handle_async_request(httpx.Request("GET", URL))
    registry = CircuitRegistry.of(pipeline)
    assert registry.allow(KEY) is not None, "the breaker did not open"
    return transport, registry


class RaisingTransport(httpx.AsyncBaseTransport):
    """The floor of any fast fail: a transport that only builds and raises the error."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise CircuitOpenError(
            "circuit breaker https://api.test:443 is open; it half-opens in 30s",
            key="https://api.test:443",
            retry_after=30.0,
            request=request,
        )


def rejecting_step(transport: httpx.AsyncBaseTransport) -> Step:
    request = httpx.Request("GET", URL)

    async def step() -> None:
        try:
            await transport.handle_async_request(request)
        except CircuitOpenError:
            pass
        else:  # pragma: no cover - a broken benchmark
            raise AssertionError("the breaker let a call through")

    return step


def allow_step(registry: CircuitRegistry) -> Step:
    allow = registry.allow

    async def step() -> None:
        allow(KEY)

    return step


async def purgatory_open_step(*, clear_traceback: bool = True) -> Step | None:
    if purgatory is None:
        return None
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=1e9)
    with contextlib.suppress(RuntimeError):
        async with await factory.get_breaker("api"):
            raise RuntimeError("boom")

    async def step() -> None:
        try:
            async with await factory.get_breaker("api"):
                pass
        except OpenedState as exc:
            # purgatory raises its one state object every time, so its traceback
            # grows with each rejection (see the memory table); the growing heap
            # would slow every row through the garbage collector, so the timed
            # loop clears it.
            if clear_traceback:
                exc.__traceback__ = None

    return step


async def aiobreaker_open_step() -> Step | None:
    if aiobreaker is None:
        return None
    breaker = aiobreaker.CircuitBreaker(
        fail_max=1, timeout_duration=datetime.timedelta(seconds=1e6)
    )

    async def boom() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        return None

    with contextlib.suppress(RuntimeError, aiobreaker.CircuitBreakerError):
        await breaker.call_async(boom)

    async def step() -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress in a timed loop
            await breaker.call_async(fine)
        except aiobreaker.CircuitBreakerError:
            pass

    return step


def pybreaker_open_step() -> Step | None:
    if pybreaker is None:
        return None
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=1e6)

    def boom() -> None:
        raise RuntimeError("boom")

    def fine() -> None:
        return None

    with contextlib.suppress(RuntimeError, pybreaker.CircuitBreakerError):
        breaker.call(boom)

    async def step() -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress in a timed loop
            breaker.call(fine)
        except pybreaker.CircuitBreakerError:
            pass

    return step


# -- timing --------------------------------------------------------------------


async def time_rounds(
    variants: dict[str, Step | None], rounds: int, calls: int
) -> dict[str, float | None]:
    """Median µs per call of each variant, measured interleaved."""
    live = {name: step for name, step in variants.items() if step is not None}
    samples: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    for step in live.values():  # warm up
        for _ in range(200):
            await step()
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            step = live[name]
            started = time.perf_counter()
            for _ in range(calls):
                await step()
            samples[name].append((time.perf_counter() - started) / calls * 1e6)
    return {
        name: statistics.median(samples[name]) if name in samples else None for name in variants
    }


# -- memory --------------------------------------------------------------------


def traced(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated after ``build()`` (its result kept alive), after a GC."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, kept


def key_names(n: int) -> list[str]:
    return [f"https://host-{i:06d}.example.com:443" for i in range(n)]


def resilience_breakers(keys: list[str]) -> Any:
    clock = VirtualClock(start=1_000_000.0)
    registry = CircuitRegistry.of(Pipeline([CircuitBreaker()], clock=clock, telemetry=False))
    for key in keys:
        registry.allow(key)
        registry.record(key, OK)
    assert len(registry) == len(keys)
    return registry


def purgatory_breakers(keys: list[str]) -> Any:
    if purgatory is None:
        return None
    factory = purgatory.AsyncCircuitBreakerFactory()

    async def build() -> None:
        for key in keys:
            async with await factory.get_breaker(key):
                pass

    anyio.run(build)
    return factory


def aiobreaker_breakers(keys: list[str]) -> Any:
    if aiobreaker is None:
        return None
    breakers = {key: aiobreaker.CircuitBreaker(name=key) for key in keys}

    async def fine() -> None:
        return None

    async def build() -> None:
        for breaker in breakers.values():
            await breaker.call_async(fine)

    anyio.run(build)
    return breakers


def pybreaker_breakers(keys: list[str]) -> Any:
    if pybreaker is None:
        return None
    breakers = {key: pybreaker.CircuitBreaker(name=key) for key in keys}
    for breaker in breakers.values():
        breaker.call(lambda: None)
    return breakers


def memory_per_key(n: int) -> list[tuple[str, float | None, float | None]]:
    """Bytes per idle keyed breaker: (name, keys made outside, keys made inside)."""
    rows: list[tuple[str, float | None, float | None]] = []
    builders: dict[str, tuple[Callable[[list[str]], Any], Any]] = {
        "resilience CircuitRegistry": (resilience_breakers, True),
        "purgatory": (purgatory_breakers, purgatory),
        "aiobreaker": (aiobreaker_breakers, aiobreaker),
        "pybreaker": (pybreaker_breakers, pybreaker),
    }
    for name, (build, available) in builders.items():
        if available is None:
            rows.append((name, None, None))
            continue
        keys = key_names(n)
        outside, _ = traced(lambda build=build, keys=keys: build(keys))
        inside, _ = traced(lambda build=build: build(key_names(n)))
        rows.append((name, outside / n, inside / n))
    return rows


async def rejected_growth(calls: int) -> list[tuple[str, int | None]]:
    """Traced bytes held after ``calls`` rejections, minus before."""
    transport, registry = await open_transport()
    steps: dict[str, Step | None] = {
        "resilience, transport (CircuitOpenError raised)": rejecting_step(transport),
        "resilience, registry.allow() on an open key": allow_step(registry),
        "purgatory": await purgatory_open_step(clear_traceback=False),
        "aiobreaker": await aiobreaker_open_step(),
        "pybreaker": pybreaker_open_step(),
    }
    rows: list[tuple[str, int | None]] = []
    for name, step in steps.items():
        if step is None:
            rows.append((name, None))
            continue
        for _ in range(1_000):  # warm caches before measuring
            await step()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                await step()
            gc.collect()
            rows.append((name, tracemalloc.get_traced_memory()[0] - before))
        finally:
            tracemalloc.stop()
    return rows


# -- report --------------------------------------------------------------------


def show(value: float | None, fmt: str = "{:8.2f}") -> str:
    return f"{NOT_INSTALLED:>14}" if value is None else fmt.format(value)


class ErrorOnlyLayer:
    """Reference: a layer that only returns a fresh CircuitOpenError.

    What a rejected call costs in the pipeline itself (the call, its report, the
    raise), so the breaker's own share of a rejection is the difference.
    """

    def bind(self, env: Any) -> Any:
        verdict = Verdict(Action.FAIL, breaker_failure=False)

        async def handler(request: httpx.Request, call: Any, call_next: Any) -> Outcome:
            error = _open_error("circuit open", KEY, 1.0, request, None, call.report)
            return Outcome(request, verdict, error=error)

        return handler


def guard_step(registry: CircuitRegistry) -> Step:
    """What a hand-written guard does: allow(), and raise when refused."""
    allow = registry.allow

    async def step() -> None:
        try:
            wait = allow(KEY)
            if wait is not None:
                raise CircuitOpenError("circuit open", key=KEY, retry_after=wait)
        except CircuitOpenError:
            pass

    return step


TRANSPORT_ROWS = (
    "bare MockTransport (sends)",
    "Pipeline([CircuitBreaker()]), open",
    "reference: Pipeline([layer returning the error])",
    "floor: a transport that only raises the error",
)
DECISION_ROWS = (
    "resilience registry.allow(key)",
    "resilience allow() + raise CircuitOpenError",
    "purgatory: async with await get_breaker()",
    "aiobreaker: await call_async()",
    "pybreaker: call() (sync)",
)


async def timings(rounds: int, calls: int) -> dict[str, float | None]:
    mock = httpx.MockTransport(ok_handler)
    empty = ResilientTransport(Pipeline([], telemetry=False), inner=mock)
    guarded = ResilientTransport(Pipeline([CircuitBreaker()], telemetry=False), inner=mock)
    reference = ResilientTransport(Pipeline([ErrorOnlyLayer()], telemetry=False), inner=mock)
    opened, registry = await open_transport()
    variants: dict[str, Step | None] = {
        "bare MockTransport": transport_step(mock),
        "Pipeline([])": transport_step(empty),
        "Pipeline([CircuitBreaker()])": transport_step(guarded),
        TRANSPORT_ROWS[1]: rejecting_step(opened),
        TRANSPORT_ROWS[2]: rejecting_step(reference),
        TRANSPORT_ROWS[3]: rejecting_step(RaisingTransport()),
        DECISION_ROWS[0]: allow_step(registry),
        DECISION_ROWS[1]: guard_step(registry),
        DECISION_ROWS[2]: await purgatory_open_step(),
        DECISION_ROWS[3]: await aiobreaker_open_step(),
        DECISION_ROWS[4]: pybreaker_open_step(),
    }
    return await time_rounds(variants, rounds, calls)


def main(rounds: int, calls: int) -> None:
    results = anyio.run(timings, rounds, calls)
    results[TRANSPORT_ROWS[0]] = results["bare MockTransport"]
    bare = results["bare MockTransport"]
    base = results["Pipeline([])"]
    closed = results["Pipeline([CircuitBreaker()])"]
    assert bare is not None
    assert base is not None
    assert closed is not None

    print(f"Python {sys.version.split()[0]}, httpx {httpx.__version__}, asyncio")
    print(f"{rounds} rounds x {calls} calls, median µs per call\n")
    print(f"{'closed path, transport level':50} {'µs/call':>8} {'ratio':>6} {'+µs':>7}")
    print("-" * 74)
    for name in ("bare MockTransport", "Pipeline([])", "Pipeline([CircuitBreaker()])"):
        value = results[name]
        assert value is not None
        print(f"{name:50} {value:8.2f} {value / bare:6.2f} {value - bare:+7.2f}")
    print(f"{'the breaker layer alone (vs Pipeline([]))':50} {closed - base:8.2f}")
    print()
    print(f"{'open path (fast fail), transport level':50} {'µs/call':>8} {'ratio':>6}")
    print("-" * 66)
    for name in TRANSPORT_ROWS:
        value = results[name]
        assert value is not None
        print(f"{name:50} {value:8.2f} {value / bare:6.2f}")
    opened, floor = results[TRANSPORT_ROWS[1]], results[TRANSPORT_ROWS[2]]
    assert opened is not None
    assert floor is not None
    print(f"{'the breaker share of a rejection':50} {opened - floor:8.2f}")
    print()
    print(f"{'open path, decision level (no HTTP)':50} {'µs/call':>8}")
    print("-" * 59)
    for name in DECISION_ROWS:
        print(f"{name:50} {show(results[name])}")
    print()
    print(f"{'memory per idle keyed breaker':30} {'keys outside':>14} {'keys inside':>14}")
    print("-" * 60)
    for name, outside, inside in memory_per_key(20_000):
        print(f"{name:30} {show(outside, '{:12.0f} B')} {show(inside, '{:12.0f} B')}")
    print()
    print(f"{'memory held after 100,000 rejected calls':48} {'bytes':>14}")
    print("-" * 63)
    for name, grown in anyio.run(rejected_growth, 100_000):
        print(f"{name:48} {show(grown, '{:14d}')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 15")
    options = parser.parse_args()
    main(3 if options.quick else 15, 2_000 if options.quick else 5_000)
