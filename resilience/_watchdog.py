"""The attempt watchdog: cuts attempts at their limits without a timer each.

Where it sits in the flow: the engine (``_pipeline.py``) bounds each attempt by
the nearer of ``Timeout(attempt=...)`` and the call's deadline. An anyio cancel
scope per attempt would do it, but a scope with a deadline costs a loop timer to
arm and cancel on every attempt, more than the rest of a retry pipeline's
success path put together. Under asyncio (3.11 and later) one watchdog per event
loop keeps every attempt's limit in a heap and arms a single loop timer for the
earliest; an attempt that ends in time only pushes an entry and marks it done.
When a limit passes, the watchdog cancels that task natively (``Task.cancel``),
and the engine, which alone awaits in the guarded region, takes the
cancellation back (``Task.uncancel``) and classifies the attempt as timed out,
as ``asyncio.timeout()`` does.

A native cancellation would go through an anyio shield, so the watchdog never
delivers one while the task sits in a shielded anyio scope opened inside the
guarded region (a response being closed): it looks again a millisecond later,
as anyio itself does. Reading that needs anyio's task state, which is not public
API: when it cannot be read, the engine uses anyio scopes (:func:`arm`
answers ``None``), as it does under trio and on Python 3.10.
"""

from __future__ import annotations

import heapq
import sys
from typing import Any

__all__ = ["Watch", "Watchdog", "arm"]

#: Seconds a cut waits when the task is inside a shielded scope, before trying again.
_SHIELD_RETRY = 0.001
#: Done entries allowed in the heap beyond the live ones before it is rebuilt.
_SLACK = 1024

#: anyio's task states (see the module docstring), loaded with the first watchdog:
#: importing anyio's asyncio backend loads asyncio, which ``import resilience``
#: does not.
_anyio_task_states: Any = None


def _load_task_states() -> Any:
    global _anyio_task_states
    try:
        from anyio._backends import _asyncio as backend
    except Exception:  # pragma: no cover - another anyio layout
        return None
    states = getattr(backend, "_task_states", None)
    if states is None or not callable(getattr(states, "get", None)):
        return None  # pragma: no cover - another anyio layout
    _anyio_task_states = states
    return states


class Watch:
    """One guarded region: a task, the cancel count it had, and whether it was cut."""

    __slots__ = ("cancelling", "dog", "fired", "scope", "task")

    def __init__(self, dog: Watchdog, task: Any, cancelling: int, scope: object) -> None:
        self.dog = dog
        self.task: Any = task
        """The task, until the region ends (``None`` then)."""
        self.cancelling = cancelling
        self.fired = False
        """Whether the watchdog cancelled the task for this region."""
        self.scope = scope
        """The task's innermost anyio scope when the region began."""

    def cut(self, error: BaseException) -> bool:
        """Whether ``error``, raised in a region the watchdog cut, is that cut alone
        (taken back, so the attempt is a timeout), rather than another
        cancellation too (which goes on)."""
        if not isinstance(error, self.dog.cancelled):
            return False
        return bool(self.task.uncancel() <= self.cancelling)

    def end(self) -> None:
        """The region ended (in time or not): its entry is dead."""
        self.dog.end(self)


class Watchdog:
    """The limits of one asyncio event loop's attempts, and its one timer."""

    __slots__ = ("_armed", "_dead", "_handle", "_heap", "_seq", "cancelled", "loop")

    def __init__(self, loop: Any, cancelled: type[BaseException]) -> None:
        self.loop = loop
        self.cancelled = cancelled
        """asyncio's ``CancelledError`` (asyncio is not imported by the package)."""
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = 0
        self._dead = 0
        self._armed = float("inf")
        self._handle: Any = None

    def start(self, task: Any, seconds: float) -> Watch:
        """Guard ``task`` for ``seconds`` from now; :meth:`end` the returned watch."""
        states = _anyio_task_states
        state = states.get(task) if states is not None else None
        watch = Watch(self, task, task.cancelling(), None if state is None else state.cancel_scope)
        when = self.loop.time() + seconds
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (when, self._seq, watch))
        # Entries of regions that ended come off the top as new ones go in, so the
        # heap holds about the attempts in flight, not every one of the last minute.
        while heap[0][2].task is None:
            heapq.heappop(heap)
            self._dead -= 1
        if when < self._armed:
            self._arm(when)
        return watch

    def end(self, watch: Watch) -> None:
        """The region ended (in time or not): its entry is dead."""
        watch.task = None
        if watch.fired:
            return  # popped when it fired: no entry left behind
        self._dead += 1
        if self._dead > _SLACK and self._dead > len(self._heap) // 2:
            live = [entry for entry in self._heap if entry[2].task is not None]
            heapq.heapify(live)
            self._heap = live
            self._dead = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed = float("inf")
        now = self.loop.time()
        heap = self._heap
        later: list[Watch] = []
        while heap and heap[0][0] <= now:
            watch = heapq.heappop(heap)[2]
            task = watch.task
            if task is None:
                self._dead -= 1
                continue
            if _shielded(task, watch.scope):
                later.append(watch)
                continue
            watch.fired = True
            task.cancel()
        for watch in later:
            self._seq += 1
            heapq.heappush(heap, (now + _SHIELD_RETRY, self._seq, watch))
        if heap:
            self._arm(heap[0][0])


def _shielded(task: Any, outer: object) -> bool:
    """Whether ``task`` sits in a shielded anyio scope opened inside the region."""
    states = _anyio_task_states
    state = states.get(task) if states is not None else None
    scope = None if state is None else state.cancel_scope
    while scope is not None and scope is not outer:
        if getattr(scope, "_shield", False):
            return True
        scope = getattr(scope, "_parent_scope", None)
    return False


_WATCHDOGS: dict[int, Watchdog] = {}
#: The last watchdog handed out: most programs run one event loop.
_last: Watchdog | None = None
#: ``Task.uncancel`` (Python 3.11): without it a native cut cannot be taken back.
_UNCANCEL = sys.version_info >= (3, 11)


def arm(seconds: float) -> Watch | None:
    """Guard the running task for ``seconds``: its :class:`Watch` (``end()`` it
    when the region ends), or ``None`` when the engine should use an anyio scope
    instead (trio, Python 3.10, no task, anyio's task state unreadable)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or not _UNCANCEL:
        return None
    # The running loop without an exception when there is none (under trio).
    loop = asyncio._get_running_loop()
    if loop is None:
        return None
    dog = _last
    if dog is None or dog.loop is not loop:
        dog = _watchdog_of(loop, asyncio.CancelledError)
        if dog is None:
            return None
    task = asyncio.current_task(loop)
    if task is None:
        return None
    return dog.start(task, seconds)


def _watchdog_of(loop: Any, cancelled: type[BaseException]) -> Watchdog | None:
    """``loop``'s watchdog, made on first use, or ``None`` without anyio's task state."""
    global _last
    if _anyio_task_states is None and _load_task_states() is None:
        return None
    dog = _WATCHDOGS.get(id(loop))
    if dog is None or dog.loop is not loop:
        dog = _WATCHDOGS[id(loop)] = Watchdog(loop, cancelled)
        if len(_WATCHDOGS) > 64:
            # Loops come and go (a test suite runs many): keep the ones still open.
            for key, other in list(_WATCHDOGS.items()):
                if other.loop.is_closed():
                    del _WATCHDOGS[key]
    _last = dog
    return dog
