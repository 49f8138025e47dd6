"""The ``resilience`` command: ``demo`` (plain httpx against each vendor preset) and ``plugins``.

Where it sits: outside the request flow. It is the console script of the
distribution (``resilience = "resilience._demo:main"``) and ``python -m resilience``.
``resilience demo`` serves each installed vendor's simulator on loopback, sends
the same workload through plain httpx and through ``standard_pipeline(vendor)``,
and prints both side by side, with the faults the simulator really applied read
back from its record. ``resilience demo --serve`` only serves the simulators.

The simulators, the fault plans and ``serve`` are test tooling
(:mod:`resilience.testing`, ``resilience_<vendor>.testing``) and uvicorn is an
extra: all of them are imported inside the commands that need them, so
``resilience --version`` works with the core wheel alone. Nothing here reads
``__doc__`` (``python -OO`` strips it).
"""

from __future__ import annotations

import argparse
import collections
import difflib
import heapq
import json
import math
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import anyio
import anyio.lowlevel
import attrs
import httpx

from ._classifier import safe_classify
from ._demo_credentials import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from ._events import CircuitStateChanged, TokenRefreshed
from ._loader import available_classifiers, load_plugin
from ._presets import standard_pipeline
from ._report import CallReport
from ._transport import ResilientTransport
from ._verdict import Action, Verdict
from .errors import CircuitOpenError, ResilienceError

__all__ = ["DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET", "main"]

DEFAULT_CALLS = 30
MAX_CALLS = 10_000
MAX_CONCURRENCY = 64
MAX_WORKERS = 32
FLEET_SECONDS = 6
DEFAULT_ERROR_RATE = 0.2
DEFAULT_PORT = 8765
HOST = "127.0.0.1"

#: Seconds of real time a sleeper waits before the clock jumps anyway (see _DemoClock).
_STALL_SECONDS = 0.5


# --------------------------------------------------------------------------------------
# Time: a discrete-event clock shared by the pipeline and the simulator


class _DemoClock:
    """Virtual time that moves only when every worker of the demo is waiting on it.

    The pipeline's backoff and ``Retry-After`` waits return at once, and the
    simulator (another thread) reads the same time, so a 60 s rate-limit window
    really ends when the preset waits it out. Unlike adding up every sleep, time
    jumps to the earliest wake-up only once all the workers sleep: concurrent
    waits overlap as in real life. Real network time counts as zero.

    Only the demo's own workers sleep on it, and a call sleeps in its own task
    (Retry and the splitter wait in line), so "every worker sleeps" is exact. As a
    safety net (trio's autojump does the same) a sleeper that sees nothing move
    for half a second of real time makes the clock jump.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._active = 0
        self._seq = 0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def enter(self, workers: int = 1) -> None:
        """Count ``workers`` more running workers (before they start)."""
        self._active += workers

    def leave(self) -> None:
        """A worker finished: it no longer holds time back."""
        self._active -= 1
        self._wake(force=False)

    async def sleep(self, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError("cannot sleep NaN seconds")
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._seq += 1
        heapq.heappush(self._sleepers, (self._now + seconds, self._seq, event))
        self._active -= 1
        try:
            self._wake(force=False)
            while not event.is_set():
                with anyio.move_on_after(_STALL_SECONDS):
                    await event.wait()
                if not event.is_set():
                    self._wake(force=True)
        except BaseException:
            if not event.is_set():  # cancelled while asleep: leave the queue running
                self._sleepers = [s for s in self._sleepers if s[2] is not event]
                heapq.heapify(self._sleepers)
                self._active += 1
            raise

    def _wake(self, *, force: bool) -> None:
        if self._sleepers and (self._active <= 0 or force):
            wake, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            self._active += 1
            event.set()


# --------------------------------------------------------------------------------------
# Faults


def _transient_codes(plugin: Any) -> list[str]:
    """The vendor's own transient error codes the demo injects.

    Rate-limit codes (status 429) are left out: the simulators enforce the
    vendors' documented limits themselves, so every 429 the demo reports is the
    vendor's limit, never an injected fault.
    """
    codes = getattr(plugin, "codes", None) or {}
    return [
        str(code)
        for code, entry in codes.items()
        if entry.action is Action.RETRY and entry.status != 429
    ]


def _fault_rates(count: int, rate: float) -> list[float]:
    """Per-rule rates so that ``count`` rules, drawn in turn, fault ``rate`` in all.

    The simulator draws each rule in order and the first hit wins. Rule ``i``
    therefore gets ``share / (1 - i * share)``: each code then answers ``rate /
    count`` of the requests, and at ``rate=1`` every request is faulted.
    """
    share = rate / count
    return [min(1.0, share / (1.0 - i * share)) for i in range(count)]


def _faults(plugin: Any, rate: float) -> list[Any]:
    from .testing import Fault

    codes = _transient_codes(plugin)
    if rate <= 0 or not codes:
        return []
    return [
        Fault(code=c, rate=r) for c, r in zip(codes, _fault_rates(len(codes), rate), strict=True)
    ]


def _simulator(plugin: Any, rate: float, seed: int, clock: Any | None) -> Any:
    """The vendor's simulator with the demo's faults.

    A simulator that aggregates backends (Derapi) gets the faults in each
    backend instead: a list then answers 200 with the failed backends named in
    it, which is the failure such an API has in real life.
    """
    from .testing import FaultPlan

    faults = _faults(plugin, rate)
    options: dict[str, Any] = {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}
    if clock is not None:
        options["clock"] = clock
    if _splits(plugin):
        app = plugin.simulator(plan=FaultPlan(seed=seed), **options)
        backends = getattr(app, "backends", None)
        if isinstance(backends, dict) and backends and all(map(_has_faults, backends.values())):
            for name, backend in list(backends.items()):
                backends[name] = attrs.evolve(backend, faults=tuple(faults))
            return app
    return plugin.simulator(plan=FaultPlan(errors=faults, seed=seed), **options)


def _has_faults(backend: Any) -> bool:
    kind: Any = type(backend)
    return attrs.has(kind) and "faults" in attrs.fields_dict(kind)


def _splits(plugin: Any) -> bool:
    # Only vendors whose classifier splits answers have partial failures to show.
    return callable(getattr(plugin.classifier, "split", None))


# --------------------------------------------------------------------------------------
# What happened: collected per run


@attrs.define(eq=False)
class _Applied:
    """What the simulator did, read back from its record."""

    requests: int = 0
    token_requests: int = 0
    injected: collections.Counter[str] = attrs.field(factory=collections.Counter)
    backend_injected: collections.Counter[str] = attrs.field(factory=collections.Counter)
    rate_limited: int = 0
    token_rejected: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "token_requests": self.token_requests,
            "injected": dict(sorted(self.injected.items())),
            "backend_injected": dict(sorted(self.backend_injected.items())),
            "rate_limited": self.rate_limited,
            "token_rejected": self.token_rejected,
        }


@attrs.define(eq=False)
class _Run:
    """One workload through one client."""

    label: str
    calls: int
    succeeded: int = 0
    failures: collections.Counter[str] = attrs.field(factory=collections.Counter)
    attempts: int = 0
    latencies: list[float] = attrs.field(factory=list)
    breaker_trips: int = 0
    tokens: collections.Counter[str] = attrs.field(factory=collections.Counter)
    partial_calls: int = 0
    recovered_parts: int = 0
    recovered_calls: int = 0
    applied: _Applied = attrs.field(factory=_Applied)
    virtual_seconds: float = 0.0
    real_seconds: float = 0.0

    def hook(self, event: object) -> None:
        """The pipeline hook: counts breaker trips and token fetches."""
        if isinstance(event, CircuitStateChanged) and event.new == "open":
            self.breaker_trips += 1
        elif isinstance(event, TokenRefreshed):
            self.tokens[event.trigger] += 1

    def record(self, latency: float, attempts: int, failure: str | None) -> None:
        self.latencies.append(latency)
        self.attempts += attempts
        if failure is None:
            self.succeeded += 1
        else:
            self.failures[failure] += 1

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(fraction * len(ordered)))  # nearest rank
        return ordered[rank - 1]

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.label,
            "calls": self.calls,
            "succeeded": self.succeeded,
            "success_rate": round(self.succeeded / self.calls, 4),
            "failures": dict(self.failures.most_common()),
            "attempts": self.attempts,
            "attempts_per_call": round(self.attempts / self.calls, 4),
            "latency_seconds": {
                "p50": round(self.percentile(0.5), 6),
                "p99": round(self.percentile(0.99), 6),
            },
            "breaker_trips": self.breaker_trips,
            "token_fetches": dict(sorted(self.tokens.items())),
            "partial": {
                "calls_still_partial": self.partial_calls,
                "parts_recovered": self.recovered_parts,
                "calls_recovered": self.recovered_calls,
            },
            "applied": self.applied.to_json(),
            "virtual_seconds": round(self.virtual_seconds, 3),
            "real_seconds": round(self.real_seconds, 3),
        }


@attrs.define(eq=False)
class _VendorResult:
    name: str
    path: str
    plain: _Run
    preset: _Run
    limits: list[str]
    splits: bool
    codes: dict[str, str]

    @property
    def worse(self) -> bool:
        return self.preset.succeeded < self.plain.succeeded

    def to_json(self) -> dict[str, Any]:
        return {
            "vendor": self.name,
            "request": f"GET {self.path}",
            "plain": self.plain.to_json(),
            "preset": self.preset.to_json(),
            "vendor_rate_limits": self.limits,
            "preset_worse": self.worse,
        }


def _short(code: str) -> str:
    # Derapi's codes are type URIs; the fragment is the slug a reader knows.
    return code.rsplit("#", 1)[-1] if "#" in code else code


def _read_back(app: Any, run: _Run) -> None:
    applied = run.applied
    for entry in list(getattr(app, "received", ())):
        if entry.token_request:
            applied.token_requests += 1
            continue
        applied.requests += 1
        if entry.fault == "rate_limit":
            applied.rate_limited += 1
        elif entry.fault is not None:
            applied.injected[_short(entry.code or f"http:{entry.status}")] += 1
        elif entry.status == 401:
            applied.token_rejected += 1
    for touch in list(getattr(app, "touches", ())):
        if touch.failure is not None:
            applied.backend_injected[_short(touch.failure)] += 1


def _limits_for(app: Any, path: str) -> list[str]:
    """The simulator's own documented limits that a ``GET path`` counts against."""
    import fnmatch

    found = []
    for rule in getattr(app, "rate_limits", ()):
        if rule.methods is not None and "GET" not in rule.methods:
            continue
        if rule.path is not None and not fnmatch.fnmatchcase(path, rule.path):
            continue
        per = "a minute" if rule.window == 60 else f"per {rule.window:g} s"
        kind = f"{rule.name} " if rule.name else ""
        found.append(f"{rule.limit} {kind}requests {per} per client")
    return found


def _code_titles(plugin: Any) -> dict[str, str]:
    titles = {}
    for code, entry in (getattr(plugin, "codes", None) or {}).items():
        if entry.title:
            titles[_short(str(code))] = entry.title
    return titles


# --------------------------------------------------------------------------------------
# The workload


@attrs.frozen(kw_only=True)
class _Settings:
    vendors: tuple[str, ...]
    calls: int
    concurrency: int
    error_rate: float
    seed: int
    expire_tokens: bool
    json: bool


class _Progress:
    """Progress on stderr: one line rewritten in place on a terminal, else a line per run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.label = ""
        self.total = 0
        self.shown = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.shown = label, total, 0.0
        self.step(0)

    def step(self, done: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if done < self.total and now - self.shown < 0.05:
            return
        self.shown = now
        width = 24
        filled = width * done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r  {self.label:<36} [{bar}] {done}/{self.total}")
        self.stream.flush()

    def finish(self, seconds: float) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        else:
            self.stream.write(f"  {self.label}: {self.total} calls in {seconds:.2f} s\n")
        self.stream.flush()


async def _drive(
    settings: _Settings,
    clock: _DemoClock,
    app: Any,
    one_call: Callable[[], Awaitable[None]],
    progress: _Progress,
) -> None:
    """Run ``settings.calls`` calls, ``settings.concurrency`` at a time.

    Before the call halfway through, every token the simulator issued expires
    (and a virtual second passes, so tokens issued after it are valid again).
    """
    counter = 0
    done = 0
    expire = getattr(app, "expire_tokens", None) if settings.expire_tokens else None
    halfway = settings.calls // 2 if callable(expire) and settings.calls >= 2 else -1

    async def worker() -> None:
        nonlocal counter, done
        try:
            while counter < settings.calls:
                index = counter
                counter += 1
                if index == halfway and callable(expire):
                    expire()
                    clock.advance(1.0)
                await one_call()
                done += 1
                progress.step(done)
        finally:
            clock.leave()

    workers = min(settings.concurrency, settings.calls)
    # Counted before any starts: a worker that sleeps first must not let time run
    # while the others have not begun.
    clock.enter(workers)
    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(worker)


def _judge(plugin: Any, response: httpx.Response) -> tuple[str | None, int]:
    """How plain httpx's answer reads by the vendor's own rules: the failure (or
    ``None``) and the parts a partial answer lacks."""
    classifier = plugin.classifier
    verdict: Verdict = safe_classify(
        classifier.classify, response.request, response, None, vendor=plugin.name
    )
    if verdict.action is Action.ACCEPT:
        return None, 0
    if verdict.action is Action.SPLIT:
        try:
            split = classifier.split(response.request, response, verdict)
        except Exception:
            split = None
        if split is None:  # as the splitter does: never passed off as complete
            return "partial answer", 1
        if not split.failures:
            return None, 0
        return "partial answer", len(split.failures)
    return _short(verdict.reason), 0


class _Swap:
    """One served ASGI app that forwards to the current run's simulator.

    Each run needs a fresh simulator (the same faults, clean counters), but a
    uvicorn server takes a fifth of a second to stop: one server serves them all.
    """

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def _plain_run(
    plugin: Any, settings: _Settings, progress: _Progress, swap: _Swap, base_url: str
) -> _Run:
    clock = _DemoClock()
    app = swap.app = _simulator(plugin, settings.error_rate, settings.seed, clock)
    run = _Run("plain httpx", settings.calls)
    path = plugin.probe
    async with httpx.AsyncClient(base_url=base_url) as client:
        headers = {}
        if plugin.token_provider is not None:
            # What a client without the library does: fetch a token once, keep it.
            provider = plugin.token_provider(
                client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET, base_url=base_url
            )
            token = await provider.fetch(client)
            headers["Authorization"] = f"Bearer {token.value}"
            run.tokens["initial"] += 1

        async def one_call() -> None:
            started = time.perf_counter()
            try:
                response = await client.get(path, headers=headers)
            except httpx.HTTPError as exc:
                failure: str | None = type(exc).__name__
                missing = 0
            else:
                failure, missing = _judge(plugin, response)
            if missing:
                run.partial_calls += 1
            run.record(time.perf_counter() - started, 1, failure)

        progress.start(f"{plugin.name}: {run.label}", settings.calls)
        started = time.perf_counter()
        await _drive(settings, clock, app, one_call, progress)
        run.real_seconds = time.perf_counter() - started
        progress.finish(run.real_seconds)
    run.virtual_seconds = clock.now()
    _read_back(app, run)
    return run


def _failure_of(error: BaseException) -> str:
    if isinstance(error, CircuitOpenError):
        return "circuit open"
    if isinstance(error, ResilienceError):
        if error.problem is not None and error.problem.code is not None:
            return _short(error.problem.code)
        if error.report.verdicts:
            return _short(error.report.verdicts[-1].reason)
    return type(error).__name__


async def _preset_run(
    plugin: Any, settings: _Settings, progress: _Progress, swap: _Swap, base_url: str
) -> tuple[_Run, Any]:
    clock = _DemoClock()
    app = swap.app = _simulator(plugin, settings.error_rate, settings.seed, clock)
    run = _Run(f'standard_pipeline("{plugin.name}")', settings.calls)
    path = plugin.probe
    auth = None
    if plugin.token_provider is not None:
        auth = plugin.token_provider(
            client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET, base_url=base_url
        )
    pipeline = standard_pipeline(plugin.name, auth=auth, clock=clock, hooks=[run.hook])
    transport = ResilientTransport(pipeline)
    async with httpx.AsyncClient(base_url=base_url, transport=transport) as client:

        async def one_call() -> None:
            started, virtual = time.perf_counter(), clock.now()
            report: CallReport | None
            failure: str | None = None
            try:
                response = await client.get(path)
            except ResilienceError as exc:
                report, failure = exc.report, _failure_of(exc)
            except httpx.HTTPError as exc:
                report, failure = None, type(exc).__name__
            else:
                report = response.extensions.get("resilience")
            partial = report.partial if report is not None else None
            if partial is not None:
                run.recovered_parts += len(partial.recovered)
                if partial.failures:
                    run.partial_calls += 1
                    failure = failure or "partial answer"
                elif partial.recovered:
                    run.recovered_calls += 1
            attempts = report.attempts if report is not None else 1
            # Each wait counts at its full length, as a real client would sit it out.
            latency = time.perf_counter() - started + (clock.now() - virtual)
            run.record(latency, attempts, failure)

        progress.start(f"{plugin.name}: {run.label}", settings.calls)
        started = time.perf_counter()
        await _drive(settings, clock, app, one_call, progress)
        run.real_seconds = time.perf_counter() - started
        progress.finish(run.real_seconds)
    run.virtual_seconds = clock.now()
    _read_back(app, run)
    return run, app


async def _run_vendor(
    plugin: Any, settings: _Settings, progress: _Progress, swap: _Swap, base_url: str
) -> _VendorResult:
    plain = await _plain_run(plugin, settings, progress, swap, base_url)
    preset, app = await _preset_run(plugin, settings, progress, swap, base_url)
    return _VendorResult(
        name=plugin.name,
        path=plugin.probe,
        plain=plain,
        preset=preset,
        limits=_limits_for(app, plugin.probe),
        splits=_splits(plugin) and hasattr(app, "backends"),
        codes=_code_titles(plugin),
    )


# --------------------------------------------------------------------------------------
# Output

_WIDTH = 88
_LABEL = 22
_COLUMN = 30


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0005 else "<1 ms"
    return f"{seconds:.1f} s"


def _counts(counter: Mapping[str, int], indent: str = "") -> list[str]:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return [f"{indent}{key} x{n}" for key, n in ordered]


def _percent(run: _Run) -> str:
    return f"{run.succeeded}/{run.calls} ({100 * run.succeeded / run.calls:.0f}%)"


def _latency(run: _Run) -> str:
    return f"{_duration(run.percentile(0.5))} / {_duration(run.percentile(0.99))}"


def _tokens(run: _Run, *, plain: bool) -> list[str]:
    total = sum(run.tokens.values())
    if not total:
        return ["-"]
    if plain:
        return ["1, kept for every call"]
    parts = ", ".join(f"{trigger} {n}" for trigger, n in sorted(run.tokens.items()))
    return [f"{total} ({parts})"]


def _applied_lines(run: _Run) -> list[str]:
    applied = run.applied
    lines = [f"{applied.requests} requests answered"]
    if applied.injected:
        lines += ["injected faults:", *_counts(applied.injected, "  ")]
    if applied.backend_injected:
        lines += ["backend faults:", *_counts(applied.backend_injected, "  ")]
    if applied.rate_limited:
        lines.append(f"vendor rate limit x{applied.rate_limited}")
    if applied.token_rejected:
        lines.append(f"expired token x{applied.token_rejected}")
    return lines


def _intro(settings: _Settings, plugins: Sequence[Any]) -> list[str]:
    from . import __version__

    names = ", ".join(p.name for p in plugins)
    rate = f"{settings.error_rate:.0%}"
    pace = "one at a time" if settings.concurrency == 1 else f"{settings.concurrency} at a time"
    aggregators = [p.name.capitalize() for p in plugins if _splits(p)]
    paragraphs = [
        (f"For {names}" if len(plugins) == 1 else f"For each vendor ({names})")
        + f", a simulator of its API is served on {HOST} and the "
        f"same {settings.calls} GET calls are sent twice, {pace}: with plain httpx (a token "
        "fetched once, no retries), then through standard_pipeline(vendor, auth=<the "
        "vendor's token provider>).",
        f"Faults: {rate} of the requests get one of the vendor's transient errors"
        + (
            f" ({', '.join(aggregators)} gathers lists from several backends: there, each "
            f"backend fails {rate} of the requests it gets)."
            if aggregators
            else "."
        )
        + " The vendors' documented rate limits stay on (the Tellus and Turris presets pace"
        " themselves to them: a call waits for its slot rather than draw a 429); a 429 is"
        " never an injected fault.",
    ]
    if settings.expire_tokens and settings.calls >= 2:
        paragraphs.append(
            f"Before call {settings.calls // 2 + 1}, every token issued so far expires."
        )
    paragraphs.append(
        "Waits (backoff, Retry-After) run on a virtual clock shared with the simulator: "
        "they cost no real time, the simulator sees the time pass, and the latencies "
        "count each wait at its full length."
    )
    lines = [f"resilience demo (httpx-resilience {__version__})", ""]
    lines += textwrap.wrap(" ".join(paragraphs), width=_WIDTH)
    return lines


def _table(result: _VendorResult) -> list[str]:
    plain, preset = result.plain, result.preset
    rows: list[tuple[str, list[str], list[str]]] = [
        ("", [plain.label], [preset.label]),
        ("succeeded", [_percent(plain)], [_percent(preset)]),
        ("failed, by reason", _counts(plain.failures) or ["-"], _counts(preset.failures) or ["-"]),
        (
            "attempts per call",
            [f"{plain.attempts / plain.calls:.2f}"],
            [f"{preset.attempts / preset.calls:.2f}"],
        ),
        ("latency p50 / p99", [_latency(plain)], [_latency(preset)]),
        ("breaker trips", ["- (no breaker)"], [str(preset.breaker_trips)]),
        ("token fetches", _tokens(plain, plain=True), _tokens(preset, plain=False)),
    ]
    if result.splits:
        rows.append(
            (
                "partial answers",
                [f"{plain.partial_calls} lacked a backend"],
                [
                    f"{preset.partial_calls} still lacked one;",
                    f"{preset.recovered_parts} backend answers",
                    f"recovered in {preset.recovered_calls} calls",
                ],
            )
        )
    rows.append(("the simulator", _applied_lines(plain), _applied_lines(preset)))
    rows.append(
        (
            "time: virtual / real",
            [f"{plain.virtual_seconds:.1f} s / {plain.real_seconds:.2f} s"],
            [f"{preset.virtual_seconds:.1f} s / {preset.real_seconds:.2f} s"],
        )
    )
    lines = [f"{result.name}: {plain.calls} x GET {result.path}"]
    for label, left, right in rows:
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            lines.append(f"  {label if i == 0 else '':<{_LABEL}}{a:<{_COLUMN}}{b}".rstrip())
    return lines


def _lost(run: _Run) -> str:
    """What the calls a run lost were lost to, from what the simulator applied."""
    lost = run.calls - run.succeeded
    token = min(run.applied.token_rejected, lost)
    limit = min(run.applied.rate_limited, lost - token)
    parts = []
    if token:
        parts.append(f"{token} to the expired token")
    if limit:
        parts.append(f"{limit} to the rate limit")
    if lost - token - limit:
        parts.append(f"{lost - token - limit} to injected faults")
    return ", ".join(parts)


def _explain(result: _VendorResult) -> list[str]:
    lines: list[str] = []
    shown = {
        key.strip()
        for run in (result.plain, result.preset)
        for key in (*run.failures, *run.applied.injected, *run.applied.backend_injected)
    }
    legend = [f"{code}: {result.codes[code]}" for code in sorted(shown) if code in result.codes]
    if legend:
        lines += _wrap("codes: " + "; ".join(legend), "  ")
    limited = [
        f"{run.applied.rate_limited} under {run.label}"
        for run in (result.plain, result.preset)
        if run.applied.rate_limited
    ]
    if limited:
        rule = " and ".join(result.limits) or "only so many requests"
        lines += _wrap(
            f"rate limit: {result.name.capitalize()} allows {rule} (its documented "
            f"limit); {' and '.join(limited)} were that limit's 429 answers, "
            "not injected faults.",
            "  ",
        )
    gained = result.preset.succeeded - result.plain.succeeded
    if gained > 0:
        why = _lost(result.plain)
        verdict = (
            f"=> the preset completed {gained} more of {result.plain.calls} calls than "
            f"plain httpx" + (f" (plain httpx lost {why})." if why else ".")
        )
    elif gained == 0:
        verdict = "=> the preset did as well as plain httpx."
    else:
        verdict = f"=> WORSE: the preset completed {-gained} fewer calls than plain httpx."
    lines += _wrap(verdict, "  ")
    return lines


def _report_json(settings: _Settings, results: Sequence[_VendorResult], real: float) -> None:
    from . import __version__

    document = {
        "version": __version__,
        "settings": {
            "vendors": list(settings.vendors),
            "calls": settings.calls,
            "concurrency": settings.concurrency,
            "error_rate": settings.error_rate,
            "seed": settings.seed,
            "expire_tokens": settings.expire_tokens,
        },
        "vendors": [r.to_json() for r in results],
        "preset_worse": [r.name for r in results if r.worse],
        "real_seconds": round(real, 3),
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _report_text(results: Sequence[_VendorResult], real: float) -> None:
    for result in results:
        print()
        for line in (*_table(result), *_explain(result)):
            print(line)
    print()
    worse = [r.name for r in results if r.worse]
    if worse:
        print(f"A preset did worse than plain httpx: {', '.join(worse)} (exit status 1).")
    else:
        print("Every preset did at least as well as plain httpx.")
    print(f"Done in {real:.1f} s of real time.")


def _demo(settings: _Settings, plugins: Sequence[Any]) -> int:
    progress = _Progress(sys.stderr)
    started = time.perf_counter()

    async def run_all() -> list[_VendorResult]:
        from .testing import serve

        swap = _Swap()
        async with serve(swap, host=HOST) as base_url:
            return [
                await _run_vendor(plugin, settings, progress, swap, base_url) for plugin in plugins
            ]

    if not settings.json:
        # Said before the runs start, so a reader knows what the progress is about.
        print("\n".join(_intro(settings, plugins)), flush=True)
    results = anyio.run(run_all)
    real = time.perf_counter() - started
    if settings.json:
        _report_json(settings, results, real)
    else:
        _report_text(results, real)
    return 1 if any(r.worse for r in results) else 0


# --------------------------------------------------------------------------------------
# --serve


def _serve(plugins: Sequence[Any], rate: float, seed: int, port: int) -> int:
    import uvicorn

    sockets: list[socket.socket] = []
    try:
        for offset in range(len(plugins)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind((HOST, port + offset))
            except OSError as exc:
                print(
                    f"resilience demo: cannot listen on {HOST}:{port + offset} "
                    f"({exc.strerror or exc}); choose another base port with --port",
                    file=sys.stderr,
                )
                return 2
        servers = []
        for plugin in plugins:
            app = _simulator(plugin, rate, seed, None)
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                server_header=False,
                loop="asyncio",
                http="h11",
                ws="none",
                timeout_graceful_shutdown=2,
            )
            servers.append(uvicorn.Server(config))
        # Each server runs in its own thread: uvicorn installs no signal handlers
        # there, so SIGINT and SIGTERM are ours to turn into a clean stop.
        threads = [
            threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name=f"demo-{p.name}", daemon=True
            )
            for server, sock, p in zip(servers, sockets, plugins, strict=True)
        ]
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        previous = {
            sig: signal.signal(sig, on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM)
            if hasattr(signal, sig.name)
        }
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while not all(s.started for s in servers):
                # stop.wait: the poll's pause, cut short by Ctrl-C or SIGTERM.
                if (
                    stop.wait(0.01)
                    or time.monotonic() > deadline
                    or not all(t.is_alive() for t in threads)
                ):
                    print("resilience demo: a simulator failed to start", file=sys.stderr)
                    return 1
            _print_serving(plugins, rate, seed, port)
            while not stop.wait(0.2):
                if not all(t.is_alive() for t in threads):
                    print("resilience demo: a simulator stopped", file=sys.stderr)
                    return 1
        finally:
            for server in servers:
                server.should_exit = True
            for thread in threads:
                if thread.is_alive():
                    thread.join(5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("stopped.", flush=True)
        return 0
    finally:
        for sock in sockets:
            sock.close()


def _provider_name(plugin: Any) -> str:
    provider = plugin.token_provider
    module = getattr(provider, "__module__", "") or ""
    name = getattr(provider, "__qualname__", "token_provider")
    return f"{module.split('.')[0]}.{name}" if module else name


def _token_endpoint(plugin: Any, url: str) -> str | None:
    if plugin.token_provider is None:
        return None
    try:
        provider = plugin.token_provider(
            client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET, base_url=url
        )
    except Exception:  # only a hint: a provider with other arguments gets none
        return None
    endpoint = getattr(provider, "token_endpoint", None)
    return endpoint if isinstance(endpoint, str) else None


def _print_serving(plugins: Sequence[Any], rate: float, seed: int, port: int) -> None:
    print(
        f"Serving {len(plugins)} vendor simulator(s) on {HOST}, with {rate:.0%} of the "
        f"requests answered by a transient vendor error (seed {seed}):"
    )
    for offset, plugin in enumerate(plugins):
        url = f"http://{HOST}:{port + offset}"
        print(f"  {plugin.name:<8} {url}")
        endpoint = _token_endpoint(plugin, url)
        if endpoint is not None:
            print(f"           token:  POST {endpoint}")
        print(f"           try:    GET {url}{plugin.probe}")
    print()
    print(f"client id:     {DEMO_CLIENT_ID}")
    print(f"client secret: {DEMO_CLIENT_SECRET}   (a public demo value, not a credential)")
    first = next((p for p in plugins if p.token_provider is not None), None)
    if first is not None:
        url = f"http://{HOST}:{port + list(plugins).index(first)}"
        print()
        print("For example, in Python:")
        print(f"  auth = {_provider_name(first)}(")
        print(f'      client_id="{DEMO_CLIENT_ID}", client_secret="{DEMO_CLIENT_SECRET}",')
        print(f'      base_url="{url}",')
        print("  )")
        print(f'  pipeline = resilience.standard_pipeline("{first.name}", auth=auth)')
    print()
    print("Press Ctrl-C (or send SIGTERM) to stop.", flush=True)


# --------------------------------------------------------------------------------------
# The command line


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (a fraction), got {text}")
    return value


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resilience",
        description="httpx-resilience: retries, circuit breakers and token refresh for httpx.",
    )
    # The distribution's name, since that is what `pip install` and bug reports need.
    parser.add_argument("--version", action="version", version=f"httpx-resilience {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="compare plain httpx with each vendor preset against the simulators",
        description=(
            "Serve each vendor's simulator on loopback, send the same calls through plain "
            "httpx and through standard_pipeline(vendor), and print both side by side. "
            "Needs uvicorn (pip install 'httpx-resilience[demo]')."
        ),
        epilog=(
            "examples: resilience demo; resilience demo --vendor tellus --calls 100; "
            "resilience demo --json; resilience demo --serve --port 9000"
        ),
    )
    demo.add_argument(
        "--vendor",
        action="append",
        metavar="NAME",
        help="a vendor plugin to include (repeatable, or comma-separated; default: all)",
    )
    demo.add_argument(
        "--calls",
        type=_int_in(1, MAX_CALLS),
        metavar="N",
        default=None,
        help=f"calls per vendor and client, 1 to {MAX_CALLS} (default {DEFAULT_CALLS})",
    )
    demo.add_argument(
        "--concurrency",
        type=_int_in(1, MAX_CONCURRENCY),
        metavar="N",
        default=None,
        help=f"calls in flight at once, 1 to {MAX_CONCURRENCY} (default 1)",
    )
    demo.add_argument(
        "--error-rate",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_ERROR_RATE,
        help=f"fraction of requests that get a transient vendor error, 0 to 1 "
        f"(default {DEFAULT_ERROR_RATE})",
    )
    demo.add_argument(
        "--seed", type=int, default=7, metavar="N", help="seed of the fault draws (default 7)"
    )
    demo.add_argument(
        "--no-token-expiry",
        dest="expire_tokens",
        action="store_false",
        help="do not expire the tokens halfway through",
    )
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="only serve the simulators (with the fault options) until Ctrl-C",
    )
    demo.add_argument(
        "--port",
        type=_int_in(1, 65535),
        default=None,
        help=f"with --serve: the first vendor's port, the next ones follow (default "
        f"{DEFAULT_PORT})",
    )
    demo.add_argument(
        "--workers",
        type=_int_in(1, MAX_WORKERS),
        metavar="N",
        default=None,
        help=f"run a fleet of N worker processes (1 to {MAX_WORKERS}) against one vendor's "
        "simulator, sharing the rate limit and the token through --redis",
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="with --workers: the Redis the fleet shares (redis://host:port/db)",
    )
    demo.add_argument(
        "--seconds",
        type=_int_in(1, 600),
        metavar="S",
        default=None,
        help="with --workers: how long the fleet runs (default 6)",
    )
    sub.add_parser("plugins", help="list the installed vendor plugins")
    return parser, demo


def _with_simulator() -> list[str]:
    names = []
    for name in available_classifiers():
        plugin = load_plugin(name)
        if _usable(plugin):
            names.append(name)
    return names


def _usable(plugin: Any) -> bool:
    return all(getattr(plugin, part, None) is not None for part in ("simulator", "preset", "probe"))


def _choose(parser: argparse.ArgumentParser, requested: Iterable[str] | None) -> list[Any]:
    usable = _with_simulator()
    listed = ", ".join(usable) or "none"
    if not requested:
        if not usable:
            parser.error(
                "no vendor plugin with a simulator is installed: "
                "pip install httpx-resilience-tellus (or -turris, -derapi)"
            )
        return [load_plugin(name) for name in usable]
    names: list[str] = []
    for item in requested:
        for name in item.split(","):
            name = name.strip()
            if name and name not in names:  # a repeated vendor runs once
                names.append(name)
    if not names:
        parser.error(f"--vendor needs a name; vendors with a simulator: {listed}")
    plugins = []
    for name in names:
        try:
            plugin = load_plugin(name)
        except LookupError:
            close = difflib.get_close_matches(name.lower(), usable, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parser.error(f"unknown vendor {name!r}{hint}; vendors with a simulator: {listed}")
        if not _usable(plugin):
            parser.error(
                f"vendor {name!r} has no simulator to run against; "
                f"vendors with a simulator: {listed}"
            )
        plugins.append(plugin)
    return plugins


def main(argv: Sequence[str] | None = None) -> int:
    """The ``resilience`` command line; returns the exit status."""
    top, parser = _parser()
    args = top.parse_args(argv)
    if args.command == "plugins":
        for name in available_classifiers():
            description = getattr(load_plugin(name), "description", "") or ""
            print(f"{name:<10} {description}")
        return 0
    if args.serve:
        for option, value in (
            ("--calls", args.calls),
            ("--concurrency", args.concurrency),
            ("--json", args.json or None),
            ("--no-token-expiry", None if args.expire_tokens else True),
        ):
            if value is not None:
                parser.error(f"{option} applies to the demo run, not to --serve")
    elif args.port is not None:
        parser.error("--port applies to --serve only (the demo run picks free ports)")
    if args.workers is None:
        for option, value in (("--redis", args.redis), ("--seconds", args.seconds)):
            if value is not None:
                parser.error(f"{option} applies to a fleet run (--workers N) only")
    elif args.serve or args.redis is None:
        parser.error("--workers needs --redis URL (and not --serve)")
    elif not args.redis.startswith(("redis://", "rediss://", "unix://")):
        parser.error("--redis must be a redis://, rediss:// or unix:// URL")
    plugins = _choose(parser, args.vendor or (["tellus"] if args.workers else None))
    if args.workers is not None and len(plugins) != 1:
        parser.error("a fleet run (--workers) takes one --vendor")
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print(
            "resilience demo: needs uvicorn: pip install 'httpx-resilience[demo]'",
            file=sys.stderr,
        )
        return 2
    if args.workers is not None:
        from ._demo_fleet import run_fleet

        seconds = FLEET_SECONDS if args.seconds is None else args.seconds
        return run_fleet(plugins[0], args.workers, args.redis, seconds, args.json)
    if args.serve:
        port = DEFAULT_PORT if args.port is None else args.port
        if port + len(plugins) - 1 > 65535:
            parser.error(f"--port {port} leaves no room for {len(plugins)} vendors")
        return _serve(plugins, args.error_rate, args.seed, port)
    settings = _Settings(
        vendors=tuple(p.name for p in plugins),
        calls=DEFAULT_CALLS if args.calls is None else args.calls,
        concurrency=1 if args.concurrency is None else args.concurrency,
        error_rate=args.error_rate,
        seed=args.seed,
        expire_tokens=args.expire_tokens,
        json=args.json,
    )
    try:
        return _demo(settings, plugins)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
