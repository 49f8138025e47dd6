"""The ``resilience`` command line: ``demo`` (plain httpx against each preset), its
options, its numbers (checked against what the simulators applied), and ``plugins``.

The runs go through the real command (``main`` in process, or a subprocess where
the interpreter's flags or signals matter) against the simulators on loopback; the
demo's waits run on its virtual clock, so each run takes well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import _demo
from resilience._demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, main

VENDORS = ["derapi", "tellus", "turris"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def half_faulty() -> dict[str, Any]:
    """One JSON run of every vendor with half the requests faulted (shared: ~1 s)."""
    code, out, _ = _run(["demo", "--json", "--calls", "16", "--error-rate", "0.5"])
    assert code == 0
    return dict(json.loads(out))


def _by_vendor(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["vendor"]: entry for entry in document["vendors"]}


# --------------------------------------------------------------------------------------
# plugins


def test_plugins_lists_every_installed_classifier(capsys: pytest.CaptureFixture[str]) -> None:
    """``resilience plugins`` names the generic classifier and the three first-party plugins."""
    assert main(["plugins"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["derapi", "http", "tellus", "turris"]


# --------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calls", "-5"], "argument --calls: must be from 1 to 10000, got -5"),
        (["--calls", "0"], "argument --calls: must be from 1 to 10000, got 0"),
        (["--calls", "ten"], "argument --calls: expected a whole number, got 'ten'"),
        (["--error-rate", "1.5"], "argument --error-rate: must be from 0 to 1"),
        (["--error-rate", "-0.1"], "argument --error-rate: must be from 0 to 1"),
        (["--error-rate", "nan"], "argument --error-rate: must be from 0 to 1"),
        (["--concurrency", "0"], "argument --concurrency: must be from 1 to 64, got 0"),
        (["--concurrency", "65"], "argument --concurrency: must be from 1 to 64, got 65"),
        (["--serve", "--port", "70000"], "argument --port: must be from 1 to 65535"),
        (["--port", "9000"], "--port applies to --serve only"),
        (["--serve", "--calls", "3"], "--calls applies to the demo run, not to --serve"),
        (["--serve", "--json"], "--json applies to the demo run, not to --serve"),
        (
            ["--vendor", "nosuch"],
            "unknown vendor 'nosuch'; vendors with a simulator: derapi, tellus, turris",
        ),
        (["--vendor", "tellsu"], "unknown vendor 'tellsu' (did you mean 'tellus'?)"),
        (
            ["--vendor", "http"],
            "vendor 'http' has no simulator to run against; "
            "vendors with a simulator: derapi, tellus, turris",
        ),
    ],
)
def test_a_bad_option_is_refused_with_what_is_accepted(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out-of-range numbers, options that do not apply and unknown vendors end with
    exit status 2 and a message that names the option and what it accepts."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: resilience demo" in err
    assert message in err


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_the_error_rate_is_a_fraction(value: float) -> None:
    """``--error-rate`` takes exactly the numbers from 0 to 1."""
    if 0.0 <= value <= 1.0:
        assert _demo._rate(repr(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            _demo._rate(repr(value))


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_whole_number_options_have_a_range(value: int) -> None:
    """``--calls`` takes exactly 1 to 10000."""
    parse = _demo._int_in(1, _demo.MAX_CALLS)
    if 1 <= value <= _demo.MAX_CALLS:
        assert parse(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {value}"):
            parse(str(value))


def test_a_repeated_vendor_runs_once() -> None:
    """``--vendor`` is repeatable and takes comma-separated names; each vendor runs once."""
    code, out, _ = _run(
        ["demo", "--json", "--calls", "2", "--vendor", "turris", "--vendor", "turris,tellus"]
    )
    assert code == 0
    document = json.loads(out)
    assert [entry["vendor"] for entry in document["vendors"]] == ["turris", "tellus"]
    assert document["settings"]["vendors"] == ["turris", "tellus"]


# --------------------------------------------------------------------------------------
# The faults: as asked, and as applied


@given(
    count=st.integers(min_value=1, max_value=6),
    rate=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_the_fault_rules_add_up_to_the_error_rate(count: int, rate: float) -> None:
    """The simulator draws one rule after another (first hit wins): the per-rule
    rates make each code answer ``rate / count`` of the requests, ``rate`` in all
    (so at ``--error-rate 1`` every request is faulted)."""
    left = 1.0
    for each in _demo._fault_rates(count, rate):
        assert 0.0 <= each <= 1.0
        assert math.isclose(left * each, rate / count, abs_tol=1e-9)
        left *= 1.0 - each
    assert math.isclose(1.0 - left, rate, abs_tol=1e-9)


def test_at_error_rate_one_nothing_succeeds() -> None:
    """At ``--error-rate 1`` every backend of every Derapi list fails: no call
    succeeds, with the library or without (before: 2 of 5 did)."""
    code, out, _ = _run(
        ["demo", "--json", "--vendor", "derapi", "--calls", "5", "--error-rate", "1"]
    )
    assert code == 0  # as well as plain httpx: nothing at all
    entry = _by_vendor(json.loads(out))["derapi"]
    plain, preset = entry["plain"], entry["preset"]
    assert plain["succeeded"] == preset["succeeded"] == 0
    # Each plain request that reached the backends (three of them) failed in each.
    reached = plain["applied"]["requests"] - plain["applied"]["token_rejected"]
    assert sum(plain["applied"]["backend_injected"].values()) == 3 * reached
    assert preset["failures"] == {"partial answer": 5}
    assert preset["partial"]["parts_recovered"] == 0


def test_the_plain_failures_are_the_faults_the_simulator_applied(
    half_faulty: dict[str, Any],
) -> None:
    """Plain httpx sends one request per call, so each failure it reports is one
    thing the simulator did, read back from its record: an injected fault, an
    expired-token rejection, or (Derapi) a list with a failed backend."""
    expired = {"tellus": "2002", "turris": "unauthorized", "derapi": "401"}
    for name, entry in _by_vendor(half_faulty).items():
        plain, applied = entry["plain"], entry["plain"]["applied"]
        assert applied["requests"] == plain["calls"] == plain["attempts"]
        failures = dict(plain["failures"])
        assert failures.pop(expired[name]) == applied["token_rejected"] > 0
        if name == "derapi":
            assert failures == {"partial answer": plain["partial"]["calls_still_partial"]}
            assert 0 < failures["partial answer"] <= sum(applied["backend_injected"].values())
        else:
            assert failures == applied["injected"] != {}
        assert plain["succeeded"] + sum(plain["failures"].values()) == plain["calls"]


def test_the_preset_attempts_are_the_requests_the_simulator_answered(
    half_faulty: dict[str, Any],
) -> None:
    """Every attempt the preset's reports count (retries, auth replays, narrowed
    re-requests) is a request the simulator answered, and the token fetches the
    hooks saw are the simulator's token requests."""
    for entry in half_faulty["vendors"]:
        preset = entry["preset"]
        assert preset["attempts"] == preset["applied"]["requests"]
        assert sum(preset["token_fetches"].values()) == preset["applied"]["token_requests"]
        assert preset["token_fetches"] == {"initial": 1, "rejected": 1}
        assert preset["succeeded"] > entry["plain"]["succeeded"]
    derapi = _by_vendor(half_faulty)["derapi"]["preset"]["partial"]
    assert derapi["parts_recovered"] > 0


def test_the_vendor_rate_limit_is_named_as_such() -> None:
    """At 70 calls, 10 of plain httpx's Tellus calls meet Tellus's own 60-a-minute
    limit: the output says so and does not count them as injected faults; the
    preset waits the window out (on the virtual clock)."""
    argv = ["demo", "--vendor", "tellus", "--calls", "70", "--no-token-expiry"]
    code, out, err = _run(argv)
    assert code == 0
    out = " ".join(out.split())  # the explanations are wrapped
    assert "Tellus allows 60 query requests a minute per client (its documented limit)" in out
    assert re.search(r"10 under plain httpx .*were that limit's 429 answers", out)
    assert "not injected faults" in out
    assert "vendor rate limit x10" in out
    assert "5001 x10" in out  # among the failures
    assert "tellus: plain httpx: 70 calls in" in err  # progress, plain when not a TTY


def test_the_json_output_has_a_stable_shape(half_faulty: dict[str, Any]) -> None:
    """``--json`` prints one document: the settings, and per vendor both runs with
    the same fields."""
    assert set(half_faulty) == {"version", "settings", "vendors", "preset_worse", "real_seconds"}
    assert half_faulty["settings"] == {
        "vendors": VENDORS,
        "calls": 16,
        "concurrency": 1,
        "error_rate": 0.5,
        "seed": 7,
        "expire_tokens": True,
    }
    assert half_faulty["preset_worse"] == []
    fields = {
        "client",
        "calls",
        "succeeded",
        "success_rate",
        "failures",
        "attempts",
        "attempts_per_call",
        "latency_seconds",
        "breaker_trips",
        "token_fetches",
        "partial",
        "applied",
        "virtual_seconds",
        "real_seconds",
    }
    for entry in half_faulty["vendors"]:
        assert set(entry) == {
            "vendor",
            "request",
            "plain",
            "preset",
            "vendor_rate_limits",
            "preset_worse",
        }
        assert entry["request"].startswith("GET /")
        for client in ("plain", "preset"):
            run = entry[client]
            assert set(run) == fields
            assert 0 <= run["success_rate"] <= 1
            assert run["latency_seconds"]["p50"] <= run["latency_seconds"]["p99"]
        assert entry["preset"]["client"] == f'standard_pipeline("{entry["vendor"]}")'


def test_the_text_output_compares_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    """The text report says what it is about to do, then puts both clients side by
    side with every row the comparison needs."""
    assert main(["demo", "--vendor", "derapi", "--calls", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resilience demo (httpx-resilience ")
    intro = " ".join(out.split("\nderapi:")[0].split())
    assert "sent twice, one at a time: with plain httpx" in intro
    assert "run on a virtual clock shared with the simulator" in intro
    header = re.search(r"^ +plain httpx +standard_pipeline\(\"derapi\"\)$", out, re.M)
    assert header is not None
    for row in (
        "succeeded",
        "failed, by reason",
        "attempts per call",
        "latency p50 / p99",
        "breaker trips",
        "token fetches",
        "partial answers",
        "the simulator",
    ):
        assert re.search(rf"^  {re.escape(row)} ", out, re.M), row
    assert "Every preset did at least as well as plain httpx." in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_the_exit_status_says_when_a_preset_did_worse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When a preset completes fewer calls than plain httpx, the command says so and
    exits 1."""

    async def rigged(plugin: Any, settings: Any, *args: Any) -> Any:
        plain = _demo._Run("plain httpx", settings.calls, succeeded=settings.calls)
        preset = _demo._Run("preset", settings.calls, succeeded=settings.calls - 1)
        preset.failures["9001"] = 1
        return _demo._VendorResult(
            name=plugin.name,
            path=plugin.probe,
            plain=plain,
            preset=preset,
            limits=[],
            splits=False,
            codes={},
        )

    monkeypatch.setattr(_demo, "_run_vendor", rigged)
    assert main(["demo", "--vendor", "tellus", "--calls", "3"]) == 1
    out = capsys.readouterr().out
    assert "WORSE: the preset completed 1 fewer calls than plain httpx" in out
    assert "A preset did worse than plain httpx: tellus (exit status 1)." in out


# --------------------------------------------------------------------------------------
# Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    """On a terminal the progress is one line redrawn in place, erased when done."""
    stream = _Terminal()
    progress = _demo._Progress(stream)
    progress.start("tellus: plain httpx", 4)
    progress.step(4)
    progress.finish(0.1)
    text = stream.getvalue()
    assert "\n" not in text
    assert "\r  tellus: plain httpx" in text
    assert "[########################] 4/4" in text
    assert text.endswith("\r\033[K")


def test_progress_is_plain_lines_elsewhere() -> None:
    """Elsewhere (a pipe, a log) it writes one plain line per run, no control codes."""
    stream = io.StringIO()
    progress = _demo._Progress(stream)
    progress.start("tellus: plain httpx", 4)
    progress.step(2)
    progress.finish(0.25)
    assert stream.getvalue() == "  tellus: plain httpx: 4 calls in 0.25 s\n"


# --------------------------------------------------------------------------------------
# The demo's clock


@pytest.mark.anyio
async def test_concurrent_waits_overlap_on_the_demo_clock() -> None:
    """Three workers that each wait 1 s, then 2 s, take 3 virtual seconds, not 9:
    time moves only when every worker waits, to the earliest wake-up."""
    clock = _demo._DemoClock()
    woke: list[float] = []

    async def worker() -> None:
        try:
            await clock.sleep(1.0)
            woke.append(clock.now())
            await clock.sleep(2.0)
            woke.append(clock.now())
        finally:
            clock.leave()

    clock.enter(3)
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(worker)
    assert woke == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    assert clock.now() == 3.0


@pytest.mark.anyio
async def test_a_busy_worker_holds_time_back() -> None:
    """While one worker is busy (a request in flight), another's wait does not end:
    time only moves once the busy one waits too, and then in order of wake-up."""
    clock = _demo._DemoClock()
    order: list[str] = []
    busy = anyio.Event()

    async def sleeper() -> None:
        try:
            await clock.sleep(5.0)
            order.append(f"sleeper at {clock.now():g}")
        finally:
            clock.leave()

    async def worker() -> None:
        try:
            await busy.wait()  # not a clock wait: it is "working"
            order.append(f"worker busy at {clock.now():g}")
            await clock.sleep(1.0)
            order.append(f"worker at {clock.now():g}")
        finally:
            clock.leave()

    clock.enter(2)
    async with anyio.create_task_group() as group:
        group.start_soon(sleeper)
        group.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        assert order == []
        busy.set()
    assert order == ["worker busy at 0", "worker at 1", "sleeper at 5"]


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_the_clock_running() -> None:
    """A worker cancelled in a wait is taken off the queue and counted as running
    again, so the others still wake in order."""
    clock = _demo._DemoClock()
    clock.enter(2)  # this test's task, busy, and the sleeper below
    woke: list[float] = []

    async def sleeper(scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await clock.sleep(10.0)
            woke.append(clock.now())
            await clock.sleep(3.0)
            woke.append(clock.now())
        finally:
            clock.leave()

    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()
        group.start_soon(sleeper, scope)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # while this task is busy: its 10 s never came
        await anyio.wait_all_tasks_blocked()
        await clock.sleep(2.0)
        woke.append(clock.now())
        clock.leave()
    assert woke == [0.0, 2.0, 3.0]


# --------------------------------------------------------------------------------------
# The command as installed: python -OO, --serve and signals


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_UNDER_OO = """
import contextlib, io, json, sys
from resilience._demo import main
results = {}
for name, argv in {
    "help": ["--help"],
    "demo help": ["demo", "--help"],
    "version": ["--version"],
    "demo": ["demo", "--json", "--calls", "3"],
}.items():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results[name] = [code, out.getvalue()]
json.dump({"optimize": sys.flags.optimize, "results": results}, sys.stdout)
"""


def test_the_command_works_under_python_OO() -> None:
    """``python -OO`` strips docstrings: the help (plain text, no reST markup),
    ``--version`` and a whole run (simulators, presets, JSON) do not need them."""
    done = _python("-OO", "-c", _UNDER_OO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["optimize"] == 2
    results = report["results"]
    for name in ("help", "demo help"):
        code, text = results[name]
        assert code == 0
        assert "usage: resilience" in text
        assert "``" not in text
        assert ":class:" not in text
    assert results["version"][0] == 0
    assert re.fullmatch(r"httpx-resilience \d+\.\d+\.\d+\S*\n", results["version"][1])
    code, text = results["demo"]
    assert code == 0
    assert [entry["vendor"] for entry in json.loads(text)["vendors"]] == VENDORS


def _free_ports(count: int) -> int:
    """A base port with ``count`` free ports after it."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + count > 65535:
                continue
            try:
                for offset in range(1, count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return int(base)
    raise RuntimeError("no free ports")


@contextlib.contextmanager
def _serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "resilience", "demo", "--serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            lines.put(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen: list[str] = []
        while not seen or not seen[-1].startswith("Press Ctrl-C"):
            try:
                seen.append(lines.get(timeout=20))
            except queue.Empty:
                pytest.fail(f"--serve did not say it was ready; it printed {seen!r}")
        reader.join(5)
        yield process, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_prints_where_and_how_and_stops_on_sigterm() -> None:
    """``--serve`` serves every vendor on consecutive ports from ``--port``, prints
    the URLs, the client id and the demo secret (which work), says how to stop, and
    stops cleanly on SIGTERM."""
    base = _free_ports(3)
    with _serving("--port", str(base), "--error-rate", "0") as (process, lines):
        text = "\n".join(lines)
        for offset, name in enumerate(VENDORS):
            assert re.search(rf"^  {name} +http://127\.0\.0\.1:{base + offset}$", text, re.M)
        assert f"client id:     {DEMO_CLIENT_ID}" in text
        assert f"client secret: {DEMO_CLIENT_SECRET}" in text
        assert "Press Ctrl-C (or send SIGTERM) to stop." in text
        tellus = f"http://127.0.0.1:{base + 1}"
        assert f"token:  POST {tellus}/v1/operator/oauth/token" in text
        with httpx.Client(base_url=tellus, timeout=10) as client:
            token = client.post(
                "/v1/operator/oauth/token",
                json={
                    "client_id": DEMO_CLIENT_ID,
                    "client_secret": DEMO_CLIENT_SECRET,
                    "grant_type": "client_credentials",
                },
            ).json()["access_token"]
            sites = client.get("/v1/operator/sites", headers={"Authorization": f"Bearer {token}"})
            assert sites.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stdout is not None
        assert process.stdout.read().strip() == "stopped."


def test_serve_injects_the_faults_it_is_given() -> None:
    """``--serve --error-rate 1`` answers every resource request with a transient
    vendor error (the served simulators carry the fault options)."""
    base = _free_ports(1)
    with _serving("--vendor", "turris", "--port", str(base), "--error-rate", "1") as (process, _):
        with httpx.Client(base_url=f"http://127.0.0.1:{base}", timeout=10) as client:
            token = client.post(
                "/v1/auth/jwt",
                json={"clientId": DEMO_CLIENT_ID, "clientSecret": DEMO_CLIENT_SECRET},
            ).json()["data"]["accessToken"]
            answer = client.get("/v1/auth/test-oauth", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 500
        assert answer.json()["errorType"] == "internal_error"
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0


def test_serve_says_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """A port in use is an error naming it and ``--port``, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--serve", "--vendor", "tellus", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "choose another base port with --port" in err
