"""Source budgets in a real Redis: one window per endpoint and key, shared by every process.

Each "process" here is its own ``SharedRedis`` (its own pool and instance id), as two bot
processes have; the bot-process scenarios are in tests/test_shards.py."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from search.errors import RateLimited
from search.shared import RETRY_SECONDS, SharedBudget, SharedRedis, Window
from tests.redis_server import private_redis, redis_url  # noqa: F401  (fixtures)


def minute(limit: int = 100) -> list[Window]:
    return [Window("60s", limit, 60.0)]


async def takes(budget: SharedBudget, n: int) -> tuple[int, list[float]]:
    """(requests allowed, waits of those refused) for n attempts."""
    allowed, waits = 0, []
    for _ in range(n):
        try:
            await budget.take()
            allowed += 1
        except RateLimited as e:
            waits.append(e.retry_after)
    return allowed, waits


async def test_two_processes_with_one_key_share_one_window(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b:
        scope = "pixabay http://api/ key:abc"
        budgets = [SharedBudget(a, scope, minute(), processes=2),
                   SharedBudget(b, scope, minute(), processes=2)]
        results = await asyncio.gather(*(takes(budgets[i % 2], 1) for i in range(130)))
        allowed = sum(r[0] for r in results)
        waits = [w for r in results for w in r[1]]
        assert allowed == 100
        assert len(waits) == 30 and all(0 < w <= 60 for w in waits)
        # another key on the same endpoint has a window of its own
        other = SharedBudget(a, "pixabay http://api/ key:def", minute())
        assert (await takes(other, 5))[0] == 5


async def test_a_rate_limit_header_seen_by_one_process_holds_back_the_other(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b:
        pa = SharedBudget(a, "s", minute())
        pb = SharedBudget(b, "s", minute())
        await pa.take()
        reset = await pa.learn({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "2",
                                "X-RateLimit-Reset": "30"})
        assert reset == 30
        allowed, waits = await takes(pb, 4)
        assert allowed == 2  # the server's count, not our 99
        assert 28 < waits[0] <= 30
        # a smaller limit announced by the server lowers every process's window
        async with SharedRedis(url, prefix=prefix) as c:
            pc = SharedBudget(c, "t", minute())
            await pc.learn({"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "3",
                            "X-RateLimit-Reset": "0"})
            assert (await takes(SharedBudget(a, "t", minute()), 5))[0] == 3


async def test_a_429_in_one_process_stops_every_process_until_the_reset(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b:
        await SharedBudget(a, "s", minute()).refuse(20.0)
        with pytest.raises(RateLimited) as e:
            await SharedBudget(b, "s", minute()).take()
        assert 18 < e.value.retry_after <= 20


async def test_the_window_slides_on_redis_time(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a:
        budget = SharedBudget(a, "s", [Window("1s", 3, 1.0)])
        assert (await takes(budget, 4))[0] == 3
        await asyncio.sleep(1.05)
        assert (await takes(budget, 4))[0] == 3


async def test_two_windows_are_checked_before_either_is_spent(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a:
        budget = SharedBudget(a, "ov", [Window("60s", 5, 60.0), Window("86400s", 3, 86400.0)])
        assert (await takes(budget, 5))[0] == 3
        raw = aioredis.Redis.from_url(url)
        assert await raw.zcard(a.key("budget", "ov", "60s", "sent")) == 3  # not 5
        await raw.aclose()


async def test_without_redis_each_process_keeps_to_its_share_and_redis_learns_it_back(
        private_redis):  # noqa: F811
    async with SharedRedis(private_redis.url, prefix="p:") as a, \
            SharedRedis(private_redis.url, prefix="p:") as b:
        pa = SharedBudget(a, "s", minute(), processes=2)
        pb = SharedBudget(b, "s", minute(), processes=2)
        assert (await takes(pa, 30))[0] == 30
        private_redis.stop()
        # searches still get answers: each process may send its share (50), counting what
        # it sent through Redis in this window; the key never sees more than 100
        allowed_a, waits = await takes(pa, 40)
        allowed_b, _ = await takes(pb, 60)
        assert (allowed_a, allowed_b) == (20, 50)
        assert 0 < waits[0] <= 60
        private_redis.start()
        await asyncio.sleep(RETRY_SECONDS + 0.1)
        # Redis forgot everything in its restart: each process puts its own sends of the
        # window back (A: 30 + 20, B: 50) before it counts a new one. A comes first and
        # finds 50, so its one request is the only one past the limit of 100 (a bound of
        # one share over it, never more); B then finds the window full.
        assert (await takes(pa, 1))[0] == 1
        assert (await takes(pb, 1))[0] == 0
        raw = aioredis.Redis.from_url(private_redis.url)
        assert await raw.zcard(a.key("budget", "s", "60s", "sent")) == 101
        await raw.aclose()


async def test_a_page_turn_lock_held_by_one_process_makes_the_other_wait_its_turn(
        redis_url):  # noqa: F811
    url, prefix = redis_url
    order: list[str] = []
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b:
        holding = asyncio.Event()

        async def first() -> None:
            async with a.lock("turn:1", fallback=asyncio.Lock()):
                holding.set()
                order.append("a in")
                await asyncio.sleep(3.5)  # longer than any one Redis call may take
                order.append("a out")

        async def second() -> None:
            await holding.wait()
            async with b.lock("turn:1", fallback=asyncio.Lock()):
                order.append("b in")

        await asyncio.wait_for(asyncio.gather(first(), second()), 20)
        assert order == ["a in", "a out", "b in"]
        assert a.up and b.up  # waiting for a lock is not Redis being away


async def test_a_claim_is_won_once_until_it_is_given_back(redis_url):  # noqa: F811
    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b:
        assert await a.claim(60, "pick", 1, "pixabay", 42) is True
        assert await b.claim(60, "pick", 1, "pixabay", 42) is False
        assert await b.claim(60, "pick", 2, "pixabay", 42) is True  # another server
        await a.unclaim("pick", 1, "pixabay", 42)
        assert await b.claim(60, "pick", 1, "pixabay", 42) is True


async def test_claims_and_locks_fall_back_to_the_process_while_redis_is_away(private_redis):  # noqa: F811
    async with SharedRedis(private_redis.url, prefix="p:") as a:
        private_redis.stop()
        assert await a.claim(60, "pick", 1, "pixabay", 42) is None  # nobody can say
        async with a.lock("turn:1", fallback=asyncio.Lock()):
            pass
        assert not a.up


async def test_two_openverse_clients_share_the_anonymous_minute_through_redis(
        fake_openverse, redis_url):  # noqa: F811
    """Openverse's anonymous 20 requests a minute, held by two processes together."""
    import aiohttp

    from search.errors import RateLimited as Limited
    from search.sources.openverse import OpenverseClient

    url, prefix = redis_url
    async with SharedRedis(url, prefix=prefix) as a, SharedRedis(url, prefix=prefix) as b, \
            aiohttp.ClientSession() as session:
        from search.service import share

        clients = [OpenverseClient(session, api_url=fake_openverse.api_url, retries=0)
                   for _ in (a, b)]
        for client, r in zip(clients, (a, b), strict=True):
            share(client, r, 2)
        answered = limited = 0
        for i in range(30):
            try:
                await clients[i % 2].candidates(f"circle{i}", limit=20)
                answered += 1
            except Limited:
                limited += 1
        assert (answered, limited) == (20, 10)
        assert fake_openverse.api_requests == 20  # none refused by Openverse itself
