"""Holding: a call that meets an open circuit waits for it to recover, then goes in a ramp.

Where it sits in the flow: the ``Retry`` layer decides to hold a call (its attempt
was rejected by an open breaker below it, or failed as the breaker opened, or the
retry budget is spent while the circuit is open) and waits in :meth:`HoldQueue.wait`;
the circuit (``_breaker.Circuit``) owns one :class:`HoldQueue`, created on the first
hold, and tells it about its transitions.

Why this split. A hold is a wait before the call's next attempt, so it belongs to
``Retry``, which owns the deadline arithmetic, the budget and the report
(``delays``, ``gave_up``); the queue, its cap and the ramp belong to the circuit,
because they protect one backend whoever calls it.

How a hold ends:

* the circuit closes (a probe succeeded, or ``reset()``): every held call gets a
  turn in a ramp (slow start) and goes when its turn comes, so a recovered backend
  does not get every held call at once;
* the longest-held call is the circuit's prober: when the break ends and no fresh
  call has taken the probe, it goes as the probe itself (otherwise a batch of held
  calls with no new traffic would wait out their deadlines for nothing). No other
  held call has a timer: they are woken by the circuit;
* on a circuit shared through a store (``CircuitBreaker(store=RedisStore(...))``)
  the break may end in another process, which nothing here hears of: when the
  local break is over the prober first looks at the fleet's state (one round
  trip): it goes as the probe only when the fleet's probe is free; while another
  process probes, the circuit stays open until the next look
  (``RedisStore.probe_poll``), and a look that finds the fleet closed closes the
  circuit, which releases the held calls in the ramp as above;
* the next probe cannot come before the call's end (its deadline, or
  :attr:`Hold.max_wait`), the circuit is isolated, or the call is cancelled: it
  gives up and leaves the queue.

Everything the circuit does to the queue is synchronous and wakes a held call by
cancelling the cancel scope it waits in.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import attrs

from . import _validate as v
from ._clock import Clock
from .errors import ConfigurationError

__all__ = ["Hold", "HoldQueue"]

#: How a hold ended (``CallReleased.outcome``).
RECOVERED = "recovered"
PROBE = "probe"
TIMEOUT = "timeout"
ISOLATED = "isolated"
CANCELLED = "cancelled"


@attrs.frozen(kw_only=True)
class Hold:
    """Hold calls that meet an open circuit until it recovers, then release them in a ramp.

    Pass it as ``Retry(hold=Hold())``. A held call sends nothing while the circuit
    is open; when a probe succeeds it is released at its turn in a ramp: the
    release rate starts at :attr:`ramp_start` times the rate at which calls came to
    be held (the offered load) and doubles every :attr:`ramp_interval` seconds up
    to :attr:`ramp_rate` times it, longest-held first. With the defaults the
    backend gets at most about 1.5 times its usual load in the first second after
    it recovers, and at most twice it until the held calls are through.
    """

    max_calls: int = attrs.field(default=1000, validator=v.number(minimum=1, integer=True))
    """Calls held at once per circuit; beyond them a call fails fast, as without holding."""
    max_wait: float = attrs.field(
        default=30.0, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds a call may spend held in all (its holds between failed probes
    included), whatever its deadline; no hold outlasts the deadline either."""
    ramp_start: float = attrs.field(
        default=0.25, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """The release rate when the circuit recovers, as a multiple of the rate at
    which calls came to be held."""
    ramp_rate: float = attrs.field(
        default=1.0, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """The highest release rate, as a multiple of the rate at which calls came to be
    held (1.0: at most twice the usual load, with the fresh calls)."""
    ramp_interval: float = attrs.field(
        default=0.5, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds in which the release rate doubles."""

    def __attrs_post_init__(self) -> None:
        if self.ramp_start > self.ramp_rate:
            raise ConfigurationError(
                f"Hold: ramp_start ({self.ramp_start!r}) must be <= ramp_rate ({self.ramp_rate!r})"
            )

    def release_offset(self, index: int, arrival_rate: float) -> float:
        """Seconds after the recovery at which held call ``index`` (0: held longest) goes.

        ``arrival_rate`` is the rate (calls per second) at which calls came to be
        held. The release rate starts at ``ramp_start * arrival_rate`` (at least one
        call per ``ramp_interval``) and doubles every ``ramp_interval`` up to
        ``ramp_rate * arrival_rate``; the first held call goes at once.
        """
        if index <= 0:
            return 0.0
        interval = self.ramp_interval
        start = max(self.ramp_start * arrival_rate, 1.0 / interval)
        top = max(self.ramp_rate * arrival_rate, start)
        # Released by time t while the rate grows: start * interval / ln 2 * (2**(t/interval) - 1).
        growing = (top - start) * interval / math.log(2)
        if index <= growing:
            return interval * math.log2(1.0 + index * math.log(2) / (start * interval))
        return interval * math.log2(top / start) + (index - growing) / top


class Gate(Protocol):
    """What a held call reads of its circuit (``_breaker.Circuit``)."""

    def _next_probe(self, now: float) -> float:
        """Clock time at which a probe may next pass (``inf`` when isolated)."""
        ...

    def _probe_free(self, now: float) -> bool:
        """Whether a probe could pass now."""
        ...

    def _accepting(self) -> bool:
        """Whether calls pass (closed)."""
        ...


#: A look at a shared breaker's fleet state (``_shared_breaker.poll_fleet``).
FleetLook = Callable[[Any, float], Awaitable[bool]]


def _fleet_look(gate: Gate) -> FleetLook | None:
    """How a held call on ``gate`` looks at its fleet; ``None`` for a circuit of
    this process alone. A breaker with a store puts its look on the circuits'
    registry (``CircuitRegistry.fleet_look``) when it is bound."""
    look: FleetLook | None = getattr(getattr(gate, "_registry", None), "fleet_look", None)
    return look


class _Waiter:
    """One held call."""

    __slots__ = ("end", "gone", "release_at", "scope")

    def __init__(self, end: float) -> None:
        self.end = end
        """Clock time by which the hold must end."""
        self.gone: str | None = None
        """Why the circuit let go of it without a recovery (TIMEOUT, ISOLATED)."""
        self.release_at: float | None = None
        """Clock time of its turn in the ramp, once the circuit recovered."""
        self.scope: anyio.CancelScope | None = None
        """The scope it waits in; cancelling it wakes the call."""

    def wake(self) -> None:
        scope = self.scope
        if scope is not None:
            scope.cancel()


class HoldQueue:
    """The calls held on one circuit, longest held first, and the ramp that releases them."""

    __slots__ = ("_arrived", "_config", "_prober", "_since", "_waiters")

    def __init__(self, config: Hold) -> None:
        self._config = config
        # A dict as an ordered set: O(1) removal of a cancelled call, in any order.
        self._waiters: dict[_Waiter, None] = {}
        self._prober: _Waiter | None = None
        # Calls that came to be held (those refused for the cap too) since the first
        # of them, to size the ramp to the offered load.
        self._arrived = 0
        self._since = 0.0

    @property
    def config(self) -> Hold:
        """The settings of the Retry layer that held the first call on this circuit."""
        return self._config

    def __len__(self) -> int:
        return len(self._waiters)

    def join(self, end: float, now: float) -> _Waiter | None:
        """Hold a call until clock time ``end`` at the latest; ``None`` when full."""
        if not self._arrived:
            self._since = now
        self._arrived += 1
        return self._add(_Waiter(end))

    def _add(self, waiter: _Waiter) -> _Waiter | None:
        if len(self._waiters) >= self._config.max_calls:
            return None
        self._waiters[waiter] = None
        if self._prober is None:
            self._prober = waiter
        return waiter

    def leave(self, waiter: _Waiter) -> None:
        """The call stopped holding (released, gave up or cancelled)."""
        self._waiters.pop(waiter, None)
        waiter.scope = None
        if self._prober is waiter:
            # The next longest held takes over the probing.
            self._prober = next(iter(self._waiters), None)
            if self._prober is not None:
                self._prober.wake()

    # -- what the circuit tells it (synchronous) --

    def recovered(self, now: float) -> None:
        """The circuit closed: give every held call its turn in the ramp, and wake it."""
        waiters = self._waiters
        if not waiters:
            self._arrived = 0
            return
        config = self._config
        rate = self._arrived / max(now - self._since, config.ramp_interval)
        for index, waiter in enumerate(waiters):
            waiter.release_at = now + config.release_offset(index, rate)
            waiter.wake()
        waiters.clear()
        self._prober = None
        self._arrived = 0

    def reopened(self, until: float) -> None:
        """A probe failed: the circuit is open until ``until``. Calls whose hold must end
        before then give up now; the prober sets its timer for the new break."""
        for waiter in self._waiters:
            if waiter.end <= until:
                waiter.gone = TIMEOUT
                waiter.wake()
        self.nudge()

    def isolated(self) -> None:
        """Held open by hand: nobody can wait for it."""
        for waiter in self._waiters:
            waiter.gone = ISOLATED
            waiter.wake()

    def nudge(self) -> None:
        """Wake the prober (a probe slot came free, or the break changed)."""
        if self._prober is not None:
            self._prober.wake()

    # -- the held call's side --

    async def wait(self, waiter: _Waiter, gate: Gate, clock: Clock) -> str:
        """Hold ``waiter`` (from :meth:`join`) until it may go; return how the hold ended.

        RECOVERED or PROBE: the call may send its next attempt; TIMEOUT or ISOLATED:
        it gives up. It always leaves the queue, cancelled or not.
        """
        fleet = _fleet_look(gate)
        try:
            while True:
                release_at = waiter.release_at
                if release_at is not None:
                    # Recovered: wait for this call's turn in the ramp (out of the queue).
                    turn = release_at - clock.now()
                    if turn > 0:
                        await clock.sleep(turn)
                    if gate._accepting():
                        return RECOVERED
                    # Open again before this call's turn: hold again, if it can be seen back.
                    waiter.release_at = None
                    if gate._next_probe(clock.now()) >= waiter.end or self._add(waiter) is None:
                        return TIMEOUT
                    continue
                if waiter.gone is not None:
                    return waiter.gone
                now = clock.now()
                next_probe = gate._next_probe(now)
                if next_probe >= waiter.end:
                    return ISOLATED if next_probe == math.inf else TIMEOUT
                timer: float | None = None
                if self._prober is waiter:
                    if gate._probe_free(now):
                        if fleet is None or await fleet(gate, now):
                            return PROBE
                        continue  # the look moved the circuit: read it again
                    if next_probe > now:
                        timer = next_probe - now
                with anyio.CancelScope() as scope:
                    waiter.scope = scope
                    if timer is not None:
                        # The prober's one timer: the end of the break, on the pipeline clock.
                        await clock.sleep(timer)
                    else:
                        # Woken by the circuit; the deadline is enforced in real time (as
                        # Timeout(total=...) does), and checked on the pipeline clock above.
                        await anyio.sleep(waiter.end - now)
                        return TIMEOUT
                waiter.scope = None
        finally:
            self.leave(waiter)
