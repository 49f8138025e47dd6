"""``resilience demo --workers N --redis URL``: a fleet of processes sharing one Redis.

Where it sits: outside the request flow, beside ``_demo.py`` (which parses the
command line and calls :func:`run_fleet`). The parent serves one vendor's
simulator on loopback (real time: the workers are other processes), starts N
worker processes (``python -m resilience._demo_fleet``), and reads back from the
simulator what the fleet sent: the calls, the answers over the vendor's limit,
the answers during an outage of the probe at the start of the run, and the
token requests. Each worker calls the vendor's probe through
``standard_pipeline(vendor, rate_limits=<the plugin's>, store=RedisStore(...))``
with a few concurrent callers, so the rate limit, the token, the retry budget and
the circuit breaker are the fleet's, not each process's: the outage opens one
breaker for all the workers, and one probe closes it for all.

Like ``_demo.py``, it imports the test tooling, uvicorn and redis only inside
the commands that need them.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

__all__ = ["run_fleet"]

#: The simulator's token life in the fleet demo: short, so a run of a few seconds
#: sees several expiries (the Tellus preset refreshes it at half its life).
TOKEN_TTL = 4.0
#: Concurrent callers in each worker: enough that the outage's first attempts and
#: their retries reach the breakers' 10 failures in a row within a second or so.
CALLERS = 4
#: Seconds the probe is down from the common start (at most half the run).
OUTAGE = 1.5
#: Seconds of arrival jitter forgiven when the simulator's window is measured.
_TIMING_SLACK = 0.05
#: Seconds between the last worker saying it is ready and the common start.
_START_SLACK = 0.2


def rate_limits_of(plugin: Any) -> Any:
    """The plugin package's ``rate_limits`` function, or ``None``."""
    try:
        module = importlib.import_module(f"resilience_{plugin.name}")
    except ImportError:
        return None
    return getattr(module, "rate_limits", None)


def _where(url: str) -> str:
    """Host and port of a Redis URL (never its password)."""
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1]
    return rest.split("/", 1)[0] or "localhost"


def _redis_answers(url: str) -> str | None:
    """``None`` when Redis answers a PING, else why not (no URL: it may hold a password)."""
    try:
        import redis
    except ImportError:
        return 'needs the redis package: pip install "httpx-resilience[redis]"'
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
    except Exception as exc:
        return f"Redis at {_where(url)} does not answer ({type(exc).__name__})"
    finally:
        client.close()
    return None


def run_fleet(plugin: Any, workers: int, redis_url: str, seconds: float, as_json: bool) -> int:
    """Run the fleet demo for ``plugin``; print the result; return the exit status."""
    problem = _redis_answers(redis_url)
    if problem is not None:
        print(f"resilience demo: {problem}", file=sys.stderr)
        return 2
    result = anyio.run(_fleet, plugin, workers, redis_url, seconds)
    if result is None:
        return 1
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for line in _report(result):
            print(line)
    return 0


async def _fleet(
    plugin: Any, workers: int, redis_url: str, seconds: float
) -> dict[str, Any] | None:
    from ._demo_credentials import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
    from .testing import FaultPlan, Outage, serve

    app = plugin.simulator(
        plan=FaultPlan(token_ttl=TOKEN_TTL),
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
    )
    # One prefix per run: a rerun does not find this run's slots or token.
    prefix = f"resilience-demo-{os.getpid()}-{int(time.time())}"
    async with serve(app) as base_url:
        command = [
            sys.executable,
            "-m",
            "resilience._demo_fleet",
            plugin.name,
            base_url,
            redis_url,
            prefix,
            repr(seconds),
        ]
        outage = min(OUTAGE, seconds / 2)

        def begin(start: float) -> None:
            # The outage starts at the workers' common start, on the simulator's clock.
            at = max(0.0, app.elapsed() + start - time.time())
            down = Outage(start=at, duration=outage, path=plugin.probe)
            app.plan = attrs.evolve(app.plan, outages=(down,))

        outcomes = await anyio.to_thread.run_sync(_spawn, command, workers, seconds, begin)
    reports: list[dict[str, Any]] = []
    for returncode, out, err in outcomes:
        if returncode != 0:
            print(
                f"resilience demo: a worker failed: {err.decode(errors='replace')[-800:]}",
                file=sys.stderr,
            )
            return None
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    received = list(app.received)
    api = [r for r in received if not r.token_request]
    limits = rate_limits_of(plugin)
    limiter = None
    if limits is not None:
        limiter = next(
            (x for x in limits(DEMO_CLIENT_ID) if x.methods is None or "GET" in x.methods), None
        )
    calls = {r.query for r in api}
    for report in reports:
        # The tag is "call=<pid>-<caller>-<n>": this worker's requests the outage failed.
        mine = f"call={report['pid']}-"
        report["outage_answers"] = sum(
            1 for r in api if r.fault == "outage" and r.query.startswith(mine)
        )
    window = (max(r.at for r in api) - min(r.at for r in api)) if api else 0.0
    return {
        "vendor": plugin.name,
        "workers": workers,
        "callers_per_worker": CALLERS,
        "seconds": seconds,
        "redis": _where(redis_url),
        "prefix": prefix,
        "per_worker": reports,
        "sent": len(api),
        "calls": len(calls),
        "outage": outage,
        "outage_answers": sum(1 for r in api if r.fault == "outage"),
        "breaker_opened": sum(w["opened"] for w in reports),
        "window": window,
        "over_limit_answers": sum(1 for r in api if r.fault == "rate_limit"),
        "token_requests": sum(1 for r in received if r.token_request),
        "token_ttl": TOKEN_TTL,
        "limiter": None
        if limiter is None
        else {
            "name": limiter.name,
            "rate": limiter.rate,
            "per": limiter.per,
            "burst": limiter.burst,
            # GCRA's bound over a span, with the network's timing forgiven.
            # It counts calls (each takes one slot), not their retries.
            "bound": limiter.burst
            + math.floor((window + _TIMING_SLACK) * limiter.rate / limiter.per),
        },
        "redis_fallback_calls": sum(w["fallback_calls"] for w in reports),
    }


def _spawn(
    command: list[str], workers: int, seconds: float, begin: Callable[[float], None]
) -> list[tuple[int, bytes, bytes]]:
    """Run ``workers`` copies of ``command`` at once: each one's status, stdout, stderr."""
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(workers)
    ]
    # Interpreters starting at once on a busy machine take seconds: each says when
    # it is ready (or exits), and only then do all get one start instant.
    for process in processes:
        assert process.stdout is not None
        process.stdout.readline()
    start = time.time() + _START_SLACK
    begin(start)
    for process in processes:
        assert process.stdin is not None
        try:
            process.stdin.write(f"{start!r}\n".encode())
            process.stdin.flush()  # communicate() closes it
        except OSError:  # it exited: its status and stderr say why
            pass
    outcomes = []
    for process in processes:
        # Its first line ("ready") was read above: the report is its last line.
        out, err = process.communicate(timeout=seconds + 120)
        outcomes.append((process.returncode, out, err))
    return outcomes


def expected_fetches(seconds: float) -> int:
    """Token fetches a fleet should make in ``seconds``: one at the start and one per
    refresh time (half of :data:`TOKEN_TTL`, the presets' refresh for so short a life)."""
    return math.ceil(seconds / (TOKEN_TTL / 2))


def _report(result: dict[str, Any]) -> list[str]:
    workers = result["workers"]
    lines = [
        f"Fleet: {workers} worker processes x {result['callers_per_worker']} callers for "
        f"{result['seconds']:g} s against the {result['vendor']} simulator, sharing the rate "
        f"limit, the token, the retry budget and the circuit breaker in Redis at "
        f"{result['redis']} (prefix {result['prefix']}); the probe is down for the first "
        f"{result['outage']:g} s.",
        "",
        f"  {'worker':<8}{'calls ended':>12}{'outage failures':>17}{'breaker opened':>16}"
        f"{'tokens fetched':>16}{'Redis fallbacks':>17}",
    ]
    for index, worker in enumerate(result["per_worker"], 1):
        lines.append(
            f"  {index:<8}{worker['ok'] + worker['failed']:>12}{worker['outage_answers']:>17}"
            f"{worker['opened']:>16}"
            f"{worker['fetched']:>16}{worker['fallback_calls']:>17}"
        )
    fetched = sum(w["fetched"] for w in result["per_worker"])
    done = sum(w["ok"] + w["failed"] for w in result["per_worker"])
    most = max((w["outage_answers"] for w in result["per_worker"]), default=0)
    lines.append(
        f"  {'fleet':<8}{done:>12}{result['outage_answers']:>17}"
        f"{result['breaker_opened']:>16}{fetched:>16}"
        f"{result['redis_fallback_calls']:>17}"
    )
    lines.append("")
    limiter = result["limiter"]
    if limiter is None:
        lines.append(f"Rate limit: {result['vendor']} documents none on its probe (GET).")
    else:
        lines.append(
            f"Rate limit: {limiter['name']} ({limiter['burst']} at once, then "
            f"{limiter['rate']:g} per {limiter['per']:g} s, per client id) held across the "
            f"{workers} processes: the fleet sent {result['calls']} calls in "
            f"{result['window']:.1f} s (at most {limiter['bound']} allowed; "
            f"{result['sent']} requests with the retries), and the simulator "
            f"answered {result['over_limit_answers']} of them over its limit."
        )
    refresh = TOKEN_TTL / 2
    expiries = expected_fetches(result["seconds"])
    lines.append(
        f"Tokens: {result['token_requests']} token request(s) from the whole fleet for a "
        f"token living {result['token_ttl']:g} s, refreshed every {refresh:g} s over "
        f"{result['seconds']:g} s (one per refresh: {expiries}); each process fetching its "
        f"own would have made about {expiries * workers}."
    )
    lines.append(
        f"Breaker: shared. The probe's {result['outage']:g} s outage drew "
        f"{result['outage_answers']} failed requests from the whole fleet (at most "
        f"{most} from one worker): the breaker opens on 10 failures in a row counted across "
        f"all the workers, so it opened once for the fleet, each worker that called during "
        f"the break followed it ({result['breaker_opened']} worker(s)), and a successful "
        "probe closed it for all."
    )
    return lines


def _worker(vendor: str, base_url: str, redis_url: str, prefix: str, seconds: float) -> None:
    import httpx

    from ._demo_credentials import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
    from ._events import CircuitStateChanged, TokenRefreshed
    from ._loader import load_plugin
    from ._presets import standard_pipeline
    from ._redis_store import RedisStore
    from ._transport import ResilientTransport
    from .errors import ResilienceError

    plugin = load_plugin(vendor)

    async def main() -> dict[str, int]:
        store = RedisStore(url=redis_url, prefix=prefix, timeout=0.5)
        fetched: list[object] = []
        opened: list[object] = []

        def hook(event: object) -> None:
            if isinstance(event, TokenRefreshed):
                fetched.append(event)
            elif isinstance(event, CircuitStateChanged) and event.old == "closed":
                opened.append(event)

        limits = rate_limits_of(plugin)
        provider = plugin.token_provider(
            client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET, base_url=base_url
        )
        pipeline = standard_pipeline(
            vendor,
            auth=provider,
            rate_limits=() if limits is None else limits(DEMO_CLIENT_ID, max_wait=None),
            store=store,
            telemetry=False,
            raise_on_failure=False,
            hooks=[hook],
        )
        counts = {"ok": 0, "failed": 0}
        transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            print("ready", flush=True)
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            await anyio.sleep(max(0.0, float(line) - time.time()))

            async def caller(index: int) -> None:
                # Each call carries its own id: the simulator tells calls from retries.
                for n in itertools.count():
                    tag = {"call": f"{os.getpid()}-{index}-{n}"}
                    try:
                        response = await client.get(plugin.probe, params=tag)
                    except ResilienceError:  # e.g. the shared breaker's probe is busy
                        counts["failed"] += 1
                        continue
                    counts["ok" if response.status_code < 400 else "failed"] += 1

            # Callers waiting for a slot at the end give it up, unused.
            with anyio.move_on_after(seconds):
                async with anyio.create_task_group() as group:
                    for index in range(CALLERS):
                        group.start_soon(caller, index)
        await store.aclose()
        return {
            **counts,
            "fetched": len(fetched),
            "opened": len(opened),
            "pid": os.getpid(),
            "fallback_calls": store.fallback_calls,
        }

    print(json.dumps(anyio.run(main)))


def _main(argv: Sequence[str]) -> None:
    vendor, base_url, redis_url, prefix, seconds = argv
    _worker(vendor, base_url, redis_url, prefix, float(seconds))


if __name__ == "__main__":
    _main(sys.argv[1:])
