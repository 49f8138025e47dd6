"""The circuit breaker against a simple model, driven by hypothesis state machines.

Random sequences of successes, failures, neutral and slow outcomes, waits (up to
hours), calls left in flight, cancellations, isolate/reset and churn of other keys
(so that idle circuits get forgotten and recreated, opened ones once their break
and quiet period are over) must leave the breaker in the model's state with the
model's window, run of consecutive failures, break (doubling per reopening, or
growing with the outage's age with ``break_growth``) and events. One machine drives the
registry's key API (synchronous); another drives the layer through a pipeline,
each step run under asyncio or trio.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from resilience import (
    Action,
    CircuitBreaker,
    CircuitRegistry,
    CircuitStateChanged,
    Pipeline,
    ResilientTransport,
    Verdict,
)
from resilience.errors import CircuitOpenError, ResilienceError
from resilience.testing import VirtualClock, reply

pytestmark = pytest.mark.anyio

FAILED_BIT = 2
SLOW_BIT = 4


class Model:
    """What one circuit should do, written plainly: a list of every counted call."""

    def __init__(self, config: CircuitBreaker) -> None:
        self.config = config
        self.width = config.window / 10
        self.state = "closed"
        self.history: list[tuple[float, int]] = []
        self.until = 0.0
        self.opened_at = 0.0
        self.reopenings = 0
        self.probes = 0
        self.passed = 0
        self.run = 0
        self.run_at = 0.0
        self.changes: list[tuple[str, str]] = []

    def codes(self, now: float) -> list[int]:
        """The outcome codes in the window at ``now``."""
        config = self.config
        if config.window_calls is not None:
            if self.history and now - self.history[-1][0] > config.window:
                return []
            return [code for _, code in self.history[-config.window_calls :]]
        current = int(now / self.width)
        return [code for t, code in self.history if current - int(t / self.width) < 10]

    def ratios(self, now: float) -> tuple[int, float, float]:
        codes = self.codes(now)
        if not codes:
            return 0, 0.0, 0.0
        failures = sum(1 for c in codes if c & FAILED_BIT)
        slow = sum(1 for c in codes if c & SLOW_BIT)
        return len(codes), failures / len(codes), slow / len(codes)

    def current_run(self, now: float) -> int:
        """Failures in a row, unless a pause longer than the window ended the run."""
        if self.state != "closed" or (self.run and now - self.run_at > self.config.window):
            return 0
        return self.run

    def move(self, new: str) -> None:
        self.changes.append((self.state, new))
        self.state = new
        self.probes = self.passed = self.run = 0

    def longest_break(self) -> float:
        cap = self.config.max_break_duration
        return 10 * self.config.break_duration if cap is None else cap

    def forgettable(self, now: float) -> bool:
        """Whether the registry may drop the circuit at ``now``."""
        if self.state == "closed":
            return not self.codes(now) and not self.current_run(now)
        if self.state == "isolated" or self.probes:
            return False
        quiet = max(self.config.window, self.longest_break())
        return now - self.until >= quiet

    def forget(self) -> None:
        """Dropped by the registry: what a new circuit is (an opened one says so)."""
        self.history.clear()
        self.reopenings = 0
        if self.state != "closed":
            self.move("closed")

    def blocked(self, now: float) -> bool:
        """Whether the break lasts at ``now``: a break within a microsecond of its
        end is over (so a sleep of exactly ``retry_after`` is enough)."""
        return self.until - now > 1e-6

    def poll(self, now: float) -> None:
        if self.state == "open" and not self.blocked(now):
            self.move("half_open")

    def open(self, now: float, reopenings: int) -> None:
        """Open for a break that doubles per reopening, or (with break_growth) is that
        share of the outage's age, within [break_duration, longest break]."""
        config = self.config
        if reopenings == 0:
            self.opened_at = now
        self.reopenings = reopenings
        if config.break_growth is None:
            length = config.break_duration * 2**reopenings
        else:
            length = max(config.break_growth * (now - self.opened_at), config.break_duration)
        self.until = now + min(length, self.longest_break())
        self.move("open")

    def allow(self, now: float) -> float | None:
        if self.state == "closed":
            return None
        if self.state == "isolated":
            return math.inf
        if self.state == "open":
            if self.blocked(now):
                return self.until - now
            self.move("half_open")
        if self.probes < self.config.half_open_calls:
            self.probes += 1
            return None
        return 0.0

    def finish(self, now: float, code: int) -> None:
        config = self.config
        if self.state == "closed":
            if not code:
                return
            if (
                config.window_calls is not None
                and self.history
                and now - self.history[-1][0] > config.window
            ):
                self.history.clear()
            self.history.append((now, code))
            calls, failure_ratio, slow_ratio = self.ratios(now)
            if calls >= config.minimum_calls and (
                (failure_ratio > 0 and failure_ratio >= config.failure_ratio)
                or (slow_ratio > 0 and slow_ratio >= config.slow_call_ratio)
            ):
                self.open(now, 0)
            elif config.consecutive_failures is not None:
                if code & FAILED_BIT:
                    self.run = self.current_run(now) + 1
                    self.run_at = now
                    if self.run >= config.consecutive_failures:
                        self.open(now, 0)
                else:
                    self.run = 0
        elif self.state == "half_open" and self.probes > 0:
            self.probes -= 1
            if not code:
                return
            if code & (FAILED_BIT | SLOW_BIT):
                self.open(now, self.reopenings + 1)
            else:
                self.passed += 1
                if self.passed >= config.half_open_calls:
                    self.history.clear()
                    self.reopenings = 0
                    self.move("closed")

    def isolate(self) -> None:
        if self.state != "isolated":
            self.move("isolated")

    def reset(self) -> None:
        self.history.clear()
        self.reopenings = 0
        self.run = 0
        if self.state != "closed":
            self.move("closed")

    def retry_after(self, now: float) -> float:
        if self.state == "open":
            return self.until - now if self.blocked(now) else 0.0
        return math.inf if self.state == "isolated" else 0.0


@st.composite
def configs(draw: st.DrawFn) -> CircuitBreaker:
    minimum = draw(st.integers(1, 5))
    brk = draw(st.sampled_from([5.0, 10.0, 30.0]))
    return CircuitBreaker(
        failure_ratio=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        minimum_calls=minimum,
        window=draw(st.sampled_from([3.0, 10.0, 30.0])),
        window_calls=draw(st.none() | st.integers(minimum, 8)),
        break_duration=brk,
        max_break_duration=draw(st.sampled_from([None, brk, 3 * brk])),
        break_growth=draw(st.sampled_from([None, None, 0.1, 0.5, 2.0])),
        consecutive_failures=draw(st.none() | st.integers(1, 4)),
        half_open_calls=draw(st.integers(1, 3)),
        slow_call_duration=draw(st.sampled_from([None, 1.0])),
        slow_call_ratio=draw(st.sampled_from([0.5, 1.0])),
    )


WAITS = st.sampled_from([0.1, 0.3, 0.3, 1.0, 1.0, 2.9, 3.0, 5.0, 10.0, 30.0, 7200.0])
KEYS = st.sampled_from(["a", "b"])
#: (verdict, duration) pairs: success, failure, the neutral FAIL, slow variants.
OUTCOMES = st.sampled_from(
    [
        (Verdict(Action.ACCEPT), 0.5),
        (Verdict(Action.SPLIT), 0.5),
        (Verdict(Action.RETRY), 0.5),
        (Verdict(Action.FAIL), 0.5),
        (Verdict(Action.REFRESH_AUTH), 0.5),
        (Verdict(Action.ACCEPT), 2.0),
        (Verdict(Action.RETRY), 2.0),
    ]
)


def code_of(config: CircuitBreaker, verdict: Verdict, duration: float) -> int:
    """The model's reading of an outcome (written apart from the layer's)."""
    if verdict.action is Action.RETRY:
        code = 1 | FAILED_BIT
    elif verdict.action in (Action.ACCEPT, Action.SPLIT):
        code = 1
    else:
        return 0
    if config.slow_call_duration is not None and duration > config.slow_call_duration:
        code |= SLOW_BIT
    return code


def transitions(events: list[Any], key: str) -> list[tuple[str, str]]:
    return [(e.old, e.new) for e in events if isinstance(e, CircuitStateChanged) and e.key == key]


class RegistryMachine(RuleBasedStateMachine):
    """The registry's key API (what the splitter uses), checked against the model."""

    @initialize(config=configs())
    def setup(self, config: CircuitBreaker) -> None:
        self.config = config
        self.clock = VirtualClock()
        self.events: list[Any] = []
        pipeline = Pipeline([config], clock=self.clock, hooks=[self.events.append], telemetry=False)
        self.registry = CircuitRegistry.of(pipeline)
        self.models = {key: Model(config) for key in ("a", "b")}
        self.in_flight: list[str] = []
        self.fresh = 0

    def admit(self, key: str) -> float | None:
        now = self.clock.now()
        expected = self.models[key].allow(now)
        got = self.registry.allow(key)
        assert got == expected
        return got

    @rule(key=KEYS, outcomes=st.lists(OUTCOMES, min_size=1, max_size=8))
    def calls(self, key: str, outcomes: list[tuple[Verdict, float]]) -> None:
        """A burst of whole calls: each admitted (or not), then recorded."""
        for verdict, duration in outcomes:
            if self.admit(key) is None:
                self.registry.record(key, verdict, duration=duration)
                self.models[key].finish(self.clock.now(), code_of(self.config, verdict, duration))

    @rule(key=KEYS)
    def begin(self, key: str) -> None:
        """A call admitted and left in flight."""
        if self.admit(key) is None:
            self.in_flight.append(key)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish(self, data: st.DataObject, outcome: tuple[Verdict, float]) -> None:
        """A call in flight ends with an outcome."""
        key = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        verdict, duration = outcome
        self.registry.record(key, verdict, duration=duration)
        self.models[key].finish(self.clock.now(), code_of(self.config, verdict, duration))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """A call in flight is cancelled: its slot is released, nothing counted."""
        key = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        self.registry.release(key)
        self.models[key].finish(self.clock.now(), 0)

    @rule(seconds=WAITS)
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(key=KEYS, action=st.sampled_from(["isolate", "reset"]))
    def manual(self, key: str, action: str) -> None:
        """isolate() or reset() by hand."""
        getattr(self.registry.get(key), action)()
        getattr(self.models[key], action)()

    @rule()
    def churn(self) -> None:
        """Other keys come and go, so the registry sweeps (and may forget a or b,
        but only when the model says it may)."""
        held = {key for key in self.models if key in self.registry}
        for _ in range(3):
            self.fresh += 1
            self.registry.get(f"other{self.fresh}")
        now = self.clock.now()
        for key in held:
            if key not in self.registry:
                model = self.models[key]
                assert model.forgettable(now)
                model.forget()

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.clock.now()
        for key, model in self.models.items():
            model.poll(now)
            circuit = self.registry.get(key)
            assert circuit.state.value == model.state
            calls, failure_ratio, slow_ratio = model.ratios(now)
            assert circuit.calls == calls
            assert circuit.failure_ratio == failure_ratio
            assert circuit.slow_call_ratio == slow_ratio
            assert circuit.consecutive_failures == model.current_run(now)
            assert circuit.retry_after == model.retry_after(now)
            assert transitions(self.events, key) == model.changes


RegistryMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50)
TestRegistryAgainstModel = RegistryMachine.TestCase


KINDS = {
    "ok": (200, 0.0, 1),
    "fail": (503, 0.0, 1 | FAILED_BIT),
    "bad": (400, 0.0, 0),
    "auth": (401, 0.0, 0),
    "slow_ok": (200, 2.0, 1),
    "slow_fail": (503, 2.0, 1 | FAILED_BIT),
    "refused": (None, 0.0, 1 | FAILED_BIT),
    "cancel": (None, 0.0, 0),
}


class Backend(httpx.AsyncBaseTransport):
    """Answers the next request as the machine planned (slow ones move the clock)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.kind = "ok"
        self.sent = 0
        self.scope: anyio.CancelScope | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        status, takes, _ = KINDS[self.kind]
        self.clock.advance(takes)
        if self.kind == "cancel":
            assert self.scope is not None
            self.scope.cancel()
            await anyio.lowlevel.checkpoint()
            raise AssertionError("not cancelled")  # pragma: no cover
        if status is None:
            raise httpx.ConnectError("connection refused", request=request)
        return reply(status)


class LayerMachine(RuleBasedStateMachine):
    """Sequential calls through a pipeline with the breaker, against the model."""

    backend = "asyncio"

    @initialize(config=configs())
    def setup(self, config: CircuitBreaker) -> None:
        self.config = config
        self.clock = VirtualClock()
        self.events: list[Any] = []
        self.inner = Backend(self.clock)
        self.pipeline = Pipeline(
            [config], clock=self.clock, hooks=[self.events.append], telemetry=False
        )
        self.transport = ResilientTransport(self.pipeline, inner=self.inner)
        self.model = Model(config)

    async def _send(self) -> Any:
        with anyio.CancelScope() as scope:
            self.inner.scope = scope
            try:
                response = await self.transport.handle_async_request(
                    httpx.Request("GET", "https://a.test/x")
                )
            except ResilienceError as exc:
                return exc
            await response.aclose()
            return response.status_code
        return "cancelled"

    # Successes weigh more, so that half-open probes get to close the circuit.
    @rule(kinds=st.lists(st.sampled_from([*sorted(KINDS), "ok", "ok"]), min_size=1, max_size=6))
    def calls(self, kinds: list[str]) -> None:
        """A few calls in a row."""
        for kind in kinds:
            self.call(kind)

    def call(self, kind: str) -> None:
        """One call through the layer, under the machine's backend."""
        self.inner.kind = kind
        sent = self.inner.sent
        expected = self.model.allow(self.clock.now())
        result = anyio.run(self._send, backend=self.backend)
        if expected is not None:
            assert isinstance(result, CircuitOpenError)
            assert result.retry_after == expected
            assert self.inner.sent == sent
            return
        assert self.inner.sent == sent + 1
        assert not isinstance(result, CircuitOpenError)
        status, _, code = KINDS[kind]
        if kind == "cancel":
            assert result == "cancelled"
        elif status is not None:
            assert result == status or isinstance(result, ResilienceError)
        if kind.startswith("slow") and self.config.slow_call_duration is not None:
            code |= SLOW_BIT
        self.model.finish(self.clock.now(), code)

    @rule(seconds=WAITS)
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["isolate", "reset"]))
    def manual(self, action: str) -> None:
        """isolate() or reset() by hand."""
        getattr(CircuitRegistry.of(self.pipeline).get("https://a.test:443"), action)()
        getattr(self.model, action)()

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.clock.now()
        self.model.poll(now)
        circuit = CircuitRegistry.of(self.pipeline).get("https://a.test:443")
        assert circuit.state.value == self.model.state
        calls, failure_ratio, _ = self.model.ratios(now)
        assert circuit.calls == calls
        assert circuit.failure_ratio == failure_ratio
        assert circuit.consecutive_failures == self.model.current_run(now)
        assert transitions(self.events, "https://a.test:443") == self.model.changes


class LayerMachineOnTrio(LayerMachine):
    backend = "trio"


LayerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30)
LayerMachineOnTrio.TestCase.settings = settings(max_examples=40, stateful_step_count=30)
TestLayerOnAsyncio = LayerMachine.TestCase
TestLayerOnTrio = LayerMachineOnTrio.TestCase
