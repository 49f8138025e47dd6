"""One library's run in the outage benchmark, in a process of its own.

``benchmarks/outage.py`` runs ``python benchmarks/_outage_worker.py --lib NAME
--port P --rate R ... --out FILE`` once per library and rate, against a fresh
``_outage_server.py``. This process builds the library's client (every one over
the same counting transport, which wraps ``httpx.AsyncHTTPTransport`` with a pool
of ``--connections`` kept-alive connections and counts each attempt that reaches
it), warms the connection up, asks the server to start
its timeline, and then starts one call every ``1/rate`` seconds whether or not
the earlier ones finished (open loop), each capped at ``--cap`` seconds. A ticker
task measures how late the event loop wakes it. It writes what it saw as JSON;
the parent computes the measures.

Every library gets the same policy: 5 attempts, waits of 0.1 s doubling up to
2 s without jitter, a 15 s cap per call (the presets keep their shipped retry
settings unless ``--preset-policy common``; see ``outage.py``). A library that is
not installed writes ``{"skipped": reason}`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ATTEMPTS = 5
FIRST_WAIT = 0.1
MAX_WAIT = 2.0
BREAK = 2.0
"""Seconds of break for the breakers we configure (ours, purgatory's TTL)."""
PURGATORY_THRESHOLD = 5
"""purgatory's own default: consecutive failures that open it."""
TICK = 0.01
"""Seconds between the lag ticker's wake-ups."""
CLIENT_BUCKET = 0.1
WARMUP_CALLS = 20
VENDORS = ("tellus", "turris", "derapi")

Call = Callable[[], Awaitable[bool]]
"""One logical call through the library: True when it ended in a 200."""


class Skip(Exception):
    """The library (or its plugin) is not installed."""


class ServerError(Exception):
    """A 5xx answer, raised for the libraries that retry on exceptions."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status_code = response.status_code


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts every attempt that reaches the network, in 0.1 s buckets from ``t0``."""

    def __init__(self, horizon: float, connections: int) -> None:
        # As many kept alive as allowed: no connection churn after a burst. httpcore's
        # pool scans its connections on every request, so a big pool costs CPU per
        # request once bursts have filled it.
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.inner = httpx.AsyncHTTPTransport(limits=limits)
        self.t0 = math.inf
        self.counts = [0] * (int(horizon / CLIENT_BUCKET) + 1)
        self.before = 0
        self.after = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        if now < self.t0:
            self.before += 1
        else:
            index = int((now - self.t0) / CLIENT_BUCKET)
            if index < len(self.counts):
                self.counts[index] += 1
            else:
                self.after += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} not installed ({exc})") from None


# -- one builder per library: (client, call) over the counting transport -------------


def build_httpx(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    client = httpx.AsyncClient(transport=counting)

    async def call() -> bool:
        response = await client.get(url)
        return response.status_code == 200

    return call


def _raise_5xx(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500:
        raise ServerError(response)
    return response


def build_tenacity(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    tenacity = _need("tenacity")
    client = httpx.AsyncClient(transport=counting)

    async def call() -> bool:
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(cap),
            wait=tenacity.wait_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
            retry=tenacity.retry_if_exception_type((ServerError, httpx.TransportError)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                response = _raise_5xx(await client.get(url))
        return response.status_code == 200

    return call


def build_stamina(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    stamina = _need("stamina")
    # stamina logs every retry at WARNING through logging by default; with no handler
    # configured that is a write to stderr per retry, which would load this process
    # more than our telemetry (OpenTelemetry API, no SDK) loads ours.
    stamina.instrumentation.set_on_retry_hooks([])
    client = httpx.AsyncClient(transport=counting)

    async def call() -> bool:
        async for attempt in stamina.retry_context(
            on=(ServerError, httpx.TransportError),
            attempts=ATTEMPTS,
            timeout=cap,
            wait_initial=FIRST_WAIT,
            wait_max=MAX_WAIT,
            wait_jitter=0.0,
            wait_exp_base=2,
        ):
            with attempt:
                response = _raise_5xx(await client.get(url))
        return response.status_code == 200

    return call


def build_httpx_retries(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    httpx_retries = _need("httpx_retries")
    # httpx-retries waits backoff_factor * 2**retry, the first retry being 1.
    retry = httpx_retries.Retry(
        total=ATTEMPTS - 1,
        backoff_factor=FIRST_WAIT / 2,
        max_backoff_wait=MAX_WAIT,
        backoff_jitter=0.0,
        status_forcelist=[429, 500, 502, 503, 504],
    )
    client = httpx.AsyncClient(
        transport=httpx_retries.RetryTransport(transport=counting, retry=retry)
    )

    async def call() -> bool:
        response = await client.get(url)
        return response.status_code == 200

    return call


def build_tenacity_purgatory(
    counting: CountingTransport, url: str, cap: float, preset: str
) -> Call:
    tenacity = _need("tenacity")
    purgatory = _need("purgatory")
    factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=PURGATORY_THRESHOLD, default_ttl=BREAK
    )
    client = httpx.AsyncClient(transport=counting)

    async def call() -> bool:
        # An open breaker (purgatory's OpenedState) is not retried: it fails the call.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(cap),
            wait=tenacity.wait_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
            retry=tenacity.retry_if_exception_type((ServerError, httpx.TransportError)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with await factory.get_breaker("outage-server"):
                    response = _raise_5xx(await client.get(url))
        return response.status_code == 200

    return call


def _resilient(counting: CountingTransport, pipeline: Any, url: str) -> Call:
    from resilience import ResilientTransport

    client = httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=counting))

    async def call() -> bool:
        response = await client.get(url)
        return response.status_code == 200

    return call


def _our_retry() -> Any:
    from resilience import ExponentialBackoff, Retry

    backoff = ExponentialBackoff(
        initial=FIRST_WAIT, multiplier=2.0, max_delay=MAX_WAIT, jitter="none"
    )
    return Retry(max_attempts=ATTEMPTS, backoff=backoff)


def build_retry(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    from resilience import Pipeline, Timeout

    return _resilient(counting, Pipeline([Timeout(total=cap), _our_retry()]), url)


def build_retry_breaker(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
    from resilience import CircuitBreaker, Pipeline, Timeout

    layers = [Timeout(total=cap), _our_retry(), CircuitBreaker(break_duration=BREAK)]
    return _resilient(counting, Pipeline(layers), url)


def build_preset(vendor: str) -> Callable[[CountingTransport, str, float, str], Call]:
    def build(counting: CountingTransport, url: str, cap: float, preset: str) -> Call:
        from resilience import ExponentialBackoff, StaticToken, standard_pipeline
        from resilience._loader import load_plugin

        try:
            load_plugin(vendor)
        except Exception as exc:
            raise Skip(f"plugin {vendor!r} not installed ({type(exc).__name__})") from None
        # The benchmark's backend is no vendor: its load is far over the vendors'
        # documented limits, which the presets would otherwise pace to.
        overrides: dict[str, Any] = {"total_timeout": cap, "rate_limits": ()}
        if preset == "common":
            overrides["max_attempts"] = ATTEMPTS
            overrides["backoff"] = ExponentialBackoff(
                initial=FIRST_WAIT, multiplier=2.0, max_delay=MAX_WAIT, jitter="none"
            )
        pipeline = standard_pipeline(vendor, auth=StaticToken("bench-token"), **overrides)
        return _resilient(counting, pipeline, url)

    return build


BUILDERS: dict[str, Callable[[CountingTransport, str, float, str], Call]] = {
    "httpx": build_httpx,
    "tenacity": build_tenacity,
    "stamina": build_stamina,
    "httpx-retries": build_httpx_retries,
    "tenacity+purgatory": build_tenacity_purgatory,
    "retry": build_retry,
    "retry+breaker": build_retry_breaker,
    **{vendor: build_preset(vendor) for vendor in VENDORS},
}


# -- the run ----------------------------------------------------------------------


async def ticker(stop: asyncio.Event, lags: list[float], limit: int) -> None:
    """Sleep TICK at a time and record how late each wake-up came (bounded count)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set() and len(lags) < limit:
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(max(loop.time() - due, 0.0))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    total = args.healthy + args.outage + args.recover
    horizon = total + args.cap + 5.0
    counting = CountingTransport(horizon, args.connections)
    vendor = args.lib if args.lib in VENDORS else "http"
    base = f"http://127.0.0.1:{args.port}"
    url = f"{base}/{vendor}/v1/items"
    call = BUILDERS[args.lib](counting, url, args.cap, args.preset_policy)

    # Warm up (connections, imports, first-call caches) before the clock starts.
    for _ in range(WARMUP_CALLS):
        await asyncio.wait_for(call(), timeout=args.cap)

    async with httpx.AsyncClient(base_url=base) as control:
        answer = await control.post(
            "/_bench/start",
            params={"healthy": args.healthy, "outage": args.outage, "horizon": horizon},
        )
        t0 = float(answer.json()["t0"])
    if abs(t0 - time.monotonic()) > 5.0:
        raise RuntimeError("the server's monotonic clock is not this process's")
    counting.t0 = t0

    count = round(total * args.rate)
    arrivals = [i / args.rate for i in range(count)]
    latencies: list[float | None] = [None] * count
    errors: dict[str, int] = {}

    async def one(i: int, due: float) -> None:
        try:
            ok = await asyncio.wait_for(call(), timeout=args.cap)
        except asyncio.TimeoutError:
            ok, kind = False, "cap"
        except Exception as exc:
            ok, kind = False, type(exc).__name__
        else:
            kind = "ok" if ok else "status"
        if ok:
            latencies[i] = time.monotonic() - due
        else:
            errors[kind] = errors.get(kind, 0) + 1

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    stop = asyncio.Event()
    lags: list[float] = []
    tick = asyncio.create_task(ticker(stop, lags, limit=int(horizon / TICK) + 1))
    tasks: set[asyncio.Task[None]] = set()
    late_starts = 0.0
    for i, offset in enumerate(arrivals):
        due = t0 + offset
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late_starts = max(late_starts, -wait)
        # Open loop: start the call now, whatever the earlier ones are doing.
        tasks.add(asyncio.create_task(one(i, due)))
    unfinished = 0
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=args.cap + 2.0)
        unfinished = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)
    stop.set()
    await asyncio.wait_for(tick, timeout=2.0)
    usage = resource.getrusage(resource.RUSAGE_SELF)

    return {
        "lib": args.lib,
        "rate": args.rate,
        "arrivals": arrivals,
        "latencies": latencies,
        "errors": errors,
        "unfinished": unfinished,
        "lags": lags,
        "max_late_start": late_starts,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
        "client_bucket": CLIENT_BUCKET,
        "client_attempts": counting.counts,
        "client_attempts_warmup": counting.before,
        "client_attempts_after": counting.after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--healthy", type=float, required=True)
    parser.add_argument("--outage", type=float, required=True)
    parser.add_argument("--recover", type=float, required=True)
    parser.add_argument("--cap", type=float, required=True)
    parser.add_argument("--preset-policy", choices=("shipped", "common"), default="shipped")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except Skip as exc:
        result = {"lib": args.lib, "skipped": str(exc)}
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
