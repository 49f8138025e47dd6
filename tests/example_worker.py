"""Runs the documentation's examples for ``tests/test_examples.py``.

Not a test module: the test starts it once, writes one JSON line per example
(``{"id", "code", "filename", "backend"}``) and closes its stdin; it answers one
JSON line per example (``{"id", "status", "stdout", "stderr"}``) as each ends. It
imports what the examples use once, then forks a fresh child per example, a few
at a time, so each example starts warm (a few milliseconds instead of half a
second of imports) yet alone: an example that sets the global OpenTelemetry
providers, starts a server or leaves a thread behind cannot touch another one,
nor the pytest process.

In the child, as a user's pasted copy would, an example runs as ``__main__``, with
two test-only changes that do not alter what it prints:

* ``anyio.run(main)`` runs on the backend under test (asyncio or trio);
* the real clock (:class:`resilience.SystemClock`) skips waits longer than a
  polling interval and moves its time on instead, so an example with 30-second
  backoffs takes milliseconds while printing what a real run prints. (Until
  ``resilience`` has its own switch for this, it is a patch of the class.)

Warnings are errors there, as in the test suite.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import Any

# What examples import, loaded before the first fork. A missing one is fine: the
# example that needs it fails with its own ImportError.
PRELOAD = (
    "anyio",
    "httpx",
    "trio",
    "uvicorn",
    "resilience",
    "resilience.errors",
    "resilience.testing",
    "resilience_tellus",
    "resilience_tellus.testing",
    "resilience_turris",
    "resilience_turris.testing",
    "resilience_derapi",
    "resilience_derapi.testing",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.trace.export.in_memory_span_exporter",
    "opentelemetry.sdk.metrics",
    "opentelemetry.sdk.metrics.export",
    "opentelemetry.instrumentation.httpx",
    "respx",
)

# An example that takes longer than this hangs: the child is killed.
TIME_LIMIT = 60

# Examples run at once (they mostly wait on loopback servers and threads).
PARALLEL = 8

# Waits up to this long stay real: they are polls of another thread (a server
# starting), which virtual time would turn into a busy loop.
REAL_WAIT = 0.05


def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _quick_system_clock() -> None:
    import anyio
    import anyio.lowlevel

    from resilience import SystemClock

    skipped = [0.0]
    real_now = SystemClock.now

    def now(self: SystemClock) -> float:
        return real_now(self) + skipped[0]

    async def sleep(self: SystemClock, seconds: float) -> None:
        if seconds > REAL_WAIT:
            skipped[0] += seconds
            await anyio.lowlevel.checkpoint()
        elif seconds > 0:
            await anyio.sleep(seconds)
        else:
            await anyio.lowlevel.checkpoint()

    SystemClock.now = now  # type: ignore[method-assign]
    SystemClock.sleep = sleep  # type: ignore[method-assign]


def _on_backend(backend: str) -> None:
    import anyio

    real_run = anyio.run

    def run(func: Any, *args: Any, backend: str = backend, backend_options: Any = None) -> Any:
        return real_run(func, *args, backend=backend, backend_options=backend_options)

    anyio.run = run  # type: ignore[assignment]


def _execute(request: dict[str, Any]) -> None:
    """Run one example in this process (the child) and exit with its status."""
    status = 0
    try:
        warnings.simplefilter("error")
        if request.get("backend") in ("asyncio", "trio"):
            _on_backend(request["backend"])
        _quick_system_clock()
        code = compile(request["code"], request["filename"], "exec", dont_inherit=True)
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(status)


class _Running:
    """A forked child running one example, and where its output goes."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        # Closed in result(), once the child has exited.
        self.out = tempfile.TemporaryFile()  # noqa: SIM115
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.scratch = tempfile.TemporaryDirectory()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: it never returns from _execute
            signal.alarm(TIME_LIMIT)
            os.dup2(self.out.fileno(), 1)
            os.dup2(self.err.fileno(), 2)
            os.chdir(self.scratch.name)  # whatever an example writes goes away with it
            _execute(request)

    def result(self, wait_status: int) -> dict[str, Any]:
        if os.WIFSIGNALED(wait_status):
            signum = os.WTERMSIG(wait_status)
            status = "timed out" if signum == signal.SIGALRM else f"killed by signal {signum}"
        else:
            status = "ok" if os.WEXITSTATUS(wait_status) == 0 else "failed"
        self.out.seek(0)
        self.err.seek(0)
        result = {
            "id": self.request.get("id"),
            "status": status,
            "stdout": self.out.read().decode("utf-8", "replace"),
            "stderr": self.err.read().decode("utf-8", "replace"),
        }
        self.out.close()
        self.err.close()
        self.scratch.cleanup()
        return result


def _run_forked(requests: list[dict[str, Any]]) -> None:
    # Examples mostly wait (a server starting, a thread joining): run a few at once.
    pending = list(reversed(requests))
    running: dict[int, _Running] = {}
    while pending or running:
        while pending and len(running) < PARALLEL:
            child = _Running(pending.pop())
            running[child.pid] = child
        pid, wait_status = os.waitpid(-1, 0)
        child = running.pop(pid)
        _answer(child.result(wait_status))


def _answer(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _run_spawned(request: dict[str, Any]) -> dict[str, Any]:
    # Where there is no fork: a fresh interpreter per example (slower, same isolation).
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--one"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"id": request.get("id"), "status": "timed out", "stdout": "", "stderr": ""}
    return {
        "id": request.get("id"),
        "status": "ok" if done.returncode == 0 else "failed",
        "stdout": done.stdout,
        "stderr": done.stderr,
    }


def main() -> None:
    if sys.argv[1:] == ["--one"]:
        _execute(json.loads(sys.stdin.read()))
    # All requests come first (stdin closed), then the answers, in any order.
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    if hasattr(os, "fork"):
        _preload()
        _run_forked(requests)
    else:
        for request in requests:
            _answer(_run_spawned(request))


if __name__ == "__main__":
    main()
