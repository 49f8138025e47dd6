"""One retry budget for a fleet: ``RetryBudget(store=...)``.

Where it sits: it is the pipeline's ``env.budget`` when the :class:`~resilience.RetryBudget`
has a store, in place of a :class:`~resilience._backoff.BudgetWindow`. The rule
is the same (retries in any second at most ``max(min_per_second, ratio *
calls)``), counted over every process that shares the store's key.

Cost: a call deposits into a local counter, as without a store; the counts are
carried to the store at most once per window slot (50 ms) by the first call of
the slot, so a healthy pipeline makes at most 20 store updates a second, however
many calls it sends. On Redis even those make no round trip of their own: they
wait (``RedisStore.flush_delay``) to ride along with the next one (a rate-limit
slot, a breaker's step). A retry costs one store step, which adds the calls not
yet carried and takes the retry in the same atomic update (one Lua script on
Redis). Calls not yet carried are missing from the other processes' count for up
to a slot and the flush delay: that only lowers the allowance they see.

Hedges and the splitter's rounds ask synchronously (they cannot wait for a
store): they draw on this process's own window only, as without a store.
When Redis is away the store answers from its local state (the same rule, on
this process's calls alone).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs

from ._backoff import BudgetWindow
from ._clock import SystemClock
from ._store import BUDGET_SLOTS

if TYPE_CHECKING:
    from ._backoff import RetryBudget
    from ._clock import Clock
    from ._layer import PipelineEnv
    from ._store import StateStore

__all__ = ["SharedBudget"]

_SLOT = 1.0 / BUDGET_SLOTS


class SharedBudget:
    """The runtime state of a :class:`~resilience.RetryBudget` with a store."""

    __slots__ = (
        "_clock",
        "_count",
        "_floor",
        "_flush_at",
        "_key",
        "_local",
        "_now",
        "_pending",
        "_ratio",
        "_reserve",
        "_store",
    )

    def __init__(self, config: RetryBudget, clock: Clock) -> None:
        assert config.store is not None
        self._store: StateStore = config.store
        self._key = config.key
        self._ratio = float(config.ratio)
        self._floor = float(config.min_per_second)
        self._reserve = float(config.initial)
        self._now = time.monotonic if type(clock) is SystemClock else clock.now
        self._clock = clock
        # This process's own view: what hedges and the splitter draw on. The reserve
        # is kept here, once, not in that window too.
        self._local = BudgetWindow(attrs.evolve(config, initial=0.0, store=None), clock)
        self._pending = 0
        self._flush_at = 0.0
        self._count = getattr(self._store, "count_calls", None)

    def attach(self, env: PipelineEnv) -> None:
        """Bound into ``env``'s pipeline: the store's fallbacks count in its telemetry."""
        bound = getattr(self._store, "bound", None)
        if bound is not None:
            self._store = bound(env, "retry_budget")
            self._count = getattr(self._store, "count_calls", None)

    @property
    def store(self) -> StateStore:
        """The store that holds the fleet's window."""
        return getattr(self._store, "store", self._store)  # not the pipeline's view of it

    def deposit(self) -> None:
        """A logical call started: counted here at once, in the store within a slot."""
        self._local.deposit()
        self._pending += 1

    def flush_due(self) -> bool:
        """Whether calls wait to be carried to the store (the first call of a slot)."""
        return self._now() >= self._flush_at

    async def flush(self) -> None:
        """Carry the calls counted since the last store step."""
        pending, self._pending = self._pending, 0
        now = self._clock.now()
        self._flush_at = self._now() + _SLOT
        if not pending:
            return
        if self._count is not None:
            # Waits in the store to ride along with another round trip.
            await self._count(self._key, now, calls=pending, ratio=self._ratio, floor=self._floor)
        else:
            await self._store.update_budget(
                self._key, now, calls=pending, take=False, ratio=self._ratio, floor=self._floor
            )

    async def take(self, now: float) -> bool:
        """Take one retry from the fleet's window (or from the reserve); ``False``
        when both are spent."""
        pending, self._pending = self._pending, 0
        self._flush_at = self._now() + _SLOT
        taken = await self._store.update_budget(
            self._key, now, calls=pending, take=True, ratio=self._ratio, floor=self._floor
        )
        if taken:
            return True
        if self._reserve >= 1.0:
            self._reserve -= 1.0
            return True
        return False

    # The synchronous protocol (hedges, the splitter): this process's window.
    def allows(self, now: float) -> bool:
        """Whether this process's own window allows a retry now."""
        return self._local.allows(now)

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from this process's own window."""
        return self._local.try_withdraw(now)
