"""RedisStore: rate limits, retry budgets, breakers and tokens shared by a fleet.

Layers hand their per-key updates to a :class:`~resilience.StateStore`; this one
keeps them in Redis, so 8 workers calling one vendor spend one rate limit and one
retry budget between them (the budget's calls and retries of the last second,
counted per 50 ms slot by the server's clock). Each update is one Lua script run on the server (the
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

A shared breaker is a hash (``<prefix>:cb:<key>``: ten time buckets, the run of
failures, and ``until`` while open) next to its probe lease
(``<prefix>:lease:cb:<key>``, ``SET NX PX``); a budget window is a hash of 20
slots (``<prefix>:rb:<key>``).

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
#: A budget window's key lives this long after its last update (ms): its state is
#: one second deep, so an idle budget vanishes soon after.
_BUDGET_TTL_MS = 2000
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

# A retry budget's last second (the RetryBudget rule, shared): KEYS[1] a hash with,
# per slot index i of 20 (slots of 50 ms by the server's clock), s<i> the slot
# number it holds, c<i> its calls and r<i> its retries. ARGV: calls started,
# take (0/1), ratio, floor, ttl (ms). Counts the calls and, asked to, takes a retry
# while the retries of the last 20 slots stay within max(floor, ratio * calls).
_BUDGET = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local n = 20
local slot = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 50000)
local index = slot % n
local fields = {}
for i = 0, n - 1 do
  fields[#fields + 1] = 's' .. i
  fields[#fields + 1] = 'c' .. i
  fields[#fields + 1] = 'r' .. i
end
local v = redis.call('HMGET', KEYS[1], unpack(fields))
local at = index * 3
local calls, retries = 0, 0
if tonumber(v[at + 1]) == slot then
  calls = tonumber(v[at + 2]) or 0
  retries = tonumber(v[at + 3]) or 0
end
calls = calls + tonumber(ARGV[1])
local taken = 0
if ARGV[2] == '1' then
  local seen, retried = calls, retries
  for i = 0, n - 1 do
    local s = tonumber(v[i * 3 + 1])
    if i ~= index and s and s > slot - n then
      seen = seen + (tonumber(v[i * 3 + 2]) or 0)
      retried = retried + (tonumber(v[i * 3 + 3]) or 0)
    end
  end
  local allowance = tonumber(ARGV[3]) * seen
  if allowance < tonumber(ARGV[4]) then allowance = tonumber(ARGV[4]) end
  if retried + 1 <= allowance then
    retries = retries + 1
    taken = 1
  end
end
redis.call('HSET', KEYS[1], 's' .. index, string.format('%.0f', slot),
           'c' .. index, calls, 'r' .. index, retries)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return taken
"""

# A shared circuit breaker: KEYS[1] a hash with, per bucket index i of 10, b<i>
# the bucket number, n<i> its counted calls and f<i> its failures; 'run' the
# failures in a row; 'until' (us, server time) while open or half-open (absent:
# closed). ARGV: failed (0/1), bucket width (us), minimum calls, failure ratio,
# consecutive failures (0: off), break (us), ttl (ms). Counts one outcome of a
# call admitted while closed, opens the circuit when the window or the run says
# so, and answers the microseconds until it half-opens (0: closed or half-open).
_RECORD = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local u = tonumber(redis.call('HGET', KEYS[1], 'until'))
if u then
  if u > now then return math.floor(u - now) end
  return 0
end
local n = 10
local bucket = math.floor(now / tonumber(ARGV[2]))
local index = bucket % n
local fields = {'run'}
for i = 0, n - 1 do
  fields[#fields + 1] = 'b' .. i
  fields[#fields + 1] = 'n' .. i
  fields[#fields + 1] = 'f' .. i
end
local v = redis.call('HMGET', KEYS[1], unpack(fields))
local failed = ARGV[1] == '1'
local run = tonumber(v[1]) or 0
if failed then run = run + 1 else run = 0 end
local at = 1 + index * 3
local calls, failures = 0, 0
if tonumber(v[at + 1]) == bucket then
  calls = tonumber(v[at + 2]) or 0
  failures = tonumber(v[at + 3]) or 0
end
calls = calls + 1
if failed then failures = failures + 1 end
local seen, bad = calls, failures
for i = 0, n - 1 do
  local b = tonumber(v[2 + i * 3])
  if i ~= index and b and b > bucket - n then
    seen = seen + (tonumber(v[3 + i * 3]) or 0)
    bad = bad + (tonumber(v[4 + i * 3]) or 0)
  end
end
local consecutive = tonumber(ARGV[5])
if (seen >= tonumber(ARGV[3]) and bad > 0 and bad / seen >= tonumber(ARGV[4]))
   or (consecutive > 0 and run >= consecutive) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', now + tonumber(ARGV[6])))
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  return math.floor(tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[1], 'run', run, 'b' .. index, string.format('%.0f', bucket),
           'n' .. index, calls, 'f' .. index, failures)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 0
"""

# KEYS[1]: the breaker's hash, KEYS[2]: its probe lease. ARGV: lease (ms). Answers
# -1 (closed), the microseconds until it half-opens (still open), 0 (the probe is
# the caller's: SET NX PX) or -2 (another process probes).
_PROBE = """
if redis.replicate_commands then redis.replicate_commands() end
local u = tonumber(redis.call('HGET', KEYS[1], 'until'))
if not u then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if u > now then return math.floor(u - now) end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
return -2
"""

# KEYS as _PROBE. ARGV: outcome (1: the probe succeeded, 0: it failed, -1: none),
# break (us), ttl (ms). A success closes the circuit for all; a failure reopens it.
_SETTLE = """
if redis.replicate_commands then redis.replicate_commands() end
redis.call('DEL', KEYS[2])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
elseif ARGV[1] == '0' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', now + tonumber(ARGV[2])))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
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
    ``RateLimiter(..., store=store)``, ``AuthRefresh(..., store=store)``,
    ``RetryBudget(store=store)`` and ``CircuitBreaker(store=store)`` (or
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
    """Seconds an untouched retry budget window is kept in local state (in Redis it
    is one second deep and its key lives 2 s after its last update)."""
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
                for script in (
                    _GCRA,
                    _BUDGET,
                    _CLAIM,
                    _PUT,
                    _RELEASE,
                    _DROP,
                    _RECORD,
                    _PROBE,
                    _SETTLE,
                )
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
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        budget = self._connect()[1]
        if not self._use_local():
            try:
                with anyio.fail_after(self.timeout):
                    taken = await budget(
                        keys=[f"{self.prefix}:rb:{key}"],
                        args=[
                            calls,
                            1 if take else 0,
                            repr(float(ratio)),
                            repr(float(floor)),
                            _BUDGET_TTL_MS,
                        ],
                    )
            except Exception as exc:
                self._failed(exc)
            else:
                self._answered()
                self.redis_calls += 1
                return int(taken) == 1
            finally:
                self._probing = False
        self.fallback_calls += 1
        return self.local.update_budget_now(
            key, now, calls=calls, take=take, ratio=ratio, floor=floor
        )

    async def _script(self, index: int, keys: list[str], args: list[Any]) -> Any:
        """Run script ``index`` (tokens, breakers); ``None`` when Redis is away (the
        caller goes local)."""
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
        answer = await self._script(
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
        await self._script(
            3, self._token_keys(key), [value, repr(float(margin)), max(1, round(ttl * 1000)), owner]
        )

    async def release_token(self, key: str, owner: str) -> None:
        self.local.release_token_now(key, owner)
        await self._script(4, self._token_keys(key)[1:], [owner])

    async def drop_token(self, key: str, value: str) -> bool:
        dropped = self.local.drop_token_now(key, value)
        answer = await self._script(5, self._token_keys(key)[:1], [value])
        return dropped if answer is None else int(answer) == 1

    # -- a shared circuit breaker (``CircuitBreaker(store=...)``): ``None`` means
    # Redis is away and the breaker goes on with its local circuit alone.

    def _breaker_keys(self, key: str) -> list[str]:
        return [f"{self.prefix}:cb:{key}", f"{self.prefix}:lease:cb:{key}"]

    async def breaker_record(
        self,
        key: str,
        *,
        failed: bool,
        width: float,
        minimum_calls: int,
        failure_ratio: float,
        consecutive: int,
        break_for: float,
        ttl: float,
    ) -> float | None:
        """Count one outcome of a call admitted while closed; seconds until the
        shared circuit half-opens (0: not open), ``None`` when Redis is away."""
        answer = await self._script(
            6,
            self._breaker_keys(key)[:1],
            [
                1 if failed else 0,
                max(1, round(width * _US)),
                minimum_calls,
                repr(float(failure_ratio)),
                consecutive,
                round(break_for * _US),
                max(1, math.ceil(ttl * 1000)),
            ],
        )
        return None if answer is None else int(answer) / _US

    async def breaker_probe(self, key: str, *, lease: float) -> float | None:
        """Whether this process may probe: -1 closed, > 0 seconds still open, 0 the
        probe is this process's, -2 another probes; ``None`` when Redis is away."""
        answer = await self._script(7, self._breaker_keys(key), [max(1, math.ceil(lease * 1000))])
        if answer is None:
            return None
        answer = int(answer)
        return float(answer) if answer < 0 else answer / _US

    async def breaker_settle(
        self, key: str, *, succeeded: bool | None, break_for: float, ttl: float
    ) -> None:
        """The probe's outcome: close for all, reopen for ``break_for`` s, or (None)
        just free the probe."""
        outcome = -1 if succeeded is None else int(succeeded)
        await self._script(
            8,
            self._breaker_keys(key),
            [outcome, round(break_for * _US), max(1, math.ceil(ttl * 1000))],
        )

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
