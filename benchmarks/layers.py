"""The success-path cost of each layer alone, side by side in one run.

Run it with ``python benchmarks/layers.py`` (``--quick`` for a short run,
``--backend trio`` for trio). Each variant is
``ResilientTransport(Pipeline([layer], telemetry=False))`` over a bare
``httpx.MockTransport`` answering 200, called at the transport level
(``await transport.handle_async_request(request)``) with a GET; ``bare`` is the
MockTransport alone and ``empty pipeline`` is a pipeline with no layer, so each
layer's own cost is its row minus that one.

Variants run interleaved in rounds, in a rotating order (as in ``overhead.py``), and
the table reports the median µs per call and the ratio to the bare transport.

The mock answers without waiting, so a layer that only pays when the attempt waits
shows none of that cost. ``--waiting`` makes every transport wait one event-loop
round per request (``anyio.lowlevel.checkpoint()``, as a network read would): then
``Hedge`` starts its timer task on every call, which is its cost on a real network.
``RateLimiter`` is measured when the package has it, with a rate it never reaches.
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

import resilience
from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ConcurrencyLimit,
    Fallback,
    Hedge,
    Pipeline,
    ResilientTransport,
    Retry,
    StaticToken,
    Timeout,
)
from resilience.errors import ResilienceError

URL = "https://api.test/v1/things"
BODY = b'{"ok": true}'

Step = Callable[[], Awaitable[None]]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY)


async def ok_waiting(request: httpx.Request) -> httpx.Response:
    await anyio.lowlevel.checkpoint()
    return httpx.Response(200, content=BODY)


def cached(request: httpx.Request, error: Exception) -> httpx.Response:
    return httpx.Response(200, content=BODY)  # pragma: no cover - never on this path


def variants(waiting: bool = False) -> dict[str, Any]:
    """Every variant's transport, the bare one first."""
    answer: Any = ok_waiting if waiting else ok
    layers: dict[str, Any] = {
        "empty pipeline": None,
        "Retry()": Retry(),
        "CircuitBreaker()": CircuitBreaker(),
        "Timeout(total=30)": Timeout(total=30.0),
        "Timeout(attempt=10)": Timeout(attempt=10.0),
        "AuthRefresh(StaticToken)": AuthRefresh(StaticToken("t0ken")),
        "ConcurrencyLimit(limit=100)": ConcurrencyLimit(limit=100),
        "Fallback(on=ResilienceError)": Fallback(cached, on=ResilienceError),
        "Hedge(delay=1.0)": Hedge(delay=1.0),
        "Hedge(percentile=95)": Hedge(percentile=95.0),
    }
    rate_limiter = getattr(resilience, "RateLimiter", None)
    if rate_limiter is not None:
        layers["RateLimiter(rate=1e9)"] = rate_limiter(rate=1e9)
    found: dict[str, Any] = {"bare": httpx.MockTransport(answer)}
    for name, layer in layers.items():
        pipeline = Pipeline([layer] if layer is not None else [], telemetry=False)
        found[name] = ResilientTransport(pipeline, inner=httpx.MockTransport(answer))
    return found


def transport_step(transport: Any) -> Step:
    request = httpx.Request("GET", URL)
    send = transport.handle_async_request

    async def step() -> None:
        response = await send(request)
        assert response.status_code == 200
        await response.aclose()

    return step


async def time_step(step: Step, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await step()
    return (time.perf_counter() - start) / calls * 1e6


async def main(rounds: int, calls: int, backend: str, waiting: bool) -> None:
    steps = {name: transport_step(t) for name, t in variants(waiting).items()}
    for step in steps.values():  # warm up
        await time_step(step, max(calls // 10, 10))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(await time_step(steps[name], calls))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    bare = medians["bare"]
    empty = medians["empty pipeline"]
    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, {backend}; "
        f"{rounds} interleaved rounds of {calls} calls, median µs per call (success path"
        f"{', the transport waits once per request' if waiting else ''})"
    )
    print(f"{'variant':<30} {'µs/call':>8} {'ratio':>6} {'layer µs':>9}")
    print("-" * 56)
    for name, value in medians.items():
        own = "" if name in ("bare", "empty pipeline") else f"{value - empty:+9.2f}"
        print(f"{name:<30} {value:8.2f} {value / bare:6.2f} {own:>9}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=1000, help="calls per round")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--quick", action="store_true", help="a short run (5 rounds)")
    parser.add_argument(
        "--waiting", action="store_true", help="the transport waits one loop round per request"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 5, 300
    anyio.run(main, args.rounds, args.calls, args.backend, args.waiting, backend=args.backend)
