"""One token per expiry for a whole fleet: ``AuthRefresh(store=...)``.

Where it sits: inside :class:`~resilience.AuthRefresh`'s single-flight, on its
slow path only. A pipeline's handler keeps its own cached token as always, so a
call with a fresh token never touches the store; when the token is missing, due
for refresh or rejected, the one caller of this process that holds the
handler's lock asks the store instead of the token endpoint:

1. the store's cached token (``<prefix>:tok:<vendor>:<client id or origin>``,
   living until the token's refresh time) is adopted as it is;
2. else, in the same step, the caller takes a lease (``lease_factor`` times the
   fetch timeout), fetches, stores the token and releases the lease;
3. else another process holds the lease: the caller polls the store with a
   short backoff on the pipeline's clock until the token appears, and fetches
   on its own when it has not after the fetch timeout (the holder died).

On a rejection the rejected token is deleted from the store only while it is
still there (compare and delete), so a replacement another process stored stays.
Only the access token is stored (it expires); the client secret never leaves the
provider.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs

from ._store import StateStore
from ._tokens import Token

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = ["SharedToken"]

logger = logging.getLogger("resilience")

#: The lease on a fetch is this many times the fetch timeout: a live holder never
#: loses it, and a dead one blocks the fleet for at most that long.
LEASE_FACTOR = 2.0
#: The first and the longest pause between two looks at the store while another
#: process fetches.
POLL_FIRST = 0.01
POLL_MAX = 0.25
#: The fetch timeout assumed when AuthRefresh has none (httpx's per-phase 5 s,
#: a few phases).
DEFAULT_FETCH_TIME = 30.0
#: A token whose refresh time is closer than this is not worth storing.
MIN_TTL = 0.001


@attrs.define(eq=False, slots=True, repr=False)
class SharedToken:
    """The store side of one AuthRefresh handler (one per pipeline)."""

    store: StateStore
    key: str
    """``<vendor>:<client id or origin>`` (the store adds its prefix and ``tok:``)."""
    fetch_time: float
    """The longest one fetch may take (AuthRefresh's ``fetch_timeout``)."""
    owner: str = attrs.field(factory=lambda: secrets.token_hex(8))
    """Tags this process's leases (random: never derived from a credential)."""
    fetches: int = attrs.field(default=0)
    """Tokens this handler fetched itself (the others it adopted from the store)."""
    adopted: int = attrs.field(default=0)
    """Tokens it took from the store."""

    async def obtain(
        self,
        clock: Clock,
        fetch: Callable[[], Awaitable[Token]],
        refresh_after: Callable[[float | None], float],
        rejected: str | None,
    ) -> tuple[Token, float, float, bool]:
        """A token for the handler: ``(token, started, refresh_in, fetched)``.

        ``token.expires_in`` is its remaining life from ``started`` (the pipeline
        clock's time when it was fetched or adopted); ``refresh_in`` is when, from
        ``started``, the handler should come back. ``rejected`` is the value the
        server refused, to delete from the store first. A failed ``fetch``
        releases the lease and raises.
        """
        store, key, owner = self.store, self.key, self.owner
        if rejected is not None:
            await store.drop_token(key, rejected)
        lease = LEASE_FACTOR * self.fetch_time
        give_up = clock.now() + self.fetch_time
        pause = POLL_FIRST
        while True:
            now = clock.now()
            claim = await store.claim_token(key, now, lease=lease, owner=owner)
            if isinstance(claim, tuple):
                value, ttl, margin = claim
                if value == rejected:
                    # Someone stored the rejected token again (a late writer): drop it.
                    await store.drop_token(key, value)
                    continue
                self.adopted += 1
                life = None if margin < 0 else ttl + margin
                return Token(value, life), now, ttl, False
            if claim or now >= give_up:
                # The lease is ours, or its holder has not delivered in a whole
                # fetch's time (it died, or hangs): fetch here either way.
                return await self._fetch(clock, fetch, refresh_after, now)
            await clock.sleep(min(pause, max(give_up - now, 0.0)))
            pause = min(pause * 2, POLL_MAX)

    async def _fetch(
        self,
        clock: Clock,
        fetch: Callable[[], Awaitable[Token]],
        refresh_after: Callable[[float | None], float],
        started: float,
    ) -> tuple[Token, float, float, bool]:
        store, key, owner = self.store, self.key, self.owner
        try:
            token = await fetch()
        except BaseException:
            # Failed or cancelled: the next claimer may try at once. Shielded (the
            # store bounds its own calls) so that a cancellation still releases.
            with anyio.CancelScope(shield=True):
                await _quietly(store.release_token(key, owner))
            raise
        self.fetches += 1
        life = token.expires_in
        refresh_in = refresh_after(life)
        ttl = (3600.0 if math.isinf(refresh_in) else refresh_in) - (clock.now() - started)
        if ttl >= MIN_TTL:
            margin = -1.0 if life is None else life - refresh_in
            await store.put_token(
                key, clock.now(), value=token.value, ttl=ttl, margin=margin, owner=owner
            )
        else:
            await store.release_token(key, owner)
        return token, started, refresh_in, True


async def _quietly(step: Awaitable[None]) -> None:
    """Run a store step during a failure's unwinding; its own failure must not mask it."""
    try:
        await step
    except Exception:  # the store's own fallback logs; this path only cleans up
        logger.debug("resilience auth: releasing the token lease failed", exc_info=True)
