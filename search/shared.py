"""What processes share through Redis (REDIS_URL): source budgets, claims, locks, turns.

Without REDIS_URL nothing here is used: each budget is a ``RateBudget`` in the process,
as it always was. With it, one ``SharedRedis`` per process holds a bounded pool and a
short-circuit: a call that fails marks Redis down for ``RETRY_SECONDS``, and until
then every caller takes its local fallback at once instead of waiting on a timeout.

A source's window is one Lua script (``TAKE``) run atomically by Redis for every
process with the same endpoint and key fingerprint; the time is Redis's own ``TIME``,
so clocks on different machines never disagree about a window. ``X-RateLimit-*``
headers seen by any process are written (``TELL``) where every process reads them.

While Redis is unreachable a budget falls back to ``limit // processes`` per window,
counting this process's own requests of the last window (made through Redis or not),
so a busy process is not handed a fresh allowance by an outage. Inside an outage the
processes together stay within the limit; in the one window an outage begins, the
requests Redis had counted plus the shares of processes that had sent fewer than
their share can pass it by at most ``(processes - 1)`` shares: one share for two
processes. When Redis answers again, the requests sent meanwhile are added to its
window (``BACKFILL``) before the next one is counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import RateLimited

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 2.0  # after a failed call, Redis is tried again this much later
CALL_TIMEOUT = 1.5  # seconds any one Redis call may take
POOL_SIZE = 16  # connections per process
LOCK_POLL = 0.05  # seconds between two tries of a lock another process holds

# KEYS: per window a sorted set of sends and a hash of what the server said.
# ARGV: n windows, this send's member, then (limit, seconds) per window.
# Returns {1, requests left} or {0, seconds to wait, the window that refused}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local left = -1
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  local s = redis.call('HMGET', h, 'limit', 'remaining', 'reset_at')
  if s[1] then limit = math.min(limit, tonumber(s[1])) end
  local reset_at = tonumber(s[3] or '0')
  local told = s[2] and now < reset_at
  if told and tonumber(s[2]) <= 0 then
    return {0, tostring(reset_at - now), i}
  end
  local used = redis.call('ZCARD', z)
  if used >= limit then
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    return {0, tostring(tonumber(first[2]) + window - now), i}
  end
  local l = limit - used - 1
  if told then l = math.min(l, tonumber(s[2]) - 1) end
  if left < 0 or l < left then left = l end
end
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZADD', z, now, ARGV[2])
  redis.call('PEXPIRE', z, math.ceil(tonumber(ARGV[2 + 2 * i]) * 1000))
  local s = redis.call('HMGET', h, 'remaining', 'reset_at')
  if s[1] and now < tonumber(s[2] or '0') then redis.call('HINCRBY', h, 'remaining', -1) end
end
return {1, tostring(left), 0}
"""

# KEYS[1]: a window's hash. ARGV: remaining, seconds to reset, limit ('' if not given),
# the window's seconds. Within one server window the lowest count wins: answers to
# requests sent at once arrive in any order.
TELL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local remaining, reset_at = tonumber(ARGV[1]), now + tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'remaining', 'reset_at')
if s[1] and math.abs(tonumber(s[2] or '0') - reset_at) < 1.5 then
  remaining = math.min(remaining, tonumber(s[1]))
end
redis.call('HSET', KEYS[1], 'remaining', remaining, 'reset_at', tostring(reset_at))
if ARGV[3] ~= '' then
  local old = redis.call('HGET', KEYS[1], 'limit')
  if (not old) or tonumber(ARGV[3]) < tonumber(old) then
    redis.call('HSET', KEYS[1], 'limit', ARGV[3])
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tonumber(ARGV[2]), tonumber(ARGV[4])) * 1000))
return 1
"""

# KEYS[1]: a window's sorted set. ARGV: the window's seconds, then (age, member) pairs:
# requests sent while Redis was away, entered at the time they were sent.
BACKFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now - tonumber(ARGV[i]), ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return 1
"""


class RedisUnavailable(Exception):
    """Redis did not answer (or is marked down): the caller takes its local fallback."""


def unreachable_sentence(shown: str, why: str) -> str:
    return (f"REDIS_URL {shown} does not answer ({why}); start Redis there or fix "
            "REDIS_URL (empty keeps everything in this process).")


class SharedRedis:
    """One process's Redis: a bounded pool, key names, and the short-circuit when down."""

    def __init__(self, url: str, *, prefix: str = "findimage:", shown: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.shown = shown or url
        self.prefix = prefix
        self.clock = clock
        self.instance = uuid.uuid4().hex[:12]  # tells this process's entries apart
        # No library retries: a failed call is one short wait, then the fallback.
        self.client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT, socket_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0)))
        self.take_script = self.client.register_script(TAKE)
        self.tell_script = self.client.register_script(TELL)
        self.backfill_script = self.client.register_script(BACKFILL)
        self.down_until = 0.0
        self._counter = itertools.count()

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def member(self) -> str:
        return f"{self.instance}:{next(self._counter)}"

    @property
    def up(self) -> bool:
        return self.clock() >= self.down_until

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` against Redis, or ``RedisUnavailable`` at once while it is marked down."""
        from redis.exceptions import RedisError

        if not self.up:
            raise RedisUnavailable(self.shown)
        try:
            result = await asyncio.wait_for(fn(), CALL_TIMEOUT * 2)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            if self.down_until == 0.0 or self.down_until < self.clock() - RETRY_SECONDS:
                log.warning("Redis at %s is unreachable (%s); budgets, claims and locks fall "
                            "back to this process until it answers", self.shown,
                            type(e).__name__)
            self.down_until = self.clock() + RETRY_SECONDS
            raise RedisUnavailable(self.shown) from None
        if self.down_until:
            log.warning("Redis at %s answers again; budgets, claims and locks are shared",
                        self.shown)
            self.down_until = 0.0
        return result

    async def round_trip(self) -> tuple[float, str]:
        """(seconds, server version) for one round trip; ``RedisUnavailable`` saying why.

        Start-up and ``--check`` ask this before the model loads."""
        from redis.exceptions import AuthenticationError, RedisError

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self.client.ping(), CALL_TIMEOUT * 2)
            seconds = time.perf_counter() - t0
            info = await asyncio.wait_for(self.client.info("server"), CALL_TIMEOUT * 2)
        except AuthenticationError:
            raise RedisUnavailable("it refused the password in REDIS_URL") from None
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise RedisUnavailable(f"{type(e).__name__}") from None
        return seconds, str(info.get("redis_version", "?"))

    async def unclaim(self, *parts: object) -> None:
        try:
            await self.call(lambda: self.client.delete(self.key("claim", *parts)))
        except RedisUnavailable:
            pass  # it expires by itself

    async def claim(self, seconds: float, *parts: object) -> bool | None:
        """First to claim ``parts`` for ``seconds``? None when Redis cannot say."""
        try:
            got = await self.call(lambda: self.client.set(
                self.key("claim", *parts), self.instance, nx=True,
                px=max(1, int(seconds * 1000))))
        except RedisUnavailable:
            return None
        return bool(got)

    @asynccontextmanager
    async def lock(self, name: str, *, hold: float = 30.0, wait: float = 15.0,
                   fallback: asyncio.Lock) -> AsyncIterator[None]:
        """Redis's lock on ``name`` (held at most ``hold`` s), or ``fallback`` while down."""
        from redis.exceptions import LockError

        lock = self.client.lock(self.key("lock", name), timeout=hold)
        deadline = self.clock() + wait
        got: bool | None = False
        while not got:  # short tries: a long blocking call would read as Redis being away
            try:
                got = await self.call(lambda: lock.acquire(blocking=False))
            except RedisUnavailable:
                got = None
                break
            if not got:
                if self.clock() > deadline:
                    raise TimeoutError(f"the lock on {name} is held elsewhere")
                await asyncio.sleep(LOCK_POLL)
        if got is None:
            async with fallback:
                yield
            return
        try:
            async with fallback:  # one press at a time in this process too
                yield
        finally:
            try:
                await self.call(lock.release)
            except (RedisUnavailable, LockError):
                pass  # it expires by itself after ``hold``

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> SharedRedis:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class Window:
    """One limit of a source: ``limit`` requests per ``seconds``, shared under ``name``."""

    name: str
    limit: int
    seconds: float


def rate_headers(headers: Mapping[str, str]) -> tuple[int, float, int | None] | None:
    """(remaining, seconds to reset, limit) from ``X-RateLimit-*``, checked; None if absent."""
    from .upstream import header_seconds, header_whole

    remaining = header_whole(headers.get("X-RateLimit-Remaining"), lo=0, hi=10**6)
    reset = header_seconds(headers.get("X-RateLimit-Reset"))
    if remaining is None or reset is None:
        return None
    return remaining, reset, header_whole(headers.get("X-RateLimit-Limit"), lo=1, hi=10**6)


@dataclass
class SharedBudget:
    """A source's windows in Redis, one budget per endpoint and key fingerprint.

    ``scope`` names the budget as the response cache names the source (``Source.
    response_scope``), so two processes with one key share it and two keys do not.
    ``fallback`` holds this process's share of each window, and its own recent sends.
    """

    redis: SharedRedis
    scope: str
    windows: Sequence[Window]
    processes: int = 1
    label: str = "Pixabay"
    clock: Callable[[], float] = time.monotonic
    fallback: list[Any] = field(init=False)
    _log: deque = field(init=False, default_factory=deque)  # (when, member) of our sends
    _dirty: bool = field(init=False, default=False)  # Redis may have missed some of them
    _left: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        from .budget import RateBudget  # the local budget, one per window

        self.fallback = [RateBudget(limit=max(1, w.limit // max(1, self.processes)),
                                    window=w.seconds, clock=self.clock, label=self.label)
                         for w in self.windows]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.redis.call(lambda: script(keys=keys, args=args))

    @property
    def limit(self) -> int:
        return self.windows[0].limit

    @property
    def window(self) -> float:
        return self.windows[0].seconds

    def _keys(self, i: int) -> tuple[str, str]:
        base = self.redis.key("budget", self.scope, self.windows[i].name)
        return base + ":sent", base + ":told"

    def _note_sent(self, now: float, member: str) -> None:
        longest = max(w.seconds for w in self.windows)
        while self._log and now - self._log[0][0] >= longest:
            self._log.popleft()
        self._log.append((now, member))
        for local in self.fallback:
            while local.sent and now - local.sent[0] >= local.window:
                local.sent.popleft()
            local.sent.append(now)
            if local.server_remaining is not None:
                local.server_remaining -= 1

    async def take(self) -> None:
        """Count one request in every window, or ``RateLimited`` saying how long to wait."""
        member = self.redis.member()
        try:
            await self._backfill()
            keys = [k for i in range(len(self.windows)) for k in self._keys(i)]
            args: list[Any] = [len(self.windows), member]
            for w in self.windows:
                args += [w.limit, w.seconds]
            ok, value, index = await self.redis.call(
                lambda: self.redis.take_script(keys=keys, args=args))
        except RedisUnavailable:
            self._dirty = True
            self._take_locally(member)
            return
        if not int(ok):
            w = self.windows[int(index) - 1]
            raise RateLimited(max(0.0, float(value)), self.label, cap=w.seconds)
        self._left = max(0, int(float(value)))
        self._note_sent(self.clock(), member)

    def _take_locally(self, member: str) -> None:
        now = self.clock()
        for local in self.fallback:  # check every window before spending any
            while local.sent and now - local.sent[0] >= local.window:
                local.sent.popleft()
            if now >= local.server_reset_at:
                local.server_remaining = None
            if local.server_remaining is not None and local.server_remaining <= 0:
                raise RateLimited(local.server_reset_at - now, self.label, cap=local.window)
            if len(local.sent) >= local.limit:
                raise RateLimited(local.sent[0] + local.window - now, self.label,
                                  cap=local.window)
        self._note_sent(now, member)
        self._left = None

    async def _backfill(self) -> None:
        """After an outage, put this process's sends of the last window back into Redis:
        a restarted Redis has forgotten them, and one that was only out of reach has them
        already under the same members (adding them again changes nothing)."""
        if not self._dirty:
            return
        now = self.clock()
        for i, w in enumerate(self.windows):
            args: list[Any] = [w.seconds]
            for when, member in self._log:
                if now - when < w.seconds:
                    args += [f"{now - when:.3f}", member]
            if len(args) > 1:
                await self._run(self.redis.backfill_script, [self._keys(i)[0]], args)
        log.info("%s budget: this process's %d requests of the last window are counted in "
                 "Redis again", self.label, len(self._log))
        self._dirty = False

    async def tell(self, i: int, remaining: int, reset: float, limit: int | None) -> None:
        """What the server said about window ``i``: every process reads it."""
        self.fallback[i].server_remaining = remaining
        self.fallback[i].server_reset_at = self.clock() + reset
        key = self._keys(i)[1]
        args: list[Any] = [remaining, f"{reset:.3f}", "" if limit is None else limit,
                           self.windows[i].seconds]
        try:
            await self._run(self.redis.tell_script, [key], args)
        except RedisUnavailable:
            pass  # the local share already knows

    async def learn_from(self, budgets: Sequence[Any]) -> None:
        """What the source's own budgets learnt from an answer's headers (or a 429),
        written where every process reads it; one budget per window, in order."""
        now = self.clock()
        for i, budget in enumerate(budgets[:len(self.windows)]):
            if budget.limit != self.windows[i].limit:
                self.resize(i, budget.limit)
            if budget.server_remaining is not None and now < budget.server_reset_at:
                await self.tell(i, budget.server_remaining, budget.server_reset_at - now, None)

    def resize(self, i: int, limit: int) -> None:
        """Window ``i`` allows ``limit`` (a source that announces its limit, as Openverse)."""
        self.windows[i].limit = limit
        self.fallback[i].limit = max(1, limit // max(1, self.processes))

    async def learn(self, headers: Mapping[str, str]) -> float | None:
        """Read ``X-RateLimit-*`` into the first window; the reset delay when given."""
        seen = rate_headers(headers)
        if seen is None:
            return None
        remaining, reset, limit = seen
        await self.tell(0, remaining, reset, limit)
        return reset

    async def refuse(self, retry: float) -> None:
        """A 429: nobody sends again for ``retry`` seconds."""
        await self.tell(0, 0, retry, None)

    def remaining(self) -> int:
        """Requests left at the last look (Redis's count, or the local share's)."""
        if self._left is not None and self.redis.up:
            return self._left
        return min(local.remaining() for local in self.fallback)
