"""What ``import resilience`` costs next to ``import httpx`` (issue 12: at most 1.5 times).

Run it with ``python benchmarks/import_time.py`` (``--runs 20`` by default). Each
statement runs as ``python -c STATEMENT`` in a fresh interpreter, in rounds that
time every statement in turn, and the table shows the fastest run of each (the
least disturbed by the rest of the machine) and its ratio to ``import httpx``, in
wall-clock time and in CPU time (user + system, from ``os.wait4``; steadier when
other work shares the machine).

* **Cached bytecode, as users have it.** The children run without
  ``PYTHONDONTWRITEBYTECODE`` and with ``PYTHONPYCACHEPREFIX`` pointing at a
  directory of their own (``--pycache``), and one warm-up round writes it, so no
  statement pays for compiling.
* **Which installation.** ``--python`` picks the interpreter (default: this one);
  the children run in a scratch directory, so the checkout on the current
  directory does not shadow what that interpreter has installed. In the dev
  virtualenv httpx imports rich and click (``httpx._main``) because they are
  installed, which makes ``import httpx`` slower and the ratio look better; the
  honest figure comes from a virtualenv holding only the core's dependencies::

      python -m venv /tmp/clean && /tmp/clean/bin/pip install .
      python benchmarks/import_time.py --python /tmp/clean/bin/python

* **Rows.** ``import resilience`` loads the engine (pipeline, transport, client,
  verdicts, classifiers, events, errors); layers, token providers, stores, presets
  and the plugin kit load on first use, so the quickstart's import line and
  ``from resilience import *`` (everything) are shown too. OpenTelemetry loads
  only when the first pipeline with telemetry is built: the last row builds one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

STATEMENTS = [
    ("python -c pass (interpreter start)", "pass"),
    ("import httpx", "import httpx"),
    ("import resilience", "import resilience"),
    (
        "the quickstart's imports",
        "from resilience import AsyncClient, CircuitBreaker, ExponentialBackoff,"
        " Pipeline, Retry, Timeout",
    ),
    ("from resilience import * (everything)", "from resilience import *"),
    (
        "... and build Pipeline([Retry()]) (loads OpenTelemetry)",
        "import resilience; resilience.Pipeline([resilience.Retry()])",
    ),
]
BASELINE = "import httpx"
TARGET = 1.5


def _environment(pycache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def _run_once(python: str, statement: str, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one fresh interpreter."""
    started = time.perf_counter()
    child = subprocess.Popen([python, "-c", statement], env=env, cwd=cwd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{statement!r} failed with exit code {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _describe(python: str, env: dict[str, str], cwd: str) -> str:
    probe = (
        "import sys, importlib.util as u, httpx, resilience; "
        "print(sys.version.split()[0], httpx.__version__, resilience.__file__, "
        "[m for m in ('rich', 'click') if u.find_spec(m)])"
    )
    done = subprocess.run(
        [python, "-c", probe], env=env, cwd=cwd, check=False, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{python} cannot import httpx and resilience:\n{done.stderr}")
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument(
        "--pycache",
        default=os.path.join(tempfile.gettempdir(), "resilience-import-time-pyc"),
        help="PYTHONPYCACHEPREFIX for the children",
    )
    args = parser.parse_args()
    # The children run elsewhere: a relative path must not change meaning (and a
    # virtualenv's python is not resolved through its symlink, which would leave it).
    python = shutil.which(args.python) or args.python
    args.python = os.path.abspath(python)
    env = _environment(args.pycache)
    with tempfile.TemporaryDirectory() as scratch:
        described = _describe(args.python, env, scratch)
        print(f"python, httpx, resilience, rich/click installed: {described}")
        for _, statement in STATEMENTS:  # writes the cached bytecode
            _run_once(args.python, statement, env, scratch)
        best = {statement: float("inf") for _, statement in STATEMENTS}
        best_cpu = dict(best)
        for _ in range(args.runs):
            for _, statement in STATEMENTS:
                wall, cpu = _run_once(args.python, statement, env, scratch)
                best[statement] = min(best[statement], wall)
                best_cpu[statement] = min(best_cpu[statement], cpu)
    baseline, baseline_cpu = best[BASELINE], best_cpu[BASELINE]
    width = max(len(label) for label, _ in STATEMENTS)
    print(f"\nmin of {args.runs} fresh interpreters, cached bytecode (CPU: user + system)")
    print(
        f"{'statement':<{width}}  {'wall ms':>7}  {'vs httpx':>8}  {'CPU ms':>7}  {'vs httpx':>8}"
    )
    print("-" * (width + 40))
    for label, statement in STATEMENTS:
        wall, cpu = best[statement], best_cpu[statement]
        print(
            f"{label:<{width}}  {wall * 1000:7.1f}  {wall / baseline:8.2f}"
            f"  {cpu * 1000:7.1f}  {cpu / baseline_cpu:8.2f}"
        )
    ratio = best["import resilience"] / baseline
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"\nimport resilience / import httpx = {ratio:.2f} ({verdict} the {TARGET} target)")


if __name__ == "__main__":
    main()
