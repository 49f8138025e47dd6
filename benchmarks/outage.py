"""The outage benchmark: retry libraries side by side against a server that fails for a while.

Run it with ``python benchmarks/outage.py`` (``--quick`` for a smoke run,
``--libs``/``--rates`` for a subset). For each rate and each library it starts a
fresh loopback server (``_outage_server.py``: uvicorn on 127.0.0.1, a free port)
that is healthy for 4 s, answers HTTP 500 for 8 s, then is healthy for 8 s, and a
fresh process for the library (``_outage_worker.py``) that starts one call every
``1/rate`` seconds (open loop) with the same policy for everyone: 5 attempts,
waits of 0.1 s doubling up to 2 s, at most 15 s per call, over a pool of 20
kept-alive connections. Attempts are counted
twice: by the server, and under each library by a counting transport that wraps
``httpx.AsyncHTTPTransport``.

The libraries: plain httpx (no retry), tenacity, stamina, httpx-retries, tenacity
with a purgatory breaker (5 consecutive failures, 2 s break), our ``Retry`` (the
default budget), our ``Retry`` over a ``CircuitBreaker(break_duration=2)``, and
each vendor preset ``standard_pipeline(vendor, auth=StaticToken(...))`` with its
shipped settings but the 15 s cap (``--preset-policy common`` gives the presets
the common retry policy too). A library that is not installed is skipped with a
note.

It prints a markdown table, writes ``benchmarks/results/outage-<rate>.json`` (merged
with earlier rows of the same settings) and draws load and success over time into
``docs/img/outage.png``. Every run is bounded: arrivals stop at the end of the
phases, each call at the cap, each process at a timeout, and the server exits on
its own.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "_outage_server.py"
WORKER = HERE / "_outage_worker.py"
RESULTS = HERE / "results"
PNG = ROOT / "docs" / "img" / "outage.png"

LIBS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (row label, modules it needs)
    "httpx": ("plain httpx (no retry)", ()),
    "tenacity": ("tenacity", ("tenacity",)),
    "stamina": ("stamina", ("stamina",)),
    "httpx-retries": ("httpx-retries", ("httpx_retries",)),
    "tenacity+purgatory": ("tenacity + purgatory", ("tenacity", "purgatory")),
    "retry": ("our Retry (default budget)", ()),
    "retry+breaker": ("our Retry over a CircuitBreaker (2 s break)", ()),
    "tellus": ('standard_pipeline("tellus")', ("resilience_tellus",)),
    "turris": ('standard_pipeline("turris")', ("resilience_turris",)),
    "derapi": ('standard_pipeline("derapi")', ("resilience_derapi",)),
}
PEERS = ("httpx", "tenacity", "stamina", "httpx-retries", "purgatory", "uvicorn", "httptools")

SUCCESS_BUCKET = 0.5
"""Seconds per arrival bucket for the success series and the recovery time."""
RECOVERED = 0.95
"""The success share that counts as recovered."""


# -- running ----------------------------------------------------------------------


def niced(command: list[str], nice: int) -> list[str]:
    """``command`` under ``nice -n`` (a negative value needs root: raise the priority
    of the benchmark's own processes over whatever else the machine runs)."""
    return ["nice", "-n", str(nice), *command] if nice else command


def start_server(
    max_seconds: float, log: Path, nice: int = 0
) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh server process and the port it bound."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            niced([sys.executable, str(SERVER), "--max-seconds", f"{max_seconds:.0f}"], nice),
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20.0)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        stop(proc)
        raise RuntimeError(f"the server did not start (see {log})")
    return proc, int(line)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)


def machine_busy(seconds: float = 1.0) -> float | None:
    """The share of all CPUs busy over ``seconds`` (from /proc/stat; None elsewhere)."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields]
        return sum(ticks), ticks[3] + (ticks[4] if len(ticks) > 4 else 0)

    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[0] == first[0]:
        return None
    return 1.0 - (second[1] - first[1]) / (second[0] - first[0])


def wait_quiet(limit: float, threshold: float = 0.25) -> float | None:
    """Wait up to ``limit`` seconds for the machine to be less than ``threshold`` busy."""
    deadline = time.monotonic() + limit
    busy = machine_busy()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        busy = machine_busy()
    return busy


def process_cpu(pid: int) -> float | None:
    """CPU seconds a process used so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def server_stats(port: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        answer = client.get("/_bench/stats")
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats


def missing_module(lib: str) -> str | None:
    for module in LIBS[lib][1]:
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    return None


def run_one(lib: str, rate: float, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """One library at one rate: a fresh server, a fresh worker; the raw result."""
    missing = missing_module(lib)
    if missing is not None:
        return {"lib": lib, "skipped": missing}
    total = args.healthy + args.outage + args.recover
    # Imports, warm-up, the phases, the calls still in flight, the drain.
    budget = total + args.cap + 60.0
    busy = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else machine_busy()
    server, port = start_server(max_seconds=budget + 30.0, log=log, nice=args.nice)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            command = [
                sys.executable,
                str(WORKER),
                f"--lib={lib}",
                f"--port={port}",
                f"--rate={rate}",
                f"--healthy={args.healthy}",
                f"--outage={args.outage}",
                f"--recover={args.recover}",
                f"--cap={args.cap}",
                f"--preset-policy={args.preset_policy}",
                f"--connections={args.connections}",
                f"--out={out}",
            ]
            started = time.monotonic()
            try:
                done = subprocess.run(
                    niced(command, args.nice), capture_output=True, timeout=budget, check=False
                )
            except subprocess.TimeoutExpired:
                return {"lib": lib, "skipped": f"worker timed out after {budget:.0f} s"}
            with log.open("ab") as err:
                err.write(done.stderr)
            if done.returncode != 0 or not out.exists():
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                return {"lib": lib, "skipped": f"worker failed: {tail[0][:200]}"}
            result: dict[str, Any] = json.loads(out.read_text())
            result["wall_seconds"] = time.monotonic() - started
        if "skipped" not in result:
            result["server"] = server_stats(port)
            result["server_cpu_seconds"] = process_cpu(server.pid)
            result["machine_busy_before"] = busy
        return result
    finally:
        stop(server)


# -- measuring --------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


def window_sum(counts: list[int], bucket: float, start: float, end: float) -> int:
    first = max(0, round(start / bucket))
    last = min(len(counts), round(end / bucket))
    return sum(counts[first:last])


def measures(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The table's figures (and the plot's series) from one worker's raw result."""
    rate = float(raw["rate"])
    healthy, outage, recover = args.healthy, args.outage, args.recover
    outage_end = healthy + outage
    total = outage_end + recover
    server = raw["server"]
    bucket = float(server["bucket"])
    load = [ok + failed for ok, failed in zip(server["ok"], server["failed"], strict=True)]
    client = raw["client_attempts"]
    client_bucket = float(raw["client_bucket"])
    arrivals: list[float] = raw["arrivals"]
    latencies: list[float | None] = raw["latencies"]

    def arrived(start: float, end: float) -> list[int]:
        return [i for i, t in enumerate(arrivals) if start <= t < end]

    in_outage = arrived(healthy, outage_end)
    offered = max(len(in_outage), 1)
    server_per_call = window_sum(load, bucket, healthy, outage_end) / offered
    client_per_call = window_sum(client, client_bucket, healthy, outage_end) / offered

    # Load in 1 s windows from t0, as a multiple of the offered calls per second.
    windows = [window_sum(load, bucket, k, k + 1) / rate for k in range(math.ceil(total))]
    outage_windows = [windows[k] for k in range(len(windows)) if healthy <= k < outage_end]
    after = window_sum(load, bucket, outage_end, outage_end + 1) / rate

    outage_success = sum(latencies[i] is not None for i in in_outage) / offered

    # Success of calls by arrival time, in 0.5 s buckets; recovered at the first
    # bucket after the outage from which every later bucket is at least 95%.
    success_series = []
    for b in range(math.ceil(total / SUCCESS_BUCKET)):
        calls = arrived(b * SUCCESS_BUCKET, (b + 1) * SUCCESS_BUCKET)
        share = sum(latencies[i] is not None for i in calls) / len(calls) if calls else None
        success_series.append(share)
    first_after = round(outage_end / SUCCESS_BUCKET)
    recovered_at: float | None = None
    for b in range(first_after, len(success_series)):
        later = [s for s in success_series[b:] if s is not None]
        if later and min(later) >= RECOVERED:
            recovered_at = (b - first_after) * SUCCESS_BUCKET
            break

    healthy_ok = [latencies[i] for i in arrived(0.0, healthy) if latencies[i] is not None]
    healthy_failed = len(arrived(0.0, healthy)) - len(healthy_ok)
    lags: list[float] = raw["lags"]
    steps = round(SUCCESS_BUCKET / bucket)
    load_series = [
        sum(load[i : i + steps]) / (rate * SUCCESS_BUCKET)
        for i in range(0, round(total / bucket), steps)
    ]

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    return {
        "server_requests_per_call_outage": server_per_call,
        "client_attempts_per_call_outage": client_per_call,
        "peak_load": max(windows) if windows else None,
        "peak_load_outage": max(outage_windows) if outage_windows else None,
        "load_first_second_after": after,
        "outage_arrival_success": outage_success,
        "recovery_seconds": recovered_at,
        "lag_max_ms": ms(max(lags) if lags else None),
        "lag_p99_ms": ms(percentile(lags, 0.99)),
        "healthy_p50_ms": ms(percentile(healthy_ok, 0.50)),  # type: ignore[arg-type]
        "healthy_p99_ms": ms(percentile(healthy_ok, 0.99)),  # type: ignore[arg-type]
        "healthy_failed": healthy_failed,
        "calls": len(arrivals),
        "succeeded": sum(x is not None for x in latencies),
        "errors": raw["errors"],
        "unfinished": raw["unfinished"],
        "max_late_start_ms": ms(raw["max_late_start"]),
        "client_cpu_ms_per_call": 1000.0 * raw["cpu_seconds"] / max(len(arrivals), 1),
        "server_cpu_seconds": raw.get("server_cpu_seconds"),
        "machine_busy_before": raw.get("machine_busy_before"),
        "server_requests_total": sum(load),
        "server_requests_after_horizon": server["after"],
        "client_attempts_total": sum(client) + raw["client_attempts_after"],
        "wall_seconds": raw.get("wall_seconds"),
        "series": {
            "bucket": SUCCESS_BUCKET,
            "load": load_series,
            "success": success_series,
        },
    }


# -- reporting --------------------------------------------------------------------


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def table(rate: float, rows: list[tuple[str, dict[str, Any]]]) -> str:
    header = (
        f"| at {rate:g} calls/s | server requests per call in the outage | peak load vs offered"
        " | peak in the outage | first second after | success of calls arriving in the outage"
        " | outage end -> 95% success | loop lag max / p99 | healthy p50 / p99"
        " | client CPU per call |"
    )
    lines = [header, "|" + "---|" * 10]
    for lib, row in rows:
        label = LIBS[lib][0]
        if "skipped" in row:
            lines.append(f"| {label} | skipped: {row['skipped']} |" + " |" * 8)
            continue
        recovery = row["recovery_seconds"]
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    fmt(row["server_requests_per_call_outage"], ".2f")
                    + f" ({fmt(row['client_attempts_per_call_outage'], '.2f')})",
                    fmt(row["peak_load"], ".1f", "x"),
                    fmt(row["peak_load_outage"], ".1f", "x"),
                    fmt(row["load_first_second_after"], ".1f", "x"),
                    fmt(100 * row["outage_arrival_success"], ".1f", "%"),
                    "**never**" if recovery is None else f"{recovery:.1f} s",
                    f"{fmt(row['lag_max_ms'], '.0f')} / {fmt(row['lag_p99_ms'], '.0f')} ms",
                    f"{fmt(row['healthy_p50_ms'], '.1f')} / {fmt(row['healthy_p99_ms'], '.1f')} ms",
                    fmt(row["client_cpu_ms_per_call"], ".2f", " ms"),
                ]
            )
            + " |"
        )
    busy = [r["machine_busy_before"] for _, r in rows if r.get("machine_busy_before") is not None]
    if busy:
        lines.append("")
        lines.append(
            f"machine busy in the second before each run: {100 * min(busy):.0f}% to"
            f" {100 * max(busy):.0f}% of {os.cpu_count()} CPUs (others' work skews the figures)"
        )
    return "\n".join(lines)


def git(*command: str) -> str:
    try:
        done = subprocess.run(
            ["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip()


def versions() -> dict[str, str]:
    found = {}
    for name in (*PEERS, "resilience", "matplotlib"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "healthy": args.healthy,
        "outage": args.outage,
        "recover": args.recover,
        "cap": args.cap,
        "preset_policy": args.preset_policy,
        "nice": args.nice,
        "connections": args.connections,
    }


def save(rate: float, rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> Path:
    """Merge ``rows`` into ``results/outage-<rate>.json`` (kept only if settings match)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"outage-{rate:g}.json"
    data: dict[str, Any] = {"rate": rate, "settings": settings(args), "libs": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("settings") == data["settings"]:
                data["libs"] = old.get("libs", {})
        except (OSError, ValueError):
            pass
    stamp = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("log", "-1", "--oneline"),
        "dirty": git("status", "--short").splitlines(),
        "python": platform.python_version(),
        "versions": versions(),
    }
    for lib, row in rows.items():
        data["libs"][lib] = {**row, "run": stamp}
    path.write_text(json.dumps(data, indent=1))
    return path


def plot(wanted: dict[str, Any], png: Path) -> Path | None:
    """Load and success over time per library, from every results file whose settings
    are ``wanted`` (so a partial run redraws the whole figure), one column per rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return None
    data = []
    for path in RESULTS.glob("outage-*.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("settings") == wanted:
            data.append(result)
    data.sort(key=lambda result: float(result["rate"]))
    if not data:
        print("no results to plot")
        return None
    palette = plt.get_cmap("tab10")
    colors = {lib: palette(i % 10) for i, lib in enumerate(LIBS)}
    fig, axes = plt.subplots(
        2, len(data), figsize=(7.5 * len(data), 8), squeeze=False, sharex="col"
    )
    for column, result in enumerate(data):
        phases = result["settings"]
        start = phases["healthy"]
        end = start + phases["outage"]
        load_ax, success_ax = axes[0][column], axes[1][column]
        for lib in LIBS:
            row = result["libs"].get(lib)
            if row is None or "series" not in row:
                continue
            series = row["series"]
            step = series["bucket"]
            style = {"color": colors[lib], "label": LIBS[lib][0], "linewidth": 1.4}
            # Each value holds for its whole bucket: repeat the last one at the end.
            load = [*series["load"], *series["load"][-1:]]
            load_ax.step([i * step for i in range(len(load))], load, where="post", **style)
            share = [math.nan if s is None else 100 * s for s in series["success"]]
            share = [*share, *share[-1:]]
            success_ax.step([i * step for i in range(len(share))], share, where="post", **style)
        for ax in (load_ax, success_ax):
            ax.axvspan(start, end, color="0.9", zorder=0)
            ax.grid(alpha=0.3)
        load_ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8)
        load_ax.set_title(f"{result['rate']:g} calls/s: server load (outage shaded)")
        load_ax.set_ylabel("server requests / offered calls (0.5 s buckets)")
        success_ax.set_title(f"{result['rate']:g} calls/s: success of calls, by arrival time")
        success_ax.set_ylabel("% of calls that succeeded")
        success_ax.set_xlabel("seconds since start")
        success_ax.set_ylim(-3, 103)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2 * len(data), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated: {','.join(LIBS)}")
    parser.add_argument("--rates", default="50,200", help="calls per second, comma-separated")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s healthy, 2 s outage, 2 s, 5 s cap"
    )
    parser.add_argument("--healthy", type=float, help="seconds healthy first (default 4)")
    parser.add_argument("--outage", type=float, help="seconds of HTTP 500 (default 8)")
    parser.add_argument("--recover", type=float, help="seconds healthy after (default 8)")
    parser.add_argument("--cap", type=float, help="seconds per call at most (default 15)")
    parser.add_argument(
        "--preset-policy",
        choices=("shipped", "common"),
        default="shipped",
        help="presets keep their own retry settings (shipped) or take the common policy",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be under 25%% busy",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=20,
        help="connections in each library's pool, all kept alive (default 20)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and the library under `nice -n N` (e.g. -10, as root)",
    )
    parser.add_argument("--png", type=Path, default=PNG, help="where the figure goes")
    parser.add_argument("--no-png", action="store_true")
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the PNG from the saved results of the same settings (phases, cap, ...)",
    )
    args = parser.parse_args(argv)
    defaults = (1.0, 2.0, 2.0, 5.0) if args.quick else (4.0, 8.0, 8.0, 15.0)
    for name, default in zip(("healthy", "outage", "recover", "cap"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.lib_list = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in args.lib_list if lib not in LIBS]
    if unknown:
        parser.error(f"unknown --libs {', '.join(unknown)}; known: {', '.join(LIBS)}")
    args.rate_list = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    if not args.rate_list or any(not 0 < rate <= 2000 for rate in args.rate_list):
        parser.error("--rates must be between 0 and 2000 calls/s")
    for name in ("healthy", "outage", "recover", "cap"):
        value = getattr(args, name)
        if not 0 < value <= 600:
            parser.error(f"--{name} must be in (0, 600] seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only:
        png = plot(settings(args), args.png)
        print(f"wrote {png}" if png else "no PNG written")
        return 0
    total = args.healthy + args.outage + args.recover
    runs = len(args.lib_list) * len(args.rate_list)
    print(
        f"phases {args.healthy:g} s healthy, {args.outage:g} s HTTP 500,"
        f" {args.recover:g} s healthy;"
        f" cap {args.cap:g} s; {runs} runs of about {total + 3:.0f} s"
        f" (up to {total + args.cap + 5:.0f} s) each",
        flush=True,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "outage-stderr.log"
    log.write_bytes(b"")
    for rate in args.rate_list:
        rows: dict[str, dict[str, Any]] = {}
        for lib in args.lib_list:
            print(f"  {rate:g} calls/s, {lib} ...", end=" ", flush=True)
            try:
                raw = run_one(lib, rate, args, log)
            except Exception as exc:  # a broken run is a row with a note, not a crash
                raw = {"lib": lib, "skipped": f"{type(exc).__name__}: {exc}"[:200]}
            rows[lib] = raw if "skipped" in raw else measures(raw, args)
            print(rows[lib].get("skipped") or f"{rows[lib]['wall_seconds']:.1f} s", flush=True)
        path = save(rate, rows, args)
        print()
        print(table(rate, list(rows.items())))
        print(f"\n(in brackets: attempts counted by the client-side transport) -> {path}\n")
    print("git log -1 --oneline:", git("log", "-1", "--oneline"))
    dirty = git("status", "--short")
    print("git status --short:", "clean" if not dirty else "\n" + dirty)
    if not args.no_png:
        png = plot(settings(args), args.png)
        if png is not None:
            print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
