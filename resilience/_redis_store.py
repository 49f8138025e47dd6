"""RedisStore: rate limits, retry budgets and tokens shared by every process of a fleet.

Layers hand their per-key updates to a :class:`~resilience.StateStore`; this one
keeps them in Redis, so 8 workers calling one vendor spend one rate limit and one
retry budget between them. Each update is one Lua script run on the server (the
read, the decision and the write happen there, atomically: two workers can never
both take the last slot), so a call costs one round trip. Times are the Redis
server's (``TIME``), never the workers' clocks, which need not agree; what comes
back is a duration. Every key carries a TTL, so idle keys vanish, and every key
starts with the application's prefix.

A shared token is a hash (``<prefix>:tok:<key>``: the access token and its
margin, never a client secret) living until the token's refresh time, next to a
lease (``<prefix>:lease:tok:<key>``, ``SET NX PX``) held by the one process that
fetches the next token; a rejected token is deleted only while it is still the
one stored (compare and delete).

Redis failing never takes the application down: every Redis call is bounded by
``timeout``; when Redis errs or is slow, the store logs it once, counts it
(:attr:`RedisStore.outages`, :attr:`RedisStore.fallback_calls`) and answers from a
:class:`~resilience.MemoryStore` in this process, asking Redis again every
``retry_interval`` seconds (one call at a time probes). When Redis answers, the
slots spent locally meanwhile are carried into Redis with the key's next update.

The ``redis`` package (``pip install "httpx-resilience[redis]"``) is imported
only when a store is built. Its asyncio client runs only under asyncio: under trio
the store refuses with a :class:`~resilience.errors.ConfigurationError`, and the
default in-memory store works there as everywhere.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from typing import Any

import anyio
import attrs
import sniffio

from . import _validate as v
from ._clock import SYSTEM_CLOCK, Clock
from ._store import MemoryStore, TokenClaim
from .errors import ConfigurationError

__all__ = ["RedisStore"]

logger = logging.getLogger("resilience")

#: Waits, intervals and times travel as whole microseconds: Lua numbers are
#: doubles, exact to 2**53 (285 years of microseconds).
_US = 1_000_000
#: A wait longer than this (about 31 years) stands for "no limit".
_NO_LIMIT_US = 10**15

# KEYS[1]: the slot's key. ARGV: interval (us), burst, max_wait (us), ahead (us: a
# local reservation made while Redis was away, carried over once).
_GCRA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local tat = stored
local floor = now + tonumber(ARGV[4])
if tat < floor then tat = floor end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait > max_wait then
  if tat > stored and tat > now then
    -- a refused call still brings the local spend over
    redis.call('SET', KEYS[1], string.format('%.0f', tat),
               'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  return {0, string.format('%.0f', wait)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
if wait < 0 then wait = 0 end
return {1, string.format('%.0f', wait)}
"""

# KEYS[1]: the bucket's hash. ARGV: deposit, withdraw (0/1), refill per second,
# capacity, initial, ttl (ms).
_BUDGET = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deposit = tonumber(ARGV[1])
local refill = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = math.min(tonumber(ARGV[5]), capacity)
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) / 1000000 * refill
  ts = now
end
tokens = tokens + deposit
if tokens > capacity then tokens = capacity end
local taken = 0
if ARGV[2] == '1' and tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.0f', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {taken, string.format('%.6f', tokens)}
"""

# The shared token: KEYS[1] its hash (v: the access token, m: its margin), KEYS[2]
# the fetch lease. ARGV: owner, lease (ms). Answers {1, value, pttl, margin}, {2}
# (the lease is the caller's) or {0} (another holds it).
_CLAIM = """
local cached = redis.call('HMGET', KEYS[1], 'v', 'm')
if cached[1] then
  return {1, cached[1], redis.call('PTTL', KEYS[1]), cached[2]}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {2}
end
return {0}
"""

# KEYS as _CLAIM. ARGV: value, margin, ttl (ms), owner.
_PUT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS[1]: the lease. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: the token's hash. ARGV: the rejected value.
_DROP = """
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _prefix_ok(instance: RedisStore, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ConfigurationError(
            "RedisStore: prefix must be 1 to 64 letters, digits or _.:- (one per "
            f"application), got {value!r}"
        )


def _url_ok(instance: RedisStore, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        # Never echo the value: a Redis URL may hold a password.
        raise ConfigurationError(
            "RedisStore: url must be a redis://, rediss:// or unix:// URL "
            f"(got a {type(value).__name__} that is not)"
        )


def _where(url: str | None, client: Any) -> str:
    """Host and port of the server, for log lines: never the URL (it may hold a password)."""
    if url is not None:
        rest = url.split("://", 1)[1].rsplit("@", 1)[-1]
        return rest.split("/", 1)[0] or "localhost"
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


@attrs.define(eq=False)
class RedisStore:
    """Rate-limit slots, retry budgets and access tokens kept in Redis, shared by
    many processes.

    ``RedisStore(url="redis://127.0.0.1:6379/0", prefix="billing")``, then
    ``RateLimiter(..., store=store)`` and ``AuthRefresh(..., store=store)`` (or
    ``standard_pipeline(vendor, store=store)``, which hands it to both). Build it
    (or hand it ``client=``, a ``redis.asyncio.Redis`` of your own) once per
    process; it makes its client in the event loop that first uses it. Call
    :meth:`aclose` when done.

    Raises:
        ConfigurationError: a bad argument, ``redis`` is not installed, or the
            store is built or used under trio (redis-py's asyncio client needs
            asyncio).
    """

    url: str | None = attrs.field(default=None, validator=_url_ok, repr=False)
    """The server (``redis://host:port/db``); or give :attr:`client`."""
    prefix: str = attrs.field(default="resilience", validator=_prefix_ok)
    """Starts every key: one per application, so two never share state by accident."""
    client: Any = attrs.field(default=None, repr=False)
    """A ``redis.asyncio.Redis`` to use instead of making one from :attr:`url`."""
    timeout: float = attrs.field(default=0.1, validator=v.number(minimum=0, exclusive_minimum=True))
    """Seconds any Redis call may take before the store answers from local state."""
    retry_interval: float = attrs.field(
        default=1.0, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds between attempts to reach Redis again during an outage."""
    clock: Clock = attrs.field(default=SYSTEM_CLOCK, validator=v.has_method("now"), repr=False)
    """Times the outages (``retry_interval``); the slots use the Redis server's time."""
    budget_ttl: float = attrs.field(default=600.0, validator=v.number(minimum=1.0))
    """Seconds an untouched retry budget lives in Redis (and locally)."""
    local: MemoryStore = attrs.field(
        default=attrs.Factory(
            lambda self: MemoryStore(idle_after=self.budget_ttl), takes_self=True
        ),
        validator=v.instance_of(MemoryStore),
        repr=False,
    )
    """The state used while Redis is away."""
    outages: int = attrs.field(default=0, init=False)
    """Times Redis became unreachable or slow (each logged once)."""
    fallback_calls: int = attrs.field(default=0, init=False)
    """Updates answered from local state because Redis was away."""
    redis_calls: int = attrs.field(default=0, init=False)
    """Updates Redis answered."""
    _down_until: float | None = attrs.field(default=None, init=False, repr=False)
    _was_down: bool = attrs.field(default=False, init=False, repr=False)
    _probing: bool = attrs.field(default=False, init=False, repr=False)
    _redis: Any = attrs.field(default=None, init=False, repr=False)
    _loop: Any = attrs.field(default=None, init=False, repr=False)
    _scripts: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if (self.url is None) == (self.client is None):
            raise ConfigurationError("RedisStore: give exactly one of url= and client=")
        _refuse_trio("built")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - the extra is installed in dev
            raise ConfigurationError(
                'RedisStore needs the redis package: pip install "httpx-resilience[redis]"'
            ) from exc

    @property
    def available(self) -> bool:
        """Whether the last Redis call succeeded (``False`` during an outage)."""
        return self._down_until is None

    def _connect(self) -> Any:
        """The Redis client for the running event loop (made on first use in it)."""
        try:
            # asyncio is loaded by now (building the store imported redis.asyncio), and
            # ``import resilience`` does not load it.
            loop = sys.modules["asyncio"].get_running_loop()
        except RuntimeError:
            _refuse_trio("used")
            raise
        if loop is not self._loop:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            if self.client is not None:
                client = self.client
            else:
                # No retries inside redis-py: a failed call falls back at once, and
                # the store decides when to ask again.
                client = redis.asyncio.Redis.from_url(
                    str(self.url),
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
            self._redis = client
            self._loop = loop
            self._scripts = tuple(
                client.register_script(script)
                for script in (_GCRA, _BUDGET, _CLAIM, _PUT, _RELEASE, _DROP)
            )
        return self._scripts

    def _use_local(self) -> bool:
        """During an outage: whether this update goes to local state (else it probes)."""
        if self._down_until is None:
            return False
        if self._probing or self.clock.now() < self._down_until:
            return True
        self._probing = True
        return False

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self.clock.now() + self.retry_interval
        if not self._was_down:
            self.outages += 1
            self._was_down = True
            logger.warning(
                "resilience RedisStore %s (prefix %s) failed (%s): using this process's "
                "state until it answers",
                _where(self.url, self.client),
                self.prefix,
                type(exc).__name__,
            )

    def _answered(self) -> None:
        if self._was_down:
            self._was_down = False
            logger.warning(
                "resilience RedisStore %s (prefix %s) answers again: state is shared again",
                _where(self.url, self.client),
                self.prefix,
            )
        self._down_until = None

    async def take_slot(
        self, key: str, now: float, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        gcra = self._connect()[0]
        local = self.local
        if self._use_local():
            self.fallback_calls += 1
            return local.take_slot_now(key, now, interval, burst, max_wait)
        spent = local.peek_slot(key)
        ahead = spent - now if spent is not None and spent > now else 0.0
        wait_us = _NO_LIMIT_US if math.isinf(max_wait) else round(max_wait * _US)
        try:
            with anyio.fail_after(self.timeout):
                taken, wait = await gcra(
                    keys=[f"{self.prefix}:rl:{key}"],
                    args=[round(interval * _US), burst, wait_us, round(ahead * _US)],
                )
        except Exception as exc:
            self._failed(exc)
            self.fallback_calls += 1
            return local.take_slot_now(key, now, interval, burst, max_wait)
        finally:
            self._probing = False
        self._answered()
        self.redis_calls += 1
        if spent is not None:
            local.forget_slot(key)
        return int(taken) == 1, int(wait) / _US

    async def update_budget(
        self,
        key: str,
        now: float,
        *,
        deposit: float,
        withdraw: bool,
        refill: float,
        capacity: float,
        initial: float,
    ) -> tuple[bool, float]:
        budget = self._connect()[1]
        local = self.local
        if not self._use_local():
            try:
                with anyio.fail_after(self.timeout):
                    taken, tokens = await budget(
                        keys=[f"{self.prefix}:rb:{key}"],
                        args=[
                            repr(float(deposit)),
                            1 if withdraw else 0,
                            repr(float(refill)),
                            repr(float(capacity)),
                            repr(float(initial)),
                            math.ceil(self.budget_ttl * 1000),
                        ],
                    )
            except Exception as exc:
                self._failed(exc)
            else:
                self._answered()
                self.redis_calls += 1
                return int(taken) == 1, float(tokens)
            finally:
                self._probing = False
        self.fallback_calls += 1
        return local.update_budget_now(
            key,
            now,
            deposit=deposit,
            withdraw=withdraw,
            refill=refill,
            capacity=capacity,
            initial=initial,
        )

    async def _token_script(self, index: int, keys: list[str], args: list[Any]) -> Any:
        """Run a token script; ``None`` when Redis is away (the caller goes local)."""
        script = self._connect()[index]
        if self._use_local():
            self.fallback_calls += 1
            return None
        try:
            with anyio.fail_after(self.timeout):
                answer = await script(keys=keys, args=args)
        except Exception as exc:
            self._failed(exc)
            self.fallback_calls += 1
            return None
        finally:
            self._probing = False
        self._answered()
        self.redis_calls += 1
        return answer

    def _token_keys(self, key: str) -> list[str]:
        return [f"{self.prefix}:tok:{key}", f"{self.prefix}:lease:tok:{key}"]

    async def claim_token(self, key: str, now: float, *, lease: float, owner: str) -> TokenClaim:
        answer = await self._token_script(
            2, self._token_keys(key), [owner, max(1, math.ceil(lease * 1000))]
        )
        if answer is None:
            return self.local.claim_token_now(key, now, lease=lease, owner=owner)
        kind = int(answer[0])
        if kind == 1:
            value = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
            return value, max(0, int(answer[2])) / 1000, float(answer[3])
        return kind == 2

    async def put_token(
        self, key: str, now: float, *, value: str, ttl: float, margin: float, owner: str
    ) -> None:
        # Kept locally too: if Redis goes away, this process still has its token.
        self.local.put_token_now(key, now, value=value, ttl=ttl, margin=margin, owner=owner)
        await self._token_script(
            3, self._token_keys(key), [value, repr(float(margin)), max(1, round(ttl * 1000)), owner]
        )

    async def release_token(self, key: str, owner: str) -> None:
        self.local.release_token_now(key, owner)
        await self._token_script(4, self._token_keys(key)[1:], [owner])

    async def drop_token(self, key: str, value: str) -> bool:
        dropped = self.local.drop_token_now(key, value)
        answer = await self._token_script(5, self._token_keys(key)[:1], [value])
        return dropped if answer is None else int(answer) == 1

    async def aclose(self) -> None:
        """Close the client this store made (a client handed in is the caller's)."""
        client, self._redis, self._loop, self._scripts = self._redis, None, None, None
        if client is not None and self.client is None:
            with anyio.move_on_after(self.timeout):
                await client.aclose()


def _refuse_trio(when: str) -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "asyncio":
        raise ConfigurationError(
            f"RedisStore {when} under {library}: redis-py's asyncio client runs only under "
            "asyncio. Under trio, leave store= unset (the in-memory store works everywhere)."
        )
