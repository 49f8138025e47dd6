"""Per-call overhead of a resilience pipeline over a bare httpx transport.

Run it with ``python benchmarks/overhead.py`` (``--quick`` for a short run). It
measures, under asyncio, what ``ResilientTransport(Pipeline([Retry()]))`` adds to
each call over the bare ``httpx.MockTransport`` it wraps:

* at the transport level (``await transport.handle_async_request(request)``) and at
  the client level (``await client.get(url)``);
* on the success path (one 200) and on a "503 once, then 200" path with zero
  delays (``ExponentialBackoff(initial=0, max_delay=0)``), where the bare baseline
  is the same two requests made by hand;
* with telemetry off, and on with no OpenTelemetry SDK configured;
* next to ``httpx-retries`` on the same paths, when it is installed;
* the full stack, ``Timeout(total) + Retry + CircuitBreaker + AuthRefresh(StaticToken)
  + Timeout(attempt)`` (generic classifier, telemetry on with no SDK), at the
  transport level on both paths, side by side with ``Retry`` alone, httpx-retries,
  resilient-http and pyresilience when they are installed (the last two run on
  asyncio only: they call ``asyncio`` themselves);
* the full stack under concurrency: 1, 100, 1,000 and 10,000 calls in flight at
  once over a transport that yields once per request, the cost per call over the
  bare transport and the memory per call in flight (tracemalloc).

``--backend`` picks asyncio, trio or both (the default). ``--clock cpu`` times with
the thread's CPU time instead of the wall clock, steadier on a shared machine.

Variants run interleaved in rounds (each round times every variant in turn), and
the table reports the median per-call time of each, so drift of the machine hits
all variants alike. It then checks that a zero-delay retry costs exactly one
cancellation checkpoint and no extra ``sleep(0)``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    SystemClock,
    Timeout,
)

try:  # optional, for comparison only; not a dependency of the project
    import httpx_retries
except ImportError:  # pragma: no cover - depends on the environment
    httpx_retries = None
try:
    import resilient_http
except ImportError:  # pragma: no cover
    resilient_http = None
try:
    import pyresilience
except ImportError:  # pragma: no cover
    pyresilience = None

#: The timer: the wall clock, or (``--clock cpu``) this thread's CPU time, which
#: leaves out the time other processes of a shared machine take from it.
now = time.perf_counter

URL = "https://api.test/v1/things"
BODY = b'{"ok": true}'
ZERO = ExponentialBackoff(initial=0.0, max_delay=0.0)

Handler = Callable[[httpx.Request], httpx.Response]
Step = Callable[[], Awaitable[None]]


def success_handler() -> Handler:
    """Every request: 200."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)

    return handler


def flaky_handler() -> Handler:
    """Odd requests: 503; even requests: 200 (so each logical call retries once)."""
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        if count % 2:
            return httpx.Response(503, content=b'{"error": "unavailable"}')
        return httpx.Response(200, content=BODY)

    return handler


def resilience_transport(handler: Handler, *, retrying: bool, telemetry: bool) -> Any:
    """``ResilientTransport(Pipeline([Retry(...)]))`` over ``MockTransport(handler)``.

    The retry path runs with ``budget=None``: the default budget is designed to
    refuse a retry on every call (it allows 20% of calls, 10 a second at least).
    """
    retry = Retry(backoff=ZERO, budget=None) if retrying else Retry(backoff=ZERO)
    pipeline = Pipeline([retry], telemetry=telemetry)
    return ResilientTransport(pipeline, inner=httpx.MockTransport(handler))


def httpx_retries_transport(handler: Handler) -> Any:
    """httpx-retries' RetryTransport with zero backoff over the same MockTransport."""
    assert httpx_retries is not None
    retry = httpx_retries.Retry(total=3, backoff_factor=0.0, backoff_jitter=0.0)
    return httpx_retries.RetryTransport(transport=httpx.MockTransport(handler), retry=retry)


def transport_step(transport: Any, *, by_hand: bool) -> Step:
    """One logical call at the transport level (``by_hand``: retry a 503 manually)."""
    request = httpx.Request("GET", URL)
    send = transport.handle_async_request

    async def step() -> None:
        response = await send(request)
        if by_hand and response.status_code == 503:
            await response.aclose()
            response = await send(request)
        assert response.status_code == 200
        await response.aclose()

    return step


def client_step(client: httpx.AsyncClient, *, by_hand: bool) -> Step:
    """One logical call at the client level (``by_hand``: retry a 503 manually)."""
    get = client.get

    async def step() -> None:
        response = await get(URL)
        if by_hand and response.status_code == 503:
            response = await get(URL)
        assert response.status_code == 200

    return step


async def time_step(step: Step, calls: int) -> float:
    """Microseconds per call of ``calls`` runs of ``step``."""
    start = now()
    for _ in range(calls):
        await step()
    return (now() - start) / calls * 1e6


VARIANTS = ("bare", "resilience, telemetry off", "resilience, telemetry on (no SDK)")
RETRIES = "httpx-retries"


async def measure(level: str, path: str, rounds: int, calls: int, backend: str) -> dict[str, float]:
    """Median µs per call of each variant on one level and path, interleaved."""
    retrying = path != "success"
    make_handler = flaky_handler if retrying else success_handler
    transports: dict[str, Any] = {
        "bare": httpx.MockTransport(make_handler()),
        VARIANTS[1]: resilience_transport(make_handler(), retrying=retrying, telemetry=False),
        VARIANTS[2]: resilience_transport(make_handler(), retrying=retrying, telemetry=True),
    }
    if httpx_retries is not None and backend == "asyncio":  # it sleeps on asyncio
        transports[RETRIES] = httpx_retries_transport(make_handler())
    clients: list[httpx.AsyncClient] = []
    steps: dict[str, Step] = {}
    for name, transport in transports.items():
        by_hand = name == "bare" and retrying
        if level == "transport":
            steps[name] = transport_step(transport, by_hand=by_hand)
        else:
            client = httpx.AsyncClient(transport=transport)
            clients.append(client)
            steps[name] = client_step(client, by_hand=by_hand)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm up
        await time_step(step, max(calls // 10, 10))
    names = list(steps)
    for round_number in range(rounds):
        # Rotate the order so that no variant always runs first. The collector stays
        # on: httpx responses make cycles, and with it off allocation slows everyone.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(await time_step(steps[name], calls))
    for client in clients:
        await client.aclose()
    return {name: statistics.median(values) for name, values in samples.items()}


class CountingClock(SystemClock):
    """The real clock, counting the sleeps asked for."""

    __slots__ = ("sleeps",)

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


async def count_checkpoints(calls: int) -> tuple[int, int, int, int]:
    """Run ``calls`` zero-delay "503 then 200" calls; return (retries, clock sleeps,
    checkpoints, sleeps) seen during them. A checkpoint is anyio's, or under asyncio
    the ``asyncio.sleep(0)`` the library awaits itself (what anyio's does there,
    without its dispatch); a sleep is any wait longer than zero."""
    counts = {"checkpoint": 0, "sleep": 0}
    real_checkpoint = anyio.lowlevel.checkpoint
    real_sleep = anyio.sleep
    asyncio_module = sys.modules.get("asyncio")
    real_asyncio_sleep = asyncio_module.sleep if asyncio_module is not None else None

    async def counting_asyncio_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        counts["checkpoint" if delay <= 0 else "sleep"] += 1
        assert real_asyncio_sleep is not None
        return await real_asyncio_sleep(delay, *args, **kwargs)

    async def counting_checkpoint() -> None:
        counts["checkpoint"] += 1
        await real_checkpoint()

    async def counting_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        counts["sleep"] += 1
        return await real_sleep(delay, *args, **kwargs)

    clock = CountingClock()
    pipeline = Pipeline([Retry(backoff=ZERO, budget=None)], clock=clock, telemetry=False)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(flaky_handler()))
    request = httpx.Request("GET", URL)
    retries = 0
    anyio.lowlevel.checkpoint = counting_checkpoint  # type: ignore[assignment]
    anyio.sleep = counting_sleep  # type: ignore[assignment]
    if asyncio_module is not None:
        asyncio_module.sleep = counting_asyncio_sleep  # type: ignore[assignment]
    try:
        for _ in range(calls):
            response = await transport.handle_async_request(request)
            retries += response.extensions["resilience"].retries
            await response.aclose()
    finally:
        anyio.lowlevel.checkpoint = real_checkpoint  # type: ignore[assignment]
        anyio.sleep = real_sleep  # type: ignore[assignment]
        if asyncio_module is not None:
            asyncio_module.sleep = real_asyncio_sleep  # type: ignore[assignment]
    return retries, len(clock.sleeps), counts["checkpoint"], counts["sleep"]


# --- the full stack, side by side with the peers ---------------------------------


def full_stack(handler: Handler, *, retrying: bool) -> Any:
    """``Timeout(total) + Retry + CircuitBreaker + AuthRefresh(StaticToken) +
    Timeout(attempt)``, generic classifier, telemetry on (no SDK configured).

    On the retry path: zero waits, ``budget=None``, and a breaker that half the
    attempts failing does not trip (``failure_ratio=1.0``).
    """
    retry = Retry(backoff=ZERO, budget=None) if retrying else Retry()
    breaker = CircuitBreaker(failure_ratio=1.0) if retrying else CircuitBreaker()
    layers = [
        Timeout(total=30.0),
        retry,
        breaker,
        AuthRefresh(StaticToken("t0ken")),
        Timeout(attempt=10.0),
    ]
    return ResilientTransport(Pipeline(layers), inner=httpx.MockTransport(handler))


def retry_alone(handler: Handler, *, retrying: bool) -> Any:
    """``Pipeline([Retry()])``; zero waits and ``budget=None`` on the retry path."""
    retry = Retry(backoff=ZERO, budget=None) if retrying else Retry()
    return ResilientTransport(Pipeline([retry]), inner=httpx.MockTransport(handler))


class _SendOnly:
    """What resilient-http needs of a client, over the transport: ``request()``
    sends one prepared request (so that only its own work is measured)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._send = transport.handle_async_request
        self._request = httpx.Request("GET", URL)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self._send(self._request)

    async def aclose(self) -> None:
        pass


def resilient_http_step(handler: Handler) -> Step:
    """resilient-http's ``ResilientAsyncClient`` (retry + circuit breaker, zero
    backoff) over the same MockTransport."""
    assert resilient_http is not None
    client = resilient_http.ResilientAsyncClient(
        client=_SendOnly(httpx.MockTransport(handler)),  # type: ignore[arg-type]
        retry_policy=resilient_http.RetryPolicy(backoff=lambda attempt: 0.0),
    )

    async def step() -> None:
        response = await client.request("GET", URL)
        assert response.status_code == 200
        await response.aclose()

    return step


def pyresilience_step(handler: Handler) -> Step:
    """pyresilience's ``@resilient`` with retry (on a 5xx result, no delay), a
    per-attempt timeout and a circuit breaker, around the transport."""
    assert pyresilience is not None
    transport = httpx.MockTransport(handler)
    request = httpx.Request("GET", URL)

    @pyresilience.resilient(
        retry=pyresilience.RetryConfig(
            max_attempts=3,
            delay=0.0,
            jitter=False,
            retry_on_result=lambda response: response.status_code >= 500,
        ),
        timeout=pyresilience.TimeoutConfig(seconds=10.0, per_attempt=True),
        circuit_breaker=pyresilience.CircuitBreakerConfig(),
    )
    async def send() -> httpx.Response:
        return await transport.handle_async_request(request)

    async def step() -> None:
        response = await send()
        assert response.status_code == 200
        await response.aclose()

    return step


STACK = "resilience: full stack"
STACK_VARIANTS = (
    "bare",
    STACK,
    "resilience: Retry() alone",
    "httpx-retries (retry)",
    "resilient-http (retry + breaker)",
    "pyresilience (retry + timeout + breaker)",
)


async def measure_stack(path: str, rounds: int, calls: int, backend: str) -> dict[str, float]:
    """Median µs per call of the full stack and the peers on one path, interleaved."""
    retrying = path != "success"
    make_handler = flaky_handler if retrying else success_handler
    steps: dict[str, Step] = {
        "bare": transport_step(httpx.MockTransport(make_handler()), by_hand=retrying),
        STACK: transport_step(full_stack(make_handler(), retrying=retrying), by_hand=False),
        STACK_VARIANTS[2]: transport_step(
            retry_alone(make_handler(), retrying=retrying), by_hand=False
        ),
    }
    if backend == "asyncio":  # the peers call asyncio themselves
        if httpx_retries is not None:
            steps[STACK_VARIANTS[3]] = transport_step(
                httpx_retries_transport(make_handler()), by_hand=False
            )
        if resilient_http is not None:
            steps[STACK_VARIANTS[4]] = resilient_http_step(make_handler())
        if pyresilience is not None:
            steps[STACK_VARIANTS[5]] = pyresilience_step(make_handler())
    return await interleave(steps, rounds, calls)


async def interleave(steps: dict[str, Step], rounds: int, calls: int) -> dict[str, float]:
    """Median µs per call of each step, in rounds of rotating order."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm up
        await time_step(step, max(calls // 10, 10))
    names = list(steps)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(await time_step(steps[name], calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def stack_table(results: dict[str, dict[str, float]], backend: str) -> str:
    """The full-stack results as a fixed-width table."""
    lines = [
        f"{'path':<20} {'variant':<42} {'µs/call':>8} {'ratio':>6} {'+µs':>7}",
        "-" * 87,
    ]
    for path, medians in results.items():
        bare = medians["bare"]
        for name in STACK_VARIANTS:
            if name not in medians:
                why = (
                    "asyncio only"
                    if backend != "asyncio" and name != STACK_VARIANTS[2]
                    else "not installed"
                )
                lines.append(f"{path:<20} {name:<42} {why:>23}")
                continue
            value = medians[name]
            label = name if name != "bare" or path == "success" else "bare (retry by hand)"
            lines.append(
                f"{path:<20} {label:<42} {value:8.2f} {value / bare:6.2f} {value - bare:+7.2f}"
            )
    return "\n".join(lines)


# --- the full stack under concurrency --------------------------------------------

SWEEP = (1, 100, 1000, 10_000)


async def yielding(request: httpx.Request) -> httpx.Response:
    """A 200 after one checkpoint, so that concurrent calls are all in flight."""
    await anyio.lowlevel.checkpoint()
    return httpx.Response(200, content=BODY)


async def batch(transport: Any, size: int) -> None:
    """``size`` calls at once, each in its own task."""
    request = httpx.Request("GET", URL)
    send = transport.handle_async_request

    async def one() -> None:
        response = await send(request)
        assert response.status_code == 200
        await response.aclose()

    async with anyio.create_task_group() as group:
        for _ in range(size):
            group.start_soon(one)


async def time_batches(transport: Any, size: int, total: int, *, paused: bool = False) -> float:
    """µs per call of ``total`` calls made in batches of ``size`` (``paused``: with
    the cyclic garbage collector off while they run, and one collection after
    them, outside the timing)."""
    batches = max(total // size, 1)
    if paused:
        gc.disable()
    try:
        start = now()
        for _ in range(batches):
            await batch(transport, size)
        spent = now() - start
    finally:
        if paused:
            gc.enable()
            gc.collect()
    return spent / (batches * size) * 1e6


async def memory_per_call(transport: Any, size: int) -> float:
    """Peak bytes per call while ``size`` calls are in flight at once (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await batch(transport, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / size


Row = tuple[int, float, float, float, float, float, float]


async def sweep(rounds: int, total: int) -> list[Row]:
    """For each concurrency: (calls in flight, bare µs/call, stack µs/call, bare
    bytes/call, stack bytes/call, bare and stack µs/call with the collector
    paused), medians of interleaved rounds."""
    bare = httpx.MockTransport(yielding)
    stack = ResilientTransport(
        Pipeline(
            [
                Timeout(total=30.0),
                Retry(),
                CircuitBreaker(),
                AuthRefresh(StaticToken("t0ken")),
                Timeout(attempt=10.0),
            ]
        ),
        inner=httpx.MockTransport(yielding),
    )
    rows = []
    for size in SWEEP:
        calls = max(total, size)
        await time_batches(bare, size, calls // 4)  # warm up
        await time_batches(stack, size, calls // 4)
        times: dict[tuple[str, bool], list[float]] = {}
        for number in range(rounds):
            order = [
                (name, transport, paused)
                for paused in (False, True)
                for name, transport in (("bare", bare), ("stack", stack))
            ]
            for name, transport, paused in order if number % 2 else order[::-1]:
                gc.collect()
                sample = await time_batches(transport, size, calls, paused=paused)
                times.setdefault((name, paused), []).append(sample)
        median = {key: statistics.median(values) for key, values in times.items()}
        rows.append(
            (
                size,
                median[("bare", False)],
                median[("stack", False)],
                await memory_per_call(bare, size),
                await memory_per_call(stack, size),
                median[("bare", True)],
                median[("stack", True)],
            )
        )
    return rows


def sweep_table(rows: list[Row]) -> str:
    """The sweep as a fixed-width table; the cost per call relative to one call."""
    lines = [
        f"{'in flight':>9} {'bare µs':>8} {'stack µs':>9} {'+µs':>7} {'vs 1':>6} "
        f"{'+µs gc paused':>14} {'vs 1':>6} "
        f"{'bare B/call':>12} {'stack B/call':>13} {'+B/call':>8}",
        "-" * 102,
    ]
    first = rows[0][2] - rows[0][1]
    first_paused = rows[0][6] - rows[0][5]
    for size, bare, stack, bare_bytes, stack_bytes, bare_paused, stack_paused in rows:
        extra = stack - bare
        paused = stack_paused - bare_paused
        lines.append(
            f"{size:>9,} {bare:8.2f} {stack:9.2f} {extra:+7.2f} {extra / first:6.2f} "
            f"{paused:+14.2f} {paused / first_paused:6.2f} "
            f"{bare_bytes:12,.0f} {stack_bytes:13,.0f} {stack_bytes - bare_bytes:+8,.0f}"
        )
    return "\n".join(lines)


def table(results: dict[tuple[str, str], dict[str, float]]) -> str:
    """The results as a fixed-width table."""
    lines = [
        f"{'level':<10} {'path':<22} {'variant':<34} {'µs/call':>8} {'ratio':>6} {'+µs':>7}",
        "-" * 92,
    ]
    for (level, path), medians in results.items():
        bare = medians["bare"]
        for name in (*VARIANTS, RETRIES):
            if name not in medians:
                why = "not installed" if httpx_retries is None else "asyncio only"
                lines.append(f"{level:<10} {path:<22} {name:<34} {why:>23}")
                continue
            value = medians[name]
            label = name if name != "bare" or path == "success" else "bare (retry by hand)"
            lines.append(
                f"{level:<10} {path:<22} {label:<34} {value:8.2f} {value / bare:6.2f} "
                f"{value - bare:+7.2f}"
            )
    return "\n".join(lines)


async def main(rounds: int, calls: int, backend: str, parts: set[str]) -> None:
    """Measure every level and path, print the tables and the checkpoint check."""
    header = (
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, {backend}; "
        f"{rounds} interleaved rounds, median µs per logical call "
        f"({'thread CPU time' if now is time.thread_time else 'wall clock'})"
    )
    print(header)
    if "layers" in parts:
        results: dict[tuple[str, str], dict[str, float]] = {}
        for level, per_round in (("transport", calls), ("client", calls // 4)):
            for path in ("success", "503 once, then 200"):
                results[(level, path)] = await measure(level, path, rounds, per_round, backend)
        print(table(results))
        success = results[("transport", "success")]
        overhead = success[VARIANTS[1]] - success["bare"]
        print(
            f"\nsuccess-path overhead at the transport level: {overhead:.2f} µs per call "
            f"(target: <= 3 µs)"
        )
    if "stack" in parts:
        stack: dict[str, dict[str, float]] = {}
        for path in ("success", "503 once, then 200"):
            stack[path] = await measure_stack(path, rounds, calls, backend)
        print(f"\nthe full stack, transport level ({backend})")
        print(stack_table(stack, backend))
        success_cost = stack["success"][STACK] - stack["success"]["bare"]
        retry_cost = (
            stack["503 once, then 200"][STACK] - stack["503 once, then 200"]["bare"] - success_cost
        )
        print(
            f"full stack: {success_cost:+.2f} µs per call on the success path (target: <= 15); "
            f"the retry's own work on top: {retry_cost:+.2f} µs"
        )
        alone, retries, resilient = STACK_VARIANTS[2], STACK_VARIANTS[3], STACK_VARIANTS[4]
        ok, flaky = stack["success"], stack["503 once, then 200"]
        if retries in ok:
            print(
                f"Retry() alone over httpx-retries on the success path: "
                f"{ok[alone] - ok[retries]:+.2f} µs (target: <= 1)"
            )
        if resilient in flaky:
            print(
                f"Retry() alone over resilient-http on 503 then 200: "
                f"{flaky[alone] - flaky[resilient]:+.2f} µs (target: <= 0)"
            )
    if "sweep" in parts:
        rows = await sweep(max(rounds // 3, 3), calls * 5)
        print(f"\nthe full stack under concurrency ({backend}; transport yields once per call)")
        print(sweep_table(rows))
        costs = [row[2] - row[1] for row in rows]
        spread = max(costs) / min(costs) - 1
        paused = [row[6] - row[5] for row in rows]
        paused_spread = max(paused) / min(paused) - 1
        print(
            f"cost per call from 1 to {SWEEP[-1]:,} in flight: spread {spread:.0%} "
            f"(target: 20%); with the garbage collector paused during the batches: "
            f"{paused_spread:.0%}"
        )
    if "layers" in parts:
        retries, sleeps, checkpoints, anyio_sleeps = await count_checkpoints(1000)
        print(
            f"\nzero-delay retries: {retries} retries, {sleeps} clock sleeps, "
            f"{checkpoints} checkpoints, {anyio_sleeps} sleeps "
            f"(target: one checkpoint per retry, no sleep)"
        )
        if not (retries == sleeps == checkpoints and anyio_sleeps == 0):
            raise SystemExit("a zero-delay retry costs more than one checkpoint")
    print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (transport)")
    parser.add_argument("--quick", action="store_true", help="a short run (5 rounds)")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio", "both"), default="both", help="event loop"
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what is timed")
    parser.add_argument(
        "--only",
        default="layers,stack,sweep",
        help="comma-separated parts: layers (Retry alone), stack, sweep",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 5, 400
    if args.clock == "cpu":
        now = time.thread_time
    chosen = set(args.only.split(","))
    for name in ("asyncio", "trio") if args.backend == "both" else (args.backend,):
        anyio.run(main, args.rounds, args.calls, name, chosen, backend=name)
