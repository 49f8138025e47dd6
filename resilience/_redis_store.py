"""RedisStore: rate limits, retry budgets, breakers and tokens shared by a fleet.

Layers hand their per-key updates to a :class:`~resilience.StateStore`; this one
keeps them in Redis, so 8 workers calling one vendor spend one rate limit and one
retry budget between them (the budget's calls and retries of the last second,
counted per 50 ms slot by the server's clock). Each round trip is one run of one
Lua script on the server (the reads, the decisions and the writes happen there,
atomically: two workers can never both take the last slot), which runs a batch of
steps: the one the caller awaits (a slot, a retry, a probe, a token) after those
that waited for a round trip to ride on. A breaker's successes and a budget's
counts of calls wait (at most :attr:`RedisStore.flush_delay`) for the next round
trip, usually the next call's slot, so that a healthy call through a rate limit,
a budget and a breaker costs one round trip. Times are the Redis
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
(:attr:`RedisStore.outages`, :attr:`RedisStore.fallback_calls`, and the
``resilience.store.fallbacks`` counter of the pipeline whose layer asked: each
layer uses the store through :meth:`RedisStore.bound`) and answers from a
:class:`~resilience.MemoryStore` in this process, asking Redis again every
``retry_interval`` seconds (one call at a time probes). When Redis answers, the
slots spent locally meanwhile are carried into Redis with the key's next update.

The ``redis`` package (``pip install "httpx-resilience[redis]"``) is imported
only when a store is built. Its asyncio client runs only under asyncio: under trio
the store refuses with a :class:`~resilience.errors.ConfigurationError`, and the
default in-memory store works there as everywhere.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sys
from collections.abc import Callable
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
# consecutive failures (0: off), break (us), ttl (ms), outcomes (successes of one
# process carried together; a failure goes alone), age (us: how long ago the
# newest of them ended). Counts the outcomes of calls admitted while closed in
# the bucket they ended in (an outcome older than the window only ends the run),
# opens the circuit when the window or the run says so, and answers the
# microseconds until it half-opens (0: closed or half-open).
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local u = tonumber(redis.call('HGET', KEYS[1], 'until'))
if u then
  if u > now then return math.floor(u - now) end
  return 0
end
local n = 10
local width = tonumber(ARGV[2])
local current = math.floor(now / width)
local bucket = math.floor((now - tonumber(ARGV[9])) / width)
local index = bucket % n
local fields = {'run'}
for i = 0, n - 1 do
  fields[#fields + 1] = 'b' .. i
  fields[#fields + 1] = 'n' .. i
  fields[#fields + 1] = 'f' .. i
end
local v = redis.call('HMGET', KEYS[1], unpack(fields))
local failed = ARGV[1] == '1'
local count = tonumber(ARGV[8])
local run = tonumber(v[1]) or 0
if failed then run = run + count else run = 0 end
local at = 1 + index * 3
local stored = tonumber(v[at + 1])
local counted = bucket > current - n and not (stored and stored > bucket)
local calls, failures = 0, 0
if counted then
  if stored == bucket then
    calls = tonumber(v[at + 2]) or 0
    failures = tonumber(v[at + 3]) or 0
  end
  calls = calls + count
  if failed then failures = failures + count end
end
local seen, bad = 0, 0
for i = 0, n - 1 do
  local b, c, f
  if counted and i == index then
    b, c, f = bucket, calls, failures
  else
    b = tonumber(v[2 + i * 3])
    c = tonumber(v[3 + i * 3]) or 0
    f = tonumber(v[4 + i * 3]) or 0
  end
  if b and b > current - n then
    seen = seen + c
    bad = bad + f
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
redis.call('HSET', KEYS[1], 'run', run)
if counted then
  redis.call('HSET', KEYS[1], 'b' .. index, string.format('%.0f', bucket),
             'n' .. index, calls, 'f' .. index, failures)
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 0
"""

# KEYS[1]: the breaker's hash, KEYS[2]: its probe lease. ARGV: lease (ms), take
# (1: take the probe if it is free; 0: only look). Answers {-1, 0} (closed), {1,
# microseconds until it half-opens} (still open), {0, 0} (the probe is the
# caller's, SET NX PX; or, only looking, it is free) or {-2, milliseconds left on
# the lease} (another process probes).
_PROBE = """
local u = tonumber(redis.call('HGET', KEYS[1], 'until'))
if not u then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if u > now then return {1, math.floor(u - now)} end
if ARGV[2] == '1' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {0, 0} end
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  return {0, 0}
end
return {-2, redis.call('PTTL', KEYS[2])}
"""

# KEYS as _PROBE. ARGV: outcome (1: the probe succeeded, 0: it failed, -1: none),
# break (us), ttl (ms). A success closes the circuit for all; a failure reopens it.
_SETTLE = """
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

# Every round trip runs this one script: the steps above are its functions (a
# step's KEYS and ARGV are its own), and ARGV says which to run, in order: the
# count of steps, then per step its code, its number of keys and of arguments,
# and the arguments; KEYS holds the steps' keys in the same order. It answers
# each step's answer, in order. The whole batch is one atomic step on the
# server, as each script was alone.
_STEPS = (_GCRA, _BUDGET, _CLAIM, _PUT, _RELEASE, _DROP, _RECORD, _PROBE, _SETTLE)
(
    _OP_GCRA,
    _OP_BUDGET,
    _OP_CLAIM,
    _OP_PUT,
    _OP_RELEASE,
    _OP_DROP,
    _OP_RECORD,
    _OP_PROBE,
    _OP_SETTLE,
) = range(1, len(_STEPS) + 1)
_BATCH = (
    "if redis.replicate_commands then redis.replicate_commands() end\nlocal steps = {}\n"
    + "".join(
        f"steps[{code}] = function(KEYS, ARGV)\n{body}end\n"
        for code, body in enumerate(_STEPS, start=1)
    )
    + """
local answers = {}
local k, a = 0, 2
for i = 1, tonumber(ARGV[1]) do
  local step, nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do args[j] = ARGV[a + j - 1] end
  k = k + nk
  a = a + na
  answers[i] = steps[step](keys, args)
end
return answers
"""
)


class RedisAnswerError(Exception):
    """Redis answered something that is not the answer to the batch sent."""


def _well_shaped(answers: object, steps: int, records: int) -> bool:
    """Whether ``answers`` is one answer per step, the breaker records' numbers."""
    if not isinstance(answers, list) or len(answers) != steps:
        return False
    return all(isinstance(answer, int) for answer in answers[:records])


#: Breaker keys whose last answer is remembered (a custom key function may make many).
_MAX_FLEET_KEYS = 10_000
#: Breaker outcomes and budget counts of different keys waiting at once beyond
#: which the next of them goes at once, whatever :attr:`RedisStore.flush_delay`.
_MAX_DEFERRED = 64

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
    flush_delay: float = attrs.field(default=0.05, validator=v.number(minimum=0))
    """Seconds a healthy call's outcome for a shared breaker, and a retry budget's
    count of calls, may wait in this process to ride along with the next round
    trip (the next call's rate-limit slot, a retry, a probe): so that a call costs
    one round trip. The first of them older than this goes on its own, as does a
    failure (it may open the breaker for all). 0: each goes at once."""
    probe_poll: float = attrs.field(
        default=0.5, validator=v.number(minimum=0, exclusive_minimum=True)
    )
    """Seconds between this process's looks at a shared breaker while another
    process probes it: meanwhile it refuses calls (``retry_after``: the time to
    its next look, at most the probe's lease left), and calls held by
    ``Retry(hold=Hold())`` are released when a look finds the breaker closed."""
    outages: int = attrs.field(default=0, init=False)
    """Times Redis became unreachable or slow (each logged once)."""
    fallback_calls: int = attrs.field(default=0, init=False)
    """Updates answered from local state because Redis was away."""
    redis_calls: int = attrs.field(default=0, init=False)
    """Round trips Redis answered (each one script run, carrying every step that
    waited for it)."""
    _down_until: float | None = attrs.field(default=None, init=False, repr=False)
    _was_down: bool = attrs.field(default=False, init=False, repr=False)
    _probing: bool = attrs.field(default=False, init=False, repr=False)
    _redis: Any = attrs.field(default=None, init=False, repr=False)
    _loop: Any = attrs.field(default=None, init=False, repr=False)
    _script: Any = attrs.field(default=None, init=False, repr=False)
    # Steps waiting for a round trip: per breaker key [outcomes, newest end, its
    # arguments...]; per budget key [calls, ratio, floor, caller's time].
    _records: dict[str, list[Any]] = attrs.field(factory=dict, init=False, repr=False)
    _budgets: dict[str, list[Any]] = attrs.field(factory=dict, init=False, repr=False)
    _deferred_at: float | None = attrs.field(default=None, init=False, repr=False)
    # Per breaker key, what Redis last said: the end of the fleet's break on
    # :attr:`clock` (0.0: not open). A key not here was never asked about.
    _fleet: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)

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

    def bound(self, env: Any, layer: str) -> RedisStore | BoundStore:
        """This store as the layer ``layer`` of the pipeline ``env`` uses it: the same
        state, with the fallbacks it meets counted in that pipeline's telemetry
        (``resilience.store.fallbacks``). Itself when the pipeline records nothing."""
        record = getattr(getattr(env, "instrument", None), "store_fallback", None)
        if record is None:
            return self
        return BoundStore(self, functools.partial(record, layer))

    def _connect(self) -> Any:
        """The batch script on the Redis client for the running event loop (made on
        first use in it)."""
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
            self._script = client.register_script(_BATCH)
        return self._script

    async def _drop_connections(self) -> None:
        pool = getattr(self._redis, "connection_pool", None)
        if pool is None:  # pragma: no cover - a client without a pool
            return
        with anyio.move_on_after(self.timeout), anyio.CancelScope(shield=True):
            try:
                await pool.disconnect(inuse_connections=True)
            except Exception:  # pragma: no cover - best effort
                logger.debug("resilience RedisStore: dropping connections failed", exc_info=True)

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

    def _fell_back(self, operation: str, sink: Sink | None) -> None:
        self.fallback_calls += 1
        if sink is not None:
            sink(operation)

    async def _run(
        self, step: int, keys: list[str], args: list[Any], operation: str, sink: Sink | None
    ) -> Any:
        """Run ``step`` (0: none) in one round trip, after the steps that waited for
        one; its answer, or ``None`` when Redis is away (a fallback of ``operation``).

        One script run whatever it carries: atomic on the server, one timeout.
        """
        script = self._connect()
        if self._use_local():
            self._fell_back(operation, sink)
            self._budgets_locally(self._take_budgets())
            self._take_records()
            return None
        records = self._take_records()
        budgets = self._take_budgets()
        now = self.clock.now()
        batch: list[str] = []
        argv: list[Any] = [len(records) + len(budgets) + (1 if step else 0)]
        for key, entry in records.items():
            batch.append(f"{self.prefix}:cb:{key}")
            age = round((now - entry[1]) * _US)
            argv += [_OP_RECORD, 1, 9, 0, *entry[2:], entry[0], age if age > 0 else 0]
        for key, entry in budgets.items():
            batch.append(f"{self.prefix}:rb:{key}")
            argv += [_OP_BUDGET, 1, 5, entry[0], 0, entry[1], entry[2], _BUDGET_TTL_MS]
        if step:
            batch += keys
            argv += [step, len(keys), len(args), *args]
        try:
            with anyio.fail_after(self.timeout):
                answers = await script(keys=batch, args=argv)
            if not _well_shaped(answers, argv[0], len(records)):
                # Not this batch's answer: a connection cut by a timeout may still
                # hold an earlier command's reply. Drop the connections; fall back.
                await self._drop_connections()
                raise RedisAnswerError("an answer that is not this batch's")
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                # Cut while waiting: the reply may still come, to whoever reads that
                # connection next. It goes instead.
                await self._drop_connections()
            self._failed(exc)
            self._fell_back(operation, sink)
            self._budgets_locally(budgets)
            return None
        finally:
            self._probing = False
        self._answered()
        self.redis_calls += 1
        if records:
            now = self.clock.now()
            for key, answer in zip(records, answers, strict=False):
                self._learn(key, int(answer), now)
        return answers[-1] if step else None

    # -- steps that wait for a round trip --

    # Each hands over what waited and leaves a new, empty dict behind, even when
    # nothing waited: the caller holds what it took across its round trip, and
    # an outcome queued meanwhile must go into the next batch, not into this one's
    # answers.
    def _take_records(self) -> dict[str, list[Any]]:
        records = self._records
        if not records:
            return {}
        self._records = {}
        if not self._budgets:
            self._deferred_at = None
        return records

    def _take_budgets(self) -> dict[str, list[Any]]:
        budgets = self._budgets
        if not budgets:
            if not self._records:
                self._deferred_at = None
            return {}
        self._budgets = {}
        self._deferred_at = None
        return budgets

    def _budgets_locally(self, budgets: dict[str, list[Any]]) -> None:
        """Calls counted for Redis while it went away: into this process's windows."""
        for key, (calls, _, _, now, ratio, floor) in budgets.items():
            self.local.update_budget_now(
                key, now, calls=calls, take=False, ratio=ratio, floor=floor
            )

    def _deferred(self) -> bool:
        """Whether steps should wait for a round trip now (Redis answers, and waiting is on)."""
        return self.flush_delay > 0 and self._down_until is None

    async def _flush_if_due(self, operation: str, sink: Sink | None) -> None:
        now = self.clock.now()
        since = self._deferred_at
        if since is None:
            self._deferred_at = now
            since = now
        if (
            now - since >= self.flush_delay
            or len(self._records) + len(self._budgets) >= _MAX_DEFERRED
        ):
            await self._run(0, [], [], operation, sink)

    async def flush(self) -> None:
        """Send the steps waiting for a round trip now (``aclose`` does it too)."""
        if self._records or self._budgets:
            await self._run(0, [], [], "flush", None)

    # -- rate-limit slots and retry budgets --

    async def take_slot(
        self,
        key: str,
        now: float,
        interval: float,
        burst: int,
        max_wait: float,
        *,
        sink: Sink | None = None,
    ) -> tuple[bool, float]:
        local = self.local
        spent = local.peek_slot(key)
        ahead = spent - now if spent is not None and spent > now else 0.0
        wait_us = _NO_LIMIT_US if math.isinf(max_wait) else round(max_wait * _US)
        answer = await self._run(
            _OP_GCRA,
            [f"{self.prefix}:rl:{key}"],
            [round(interval * _US), burst, wait_us, round(ahead * _US)],
            "take_slot",
            sink,
        )
        if answer is None:
            return local.take_slot_now(key, now, interval, burst, max_wait)
        if spent is not None:
            local.forget_slot(key)
        return int(answer[0]) == 1, int(answer[1]) / _US

    async def update_budget(
        self,
        key: str,
        now: float,
        *,
        calls: int,
        take: bool,
        ratio: float,
        floor: float,
        sink: Sink | None = None,
    ) -> bool:
        answer = await self._run(
            _OP_BUDGET,
            [f"{self.prefix}:rb:{key}"],
            [calls, 1 if take else 0, repr(float(ratio)), repr(float(floor)), _BUDGET_TTL_MS],
            "update_budget",
            sink,
        )
        if answer is None:
            return self.local.update_budget_now(
                key, now, calls=calls, take=take, ratio=ratio, floor=floor
            )
        return int(answer) == 1

    async def count_calls(
        self,
        key: str,
        now: float,
        *,
        calls: int,
        ratio: float,
        floor: float,
        sink: Sink | None = None,
    ) -> None:
        """:meth:`update_budget` without taking a retry: the calls wait (at most
        :attr:`flush_delay`) to ride along with another round trip."""
        if not self._deferred():
            await self.update_budget(
                key, now, calls=calls, take=False, ratio=ratio, floor=floor, sink=sink
            )
            return
        entry = self._budgets.get(key)
        if entry is None:
            self._budgets[key] = [calls, repr(float(ratio)), repr(float(floor)), now, ratio, floor]
        else:
            entry[0] += calls
            entry[3] = now
        await self._flush_if_due("update_budget", sink)

    # -- shared tokens --

    def _token_keys(self, key: str) -> list[str]:
        return [f"{self.prefix}:tok:{key}", f"{self.prefix}:lease:tok:{key}"]

    async def claim_token(
        self, key: str, now: float, *, lease: float, owner: str, sink: Sink | None = None
    ) -> TokenClaim:
        answer = await self._run(
            _OP_CLAIM,
            self._token_keys(key),
            [owner, max(1, math.ceil(lease * 1000))],
            "claim_token",
            sink,
        )
        if answer is None:
            return self.local.claim_token_now(key, now, lease=lease, owner=owner)
        kind = int(answer[0])
        if kind == 1:
            value = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
            return value, max(0, int(answer[2])) / 1000, float(answer[3])
        return kind == 2

    async def put_token(
        self,
        key: str,
        now: float,
        *,
        value: str,
        ttl: float,
        margin: float,
        owner: str,
        sink: Sink | None = None,
    ) -> None:
        # Kept locally too: if Redis goes away, this process still has its token.
        self.local.put_token_now(key, now, value=value, ttl=ttl, margin=margin, owner=owner)
        await self._run(
            _OP_PUT,
            self._token_keys(key),
            [value, repr(float(margin)), max(1, round(ttl * 1000)), owner],
            "put_token",
            sink,
        )

    async def release_token(self, key: str, owner: str, *, sink: Sink | None = None) -> None:
        self.local.release_token_now(key, owner)
        await self._run(_OP_RELEASE, self._token_keys(key)[1:], [owner], "release_token", sink)

    async def drop_token(self, key: str, value: str, *, sink: Sink | None = None) -> bool:
        dropped = self.local.drop_token_now(key, value)
        answer = await self._run(_OP_DROP, self._token_keys(key)[:1], [value], "drop_token", sink)
        return dropped if answer is None else int(answer) == 1

    # -- a shared circuit breaker (``CircuitBreaker(store=...)``): ``None`` means
    # Redis is away and the breaker goes on with its local circuit alone.

    def _breaker_keys(self, key: str) -> list[str]:
        return [f"{self.prefix}:cb:{key}", f"{self.prefix}:lease:cb:{key}"]

    def _learn(self, key: str, micros: int, now: float) -> None:
        fleet = self._fleet
        if len(fleet) >= _MAX_FLEET_KEYS and key not in fleet:
            # Forgotten keys only make their next outcome go at once, as a first one.
            fleet.clear()
        fleet[key] = now + micros / _US if micros > 0 else 0.0

    def fleet_open(self, key: str) -> float:
        """Seconds left of the fleet's break on ``key``, as Redis last said (0: not
        open, or never asked): no round trip."""
        until = self._fleet.get(key)
        if not until:
            return 0.0
        left = until - self.clock.now()
        if left > 0.0:
            return left
        self._fleet[key] = 0.0
        return 0.0

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
        sink: Sink | None = None,
    ) -> float | None:
        """Count one outcome of a call admitted while closed; seconds until the
        shared circuit half-opens (0: not open), ``None`` when Redis is away.

        A success waits (:attr:`flush_delay`) to ride along with the next round
        trip, and the answer is what Redis last said; a failure, or the first
        outcome for a key, goes at once."""
        args = [
            max(1, round(width * _US)),
            minimum_calls,
            repr(float(failure_ratio)),
            consecutive,
            round(break_for * _US),
            max(1, math.ceil(ttl * 1000)),
        ]
        if not failed and key in self._fleet and self._deferred():
            now = self.clock.now()
            entry = self._records.get(key)
            if entry is None:
                self._records[key] = [1, now, *args]
            else:
                entry[0] += 1
                entry[1] = now
            await self._flush_if_due("breaker_record", sink)
            return None if self._down_until is not None else self.fleet_open(key)
        answer = await self._run(
            _OP_RECORD,
            self._breaker_keys(key)[:1],
            [1 if failed else 0, *args, 1, 0],
            "breaker_record",
            sink,
        )
        if answer is None:
            return None
        micros = int(answer)
        self._learn(key, micros, self.clock.now())
        return micros / _US

    async def breaker_probe(
        self, key: str, *, lease: float, take: bool = True, sink: Sink | None = None
    ) -> tuple[int, float] | None:
        """Whether this process may probe: ``(-1, 0)`` closed, ``(1, s)`` still open
        for ``s`` seconds, ``(0, 0)`` the probe is this process's (only looking,
        ``take=False``: it is free), ``(-2, s)`` another process probes, its lease
        ending in ``s`` seconds; ``None`` when Redis is away."""
        answer = await self._run(
            _OP_PROBE,
            self._breaker_keys(key),
            [max(1, math.ceil(lease * 1000)), 1 if take else 0],
            "breaker_probe",
            sink,
        )
        if answer is None:
            return None
        code, value = int(answer[0]), int(answer[1])
        if code == 1:
            self._learn(key, value, self.clock.now())
            return code, value / _US
        self._fleet[key] = 0.0
        if code == -2:
            return code, max(value, 0) / 1000
        return code, 0.0

    async def breaker_settle(
        self,
        key: str,
        *,
        succeeded: bool | None,
        break_for: float,
        ttl: float,
        sink: Sink | None = None,
    ) -> None:
        """The probe's outcome: close for all, reopen for ``break_for`` s, or (None)
        just free the probe."""
        outcome = -1 if succeeded is None else int(succeeded)
        answer = await self._run(
            _OP_SETTLE,
            self._breaker_keys(key),
            [outcome, round(break_for * _US), max(1, math.ceil(ttl * 1000))],
            "breaker_settle",
            sink,
        )
        if answer is not None and succeeded is not None:
            self._learn(key, 0 if succeeded else round(break_for * _US), self.clock.now())

    async def aclose(self) -> None:
        """Send what waits for a round trip, then close the client this store made
        (a client handed in is the caller's)."""
        if self._redis is not None and (self._records or self._budgets):
            with anyio.move_on_after(self.timeout):
                await self.flush()
        client, self._redis, self._loop, self._script = self._redis, None, None, None
        if client is not None and self.client is None:
            with anyio.move_on_after(self.timeout):
                await client.aclose()


#: Told the name of each step answered from local state (``resilience.store.fallbacks``).
Sink = Callable[[str], object]


class BoundStore:
    """A :class:`RedisStore` as one layer of one pipeline uses it
    (:meth:`RedisStore.bound`): the same state and round trips, with the
    fallbacks it meets counted in that pipeline's telemetry."""

    __slots__ = ("_sink", "store")

    def __init__(self, store: RedisStore, sink: Sink) -> None:
        self.store = store
        self._sink = sink

    @property
    def probe_poll(self) -> float:
        return self.store.probe_poll

    def fleet_open(self, key: str) -> float:
        return self.store.fleet_open(key)

    async def take_slot(
        self, key: str, now: float, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        return await self.store.take_slot(key, now, interval, burst, max_wait, sink=self._sink)

    async def update_budget(
        self, key: str, now: float, *, calls: int, take: bool, ratio: float, floor: float
    ) -> bool:
        return await self.store.update_budget(
            key, now, calls=calls, take=take, ratio=ratio, floor=floor, sink=self._sink
        )

    async def count_calls(
        self, key: str, now: float, *, calls: int, ratio: float, floor: float
    ) -> None:
        await self.store.count_calls(
            key, now, calls=calls, ratio=ratio, floor=floor, sink=self._sink
        )

    async def claim_token(self, key: str, now: float, *, lease: float, owner: str) -> TokenClaim:
        return await self.store.claim_token(key, now, lease=lease, owner=owner, sink=self._sink)

    async def put_token(
        self, key: str, now: float, *, value: str, ttl: float, margin: float, owner: str
    ) -> None:
        await self.store.put_token(
            key, now, value=value, ttl=ttl, margin=margin, owner=owner, sink=self._sink
        )

    async def release_token(self, key: str, owner: str) -> None:
        await self.store.release_token(key, owner, sink=self._sink)

    async def drop_token(self, key: str, value: str) -> bool:
        return await self.store.drop_token(key, value, sink=self._sink)

    async def breaker_record(self, key: str, **options: Any) -> float | None:
        return await self.store.breaker_record(key, sink=self._sink, **options)

    async def breaker_probe(
        self, key: str, *, lease: float, take: bool = True
    ) -> tuple[int, float] | None:
        return await self.store.breaker_probe(key, lease=lease, take=take, sink=self._sink)

    async def breaker_settle(self, key: str, **options: Any) -> None:
        await self.store.breaker_settle(key, sink=self._sink, **options)


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
