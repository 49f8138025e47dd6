"""State stores: where a rate limiter's slots and a retry budget's window live.

A layer that keeps per-key counters asks a store to update them; the store does the
whole read-modify-write in one step, so two callers (two tasks, or two processes
sharing a Redis store) can never both take the last slot. The layer never reads a
counter and writes it back itself.

:class:`MemoryStore` is the default: plain dicts in this process, updated
synchronously (one event loop never interleaves inside an update), as fast as a
layer's own fields. ``resilience._redis_store.RedisStore`` shares the same state
between processes and falls back to a :class:`MemoryStore` while Redis is away.

Two kinds of state:

* a **GCRA slot** (the generic cell rate algorithm, one number per key: the
  theoretical arrival time ``tat`` of the next call): :meth:`StateStore.take_slot`
  admits a call now, reserves one a little later (the caller sleeps), or refuses
  and says when a slot frees;
* a **retry budget window** (``Retry(budget=RetryBudget(..., store=...))``):
  :meth:`StateStore.update_budget` counts the calls started and, in the same
  step, takes one retry when the last second's retries stay within
  ``max(floor, ratio * calls)`` (the :class:`~resilience.RetryBudget` rule, over
  :data:`BUDGET_SLOTS` slots of 1/20 s);
* a **shared access token** and the lease of whoever fetches the next one
  (:meth:`StateStore.claim_token`, :meth:`~StateStore.put_token`,
  :meth:`~StateStore.release_token`, :meth:`~StateStore.drop_token`), so that a
  fleet makes one token request per expiry (``AuthRefresh(store=...)``). Only the
  access token is kept, never a client secret.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import attrs

from . import _validate as v

__all__ = ["BUDGET_SLOTS", "MemoryStore", "StateStore", "TokenClaim", "budget_step", "gcra"]

#: What :meth:`StateStore.claim_token` answers: the cached token as ``(value,
#: seconds its key still lives, margin)`` (the margin is how much longer the token
#: itself is valid after the key expires; ``-1`` for a token that never expires),
#: ``True`` when the caller now holds the lease to fetch it, ``False`` when
#: another holder does.
TokenClaim = tuple[str, float, float] | bool


@runtime_checkable
class StateStore(Protocol):
    """Atomic updates of per-key counters; every method is one indivisible step."""

    async def take_slot(
        self, key: str, now: float, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        """Take a slot of the GCRA limit ``burst`` calls at once, one more every ``interval`` s.

        Args:
            key: the limit's key (the store adds its own prefix).
            now: the caller's clock (a store that shares state across processes
                may use its own clock instead: the answer is a duration).
            interval: seconds between calls at the sustained rate (``per / rate``).
            burst: calls admitted at once after a quiet spell (at least 1).
            max_wait: the longest the caller accepts to wait for a slot.

        Returns:
            ``(True, wait)``: a slot is the caller's after ``wait`` seconds (0 for
            now); it is reserved, so the caller must sleep, not ask again.
            ``(False, retry_after)``: refused, nothing reserved; a slot frees in
            ``retry_after`` seconds (more than ``max_wait``).
        """
        ...

    async def update_budget(
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        """Count ``calls`` started now; with ``take``, take one retry if the budget allows.

        A retry is allowed while the retries of the last second, this one
        included, stay within ``max(floor, ratio * calls of the last second)``.

        Returns:
            whether one retry was taken (always ``False`` when not asked).
        """
        ...

    async def claim_token(self, key: str, now: float, *, lease: float, owner: str) -> TokenClaim:
        """The cached access token under ``key``; else, in the same step, the lease
        to fetch it (for ``lease`` seconds, tagged ``owner``) if nobody else holds it.

        See :data:`TokenClaim` for the answer; a holder that claims again renews
        its lease.
        """
        ...

    async def put_token(
        self, key: str, now: float, *, value: str, ttl: float, margin: float, owner: str
    ) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds and release ``owner``'s lease."""
        ...

    async def release_token(self, key: str, owner: str) -> None:
        """Release ``owner``'s lease on ``key`` (after a failed fetch); another's stays."""
        ...

    async def drop_token(self, key: str, value: str) -> bool:
        """Delete ``key``'s token only while it is still ``value`` (compare and delete):
        a token the server rejected goes, a replacement someone already stored stays."""
        ...


#: Seconds of float rounding forgiven: a caller that slept exactly the
#: ``retry_after`` it was given may come back a few ulps early.
_SLACK = 1e-9


def gcra(
    tat: float, now: float, interval: float, burst: int, max_wait: float
) -> tuple[bool, float, float]:
    """One GCRA decision: ``(admitted, wait or retry_after, new tat)``.

    ``tat`` is when the key's bucket is empty again at the sustained rate. A call
    at ``now`` is admitted when ``tat + interval`` lies at most ``burst *
    interval`` ahead (with ``max_wait`` of slack, the reservation it then sleeps
    off). Over any span of ``T`` seconds at most ``burst + T / interval`` calls
    get through: the property the tests check.
    """
    if tat < now:
        tat = now
    new_tat = tat + interval
    wait = new_tat - burst * interval - now
    if wait > max_wait + _SLACK:
        return False, wait, tat
    return True, (wait if wait > _SLACK else 0.0), new_tat


#: A budget window is kept as this many slots of 1/BUDGET_SLOTS s (as
#: :class:`~resilience.RetryBudget`'s own window).
BUDGET_SLOTS = 20


@attrs.define(eq=False, slots=True)
class _Window:
    """One budget's last second: per slot (index ``slot % BUDGET_SLOTS``) the slot
    number it holds, its calls and its retries."""

    slots: list[int]
    calls: list[int]
    retries: list[int]
    expires: float


def budget_step(
    window: _Window, now: float, calls: int, take: bool, ratio: float, floor: float
) -> bool:
    """The per-second rule on one window (what the Redis script does on the server)."""
    slot = math.floor(now * BUDGET_SLOTS)
    index = slot % BUDGET_SLOTS
    slots = window.slots
    if slots[index] != slot:
        slots[index] = slot
        window.calls[index] = 0
        window.retries[index] = 0
    window.calls[index] += calls
    if not take:
        return False
    oldest = slot - BUDGET_SLOTS
    seen = retried = 0
    for i in range(BUDGET_SLOTS):
        if slots[i] > oldest:
            seen += window.calls[i]
            retried += window.retries[i]
    share = ratio * seen
    if retried + 1 <= (share if share > floor else floor):
        window.retries[index] += 1
        return True
    return False


@attrs.define(eq=False, slots=True)
class _CachedToken:
    value: str
    margin: float
    expires: float


@attrs.define(eq=False)
class MemoryStore:
    """State in this process: the default store, and Redis's fallback.

    Keys that went idle cost nothing for long: a slot whose ``tat`` has passed is
    the same as no entry, and a budget window untouched for ``idle_after``
    seconds is forgotten; both are dropped in a sweep that runs when the dicts have doubled
    since the last one (amortised O(1) per call).
    """

    idle_after: float = attrs.field(
        default=600.0, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds after which an untouched budget window is forgotten."""
    _tats: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _windows: dict[str, _Window] = attrs.field(factory=dict, init=False, repr=False)
    _sweep_at: int = attrs.field(default=1024, init=False, repr=False)
    # Tokens and leases are one per vendor and client id: few, never swept.
    _tokens: dict[str, _CachedToken] = attrs.field(factory=dict, init=False, repr=False)
    _leases: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        """Keys held now (slots and budget windows)."""
        return len(self._tats) + len(self._windows)

    def take_slot_now(
        self, key: str, now: float, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        """:meth:`take_slot`, synchronously (what the layers call on this store)."""
        tats = self._tats
        admitted, wait, tat = gcra(tats.get(key, now), now, interval, burst, max_wait)
        if admitted:
            tats[key] = tat
            if len(tats) >= self._sweep_at:
                self._sweep(now)
        return admitted, wait

    async def take_slot(
        self, key: str, now: float, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        return self.take_slot_now(key, now, interval, burst, max_wait)

    def peek_slot(self, key: str) -> float | None:
        """``key``'s ``tat`` (``None`` when it has no state)."""
        return self._tats.get(key)

    def forget_slot(self, key: str) -> float | None:
        """Drop ``key``'s slot state; return its ``tat`` (``None`` if it had none)."""
        return self._tats.pop(key, None)

    def update_budget_now(
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        """:meth:`update_budget`, synchronously."""
        window = self._windows.get(key)
        if window is None or window.expires <= now:
            empty = [-BUDGET_SLOTS - 1] * BUDGET_SLOTS
            window = _Window(empty, [0] * BUDGET_SLOTS, [0] * BUDGET_SLOTS, 0.0)
            self._windows[key] = window
            if len(self._windows) >= self._sweep_at:
                self._sweep(now)
        window.expires = now + self.idle_after
        return budget_step(window, now, calls, take, ratio, floor)

    async def update_budget(
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        return self.update_budget_now(key, now, calls=calls, take=take, ratio=ratio, floor=floor)

    def claim_token_now(self, key: str, now: float, *, lease: float, owner: str) -> TokenClaim:
        """:meth:`claim_token`, synchronously."""
        cached = self._tokens.get(key)
        if cached is not None:
            if cached.expires > now:
                return cached.value, cached.expires - now, cached.margin
            del self._tokens[key]
        held = self._leases.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[key] = (owner, now + lease)
        return True

    async def claim_token(self, key: str, now: float, *, lease: float, owner: str) -> TokenClaim:
        return self.claim_token_now(key, now, lease=lease, owner=owner)

    def put_token_now(
        self, key: str, now: float, *, value: str, ttl: float, margin: float, owner: str
    ) -> None:
        """:meth:`put_token`, synchronously."""
        self._tokens[key] = _CachedToken(value, margin, now + ttl)
        self.release_token_now(key, owner)

    async def put_token(
        self, key: str, now: float, *, value: str, ttl: float, margin: float, owner: str
    ) -> None:
        self.put_token_now(key, now, value=value, ttl=ttl, margin=margin, owner=owner)

    def release_token_now(self, key: str, owner: str) -> None:
        """:meth:`release_token`, synchronously."""
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]

    async def release_token(self, key: str, owner: str) -> None:
        self.release_token_now(key, owner)

    def drop_token_now(self, key: str, value: str) -> bool:
        """:meth:`drop_token`, synchronously."""
        cached = self._tokens.get(key)
        if cached is None or cached.value != value:
            return False
        del self._tokens[key]
        return True

    async def drop_token(self, key: str, value: str) -> bool:
        return self.drop_token_now(key, value)

    def _sweep(self, now: float) -> None:
        tats = self._tats
        for key in [k for k, tat in tats.items() if tat <= now]:
            del tats[key]
        windows = self._windows
        for key in [k for k, w in windows.items() if w.expires <= now]:
            del windows[key]
        # The next sweep waits until the live keys have doubled: amortised O(1).
        self._sweep_at = max(1024, 2 * max(len(tats), len(windows)))
