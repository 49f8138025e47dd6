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
* next to ``httpx-retries`` on the same paths, when it is installed.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import (
    ExponentialBackoff,
    Pipeline,
    ResilientTransport,
    Retry,
    RetryBudget,
    SystemClock,
)

try:  # optional, for comparison only; not a dependency of the project
    import httpx_retries
except ImportError:  # pragma: no cover - depends on the environment
    httpx_retries = None

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

    The retry path uses a budget with ``ratio=1`` (one retry earned per call), since
    the default budget is designed to refuse a retry on every call.
    """
    budget = RetryBudget(ratio=1.0) if retrying else RetryBudget()
    pipeline = Pipeline([Retry(backoff=ZERO, budget=budget)], telemetry=telemetry)
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
    start = time.perf_counter()
    for _ in range(calls):
        await step()
    return (time.perf_counter() - start) / calls * 1e6


VARIANTS = ("bare", "resilience, telemetry off", "resilience, telemetry on (no SDK)")
RETRIES = "httpx-retries"


async def measure(level: str, path: str, rounds: int, calls: int) -> dict[str, float]:
    """Median µs per call of each variant on one level and path, interleaved."""
    retrying = path != "success"
    make_handler = flaky_handler if retrying else success_handler
    transports: dict[str, Any] = {
        "bare": httpx.MockTransport(make_handler()),
        VARIANTS[1]: resilience_transport(make_handler(), retrying=retrying, telemetry=False),
        VARIANTS[2]: resilience_transport(make_handler(), retrying=retrying, telemetry=True),
    }
    if httpx_retries is not None:
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
    anyio checkpoints, anyio sleeps) seen during them."""
    counts = {"checkpoint": 0, "sleep": 0}
    real_checkpoint = anyio.lowlevel.checkpoint
    real_sleep = anyio.sleep

    async def counting_checkpoint() -> None:
        counts["checkpoint"] += 1
        await real_checkpoint()

    async def counting_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        counts["sleep"] += 1
        return await real_sleep(delay, *args, **kwargs)

    clock = CountingClock()
    pipeline = Pipeline(
        [Retry(backoff=ZERO, budget=RetryBudget(ratio=1.0))], clock=clock, telemetry=False
    )
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(flaky_handler()))
    request = httpx.Request("GET", URL)
    retries = 0
    anyio.lowlevel.checkpoint = counting_checkpoint  # type: ignore[assignment]
    anyio.sleep = counting_sleep  # type: ignore[assignment]
    try:
        for _ in range(calls):
            response = await transport.handle_async_request(request)
            retries += response.extensions["resilience"].retries
            await response.aclose()
    finally:
        anyio.lowlevel.checkpoint = real_checkpoint  # type: ignore[assignment]
        anyio.sleep = real_sleep  # type: ignore[assignment]
    return retries, len(clock.sleeps), counts["checkpoint"], counts["sleep"]


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
                lines.append(f"{level:<10} {path:<22} {name:<34} {'not installed':>23}")
                continue
            value = medians[name]
            label = name if name != "bare" or path == "success" else "bare (retry by hand)"
            lines.append(
                f"{level:<10} {path:<22} {label:<34} {value:8.2f} {value / bare:6.2f} "
                f"{value - bare:+7.2f}"
            )
    return "\n".join(lines)


async def main(rounds: int, calls: int) -> None:
    """Measure every level and path, print the table and the checkpoint check."""
    results: dict[tuple[str, str], dict[str, float]] = {}
    for level, per_round in (("transport", calls), ("client", calls // 4)):
        for path in ("success", "503 once, then 200"):
            results[(level, path)] = await measure(level, path, rounds, per_round)
    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, asyncio; "
        f"{rounds} interleaved rounds, median µs per logical call"
    )
    print(table(results))
    overhead = (
        results[("transport", "success")][VARIANTS[1]] - results[("transport", "success")]["bare"]
    )
    print(
        f"\nsuccess-path overhead at the transport level: {overhead:.2f} µs per call "
        f"(target: <= 3 µs)"
    )
    retries, sleeps, checkpoints, anyio_sleeps = await count_checkpoints(1000)
    print(
        f"zero-delay retries: {retries} retries, {sleeps} clock sleeps, "
        f"{checkpoints} checkpoints, {anyio_sleeps} anyio.sleep calls "
        f"(target: one checkpoint per retry, no sleep)"
    )
    if not (retries == sleeps == checkpoints and anyio_sleeps == 0):
        raise SystemExit("a zero-delay retry costs more than one checkpoint")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (transport)")
    parser.add_argument("--quick", action="store_true", help="a short run (5 rounds)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 5, 400
    anyio.run(main, args.rounds, args.calls, backend="asyncio")
