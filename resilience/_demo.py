"""``resilience demo``: the vendor simulators, served for real, and presets against them.

For every installed plugin that ships a simulator, a preset and a token flow, the
demo serves the simulator with uvicorn on a loopback port (with a fault plan that
injects the vendor's own transient errors), sends a burst of calls through
``standard_pipeline(vendor)`` over real HTTP, and prints what happened. Backoff
waits run on a :class:`~resilience.testing.VirtualClock`, so the demo takes
seconds, not minutes. ``--serve`` only serves the simulators until interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from ._classifier import available_classifiers, load_plugin
from ._clock import VirtualClock
from ._pipeline import Pipeline
from ._presets import standard_pipeline
from ._transport import ResilientTransport
from ._verdict import Action

__all__ = ["main"]

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret-not-real"


def _demo_plugins(names: Sequence[str] | None) -> list[Any]:
    chosen = names or [n for n in available_classifiers() if n != "http"]
    plugins = []
    for name in chosen:
        plugin = load_plugin(name)
        if all(getattr(plugin, part, None) is not None for part in ("simulator", "preset")):
            plugins.append(plugin)
    return plugins


def _fault_plan(plugin: Any, rate: float, seed: int) -> Any:
    from ._simulator import FaultPlan

    codes = getattr(plugin, "codes", None) or {}
    transient = [code for code, entry in codes.items() if entry.action is Action.RETRY]
    if not transient or rate <= 0:
        return FaultPlan(seed=seed)
    each = rate / len(transient)
    return FaultPlan(errors={code: each for code in transient}, seed=seed)


async def _run_vendor(plugin: Any, calls: int, rate: float, seed: int) -> None:
    from ._simulator import serve

    app = plugin.simulator(
        plan=_fault_plan(plugin, rate, seed),
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
    )
    async with serve(app) as base_url:
        auth = None
        if plugin.token_provider is not None:
            auth = plugin.token_provider(
                client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET, base_url=base_url
            )
        clock = VirtualClock()
        pipeline: Pipeline = standard_pipeline(plugin.name, auth=auth, clock=clock)
        outcomes: collections.Counter[str] = collections.Counter()
        attempts = 0
        path = plugin.probe or "/"
        transport = ResilientTransport(pipeline)
        async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:
            for _ in range(calls):
                try:
                    response = await client.get(path)
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1
                    report = getattr(exc, "report", None)
                    attempts += report.attempts if report is not None else 1
                else:
                    report = response.extensions["resilience"]
                    attempts += report.attempts
                    label = "partial success" if report.partial else "success"
                    outcomes[label] += 1
    print(f"\n{plugin.name}: {calls} calls to GET {path} at {base_url}")
    print(f"  injected transient error rate: {rate:.0%} per request")
    for label, count in outcomes.most_common():
        print(f"  {label:<22} {count:>5}")
    print(f"  attempts sent          {attempts:>5}  ({attempts / max(calls, 1):.2f} per call)")
    print(f"  backoff slept          {sum(clock.sleeps):>8.1f} s (virtual)")


async def _serve_all(plugins: Sequence[Any]) -> None:
    from ._simulator import serve

    async with anyio.create_task_group() as group:
        for plugin in plugins:
            app = plugin.simulator(client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)

            async def one(name: str = plugin.name, app: Any = app) -> None:
                async with serve(app) as base_url:
                    print(f"{name}: {base_url}  (client_id={DEMO_CLIENT_ID})", flush=True)
                    await anyio.sleep_forever()

            group.start_soon(one)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``resilience`` command line."""
    parser = argparse.ArgumentParser(prog="resilience", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="serve the vendor simulators and run presets against them")
    demo.add_argument("--vendor", action="append", help="a plugin name (repeatable)")
    demo.add_argument("--calls", type=int, default=30, help="calls per vendor (default 30)")
    demo.add_argument(
        "--error-rate", type=float, default=0.2, help="injected transient errors (default 0.2)"
    )
    demo.add_argument("--seed", type=int, default=7, help="fault plan seed")
    demo.add_argument("--serve", action="store_true", help="only serve the simulators")
    sub.add_parser("plugins", help="list the installed classifier plugins")
    args = parser.parse_args(argv)
    if args.command == "plugins":
        for name in available_classifiers():
            description = getattr(load_plugin(name), "description", "") or ""
            print(f"{name:<10} {description}")
        return 0
    try:
        plugins = _demo_plugins(args.vendor)
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not plugins:
        print(
            "no plugin with a simulator is installed: pip install resilience-tellus",
            file=sys.stderr,
        )
        return 2
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print("the demo needs uvicorn: pip install 'resilience[demo]'", file=sys.stderr)
        return 2
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(_serve_all, plugins)
        return 0

    async def run_all() -> None:
        for plugin in plugins:
            await _run_vendor(plugin, args.calls, args.error_rate, args.seed)

    anyio.run(run_all)
    return 0
