"""Several real `python -m bot` processes against one fake Discord, one fake Pixabay and a
real Redis: gateway shards split between processes, one Pixabay budget for all of them,
IDENTIFY turns taken in Redis, a hand-off that posts a pick once, Redis restarted."""

from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.scale import stop_processes
from bot.embeds import NUMBERS
from search.errors import RateLimited
from tests.conftest import bot_env
from tests.redis_server import private_redis, redis_url, wait_until  # noqa: F401  (fixtures)
from tests.test_bot import answered, press, reactions_added

TAGS = 130


@pytest.fixture
async def sharded_discord():
    """Two shards, a guild on each; IDENTIFYs sooner than Discord allows are refused."""
    from bench.fakes.discord import FakeDiscord

    fake = FakeDiscord(shards=2, max_concurrency=1, guilds=2, enforce_identify_limit=True)
    await fake.start()
    assert {fake.shard_of(g) for g in fake.guild_ids} == {0, 1}
    yield fake
    await fake.close()
    assert not fake.server_errors, fake.server_errors
    assert not fake.unknown_routes, fake.unknown_routes


def shard_env(fake, pixabay, data_dir: Path, **extra: str) -> dict[str, str]:
    env = bot_env(fake, pixabay, data_dir, **extra)
    env.pop("DISCORD_GUILD_ID")  # every guild: commands sync globally
    return env


@asynccontextmanager
async def bot_processes(fake, envs: list[dict[str, str]], tmp_path: Path, shards: set[int],
                        *, one_by_one: bool = False):
    """`python -m bot` for each env, online on ``shards``; SIGTERM when the block ends.

    ``one_by_one``: each starts once the one before is online, as in a hand-off."""
    procs = []
    logs = []
    try:
        for i, env in enumerate(envs):
            log = (tmp_path / f"bot{i}.log").open("wb")
            logs.append(log)
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=tmp_path,
                env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=log))
            if one_by_one:
                await fake.wait_for(lambda n=i: len(fake.identify_log) > n or any(
                    p.returncode is not None for p in procs), 240,
                    what=f"bot process {i} to come online")
        await fake.wait_for(
            lambda: shards <= fake.connected_shards() and None in fake.synced_commands
            and len(fake.identify_log) >= len(envs)
            or any(p.returncode is not None for p in procs),
            240, what="every bot process to come online")
        assert all(p.returncode is None for p in procs), "\n".join(read_logs(tmp_path, len(envs)))
        yield procs
    finally:
        await stop_processes(procs)
        for log in logs:
            log.close()


def read_logs(tmp_path: Path, n: int) -> list[str]:
    return [(tmp_path / f"bot{i}.log").read_text(errors="replace") for i in range(n)]


async def test_two_processes_with_a_shard_each_answer_each_guild_once_from_its_shard(
        sharded_discord, fake_pixabay, redis_url, tmp_path):  # noqa: F811
    fake = sharded_discord
    url, prefix = redis_url
    envs = [shard_env(fake, fake_pixabay, tmp_path / f"data{i}", SHARD_COUNT="2",
                      SHARD_IDS=str(i), REDIS_URL=url, REDIS_KEY_PREFIX=prefix)
            for i in range(2)]
    async with bot_processes(fake, envs, tmp_path, {0, 1}):
        assert sorted(tuple(d["shard"]) for d in fake.identify_payloads) == [(0, 2), (1, 2)]
        # One bucket (max_concurrency 1): the turns were taken in Redis, none refused.
        (t0, _, _), (t1, _, _) = sorted(fake.identify_log)
        assert fake.identify_too_soon == [] and t1 - t0 >= 5.0
        channels = {fake.shard_of(fake.channels[c].guild_id): c for c in ("general", "general@1")}
        inters = {}
        for shard, channel in channels.items():
            inters[shard] = await fake.invoke(
                "findimage", {"tag": "circle", "phrase": "a red circle on snow"},
                channel=channel)
        for inter in inters.values():
            reply = await answered(fake, inter)
            assert len(reply.embeds) == 5
            assert len(inter.callbacks) == 1 and len(inter.followups) == 1
    logs = read_logs(tmp_path, 2)
    for shard, inter in inters.items():
        assert f"interaction={inter.id}" in logs[shard]
        assert f"interaction={inter.id}" not in logs[1 - shard]


async def test_130_tags_across_two_processes_make_at_most_100_pixabay_requests_a_minute(
        sharded_discord, fake_pixabay, redis_url, tmp_path):  # noqa: F811
    fake = sharded_discord
    url, prefix = redis_url
    envs = [shard_env(fake, fake_pixabay, tmp_path / f"data{i}", SHARD_COUNT="2",
                      SHARD_IDS=str(i), REDIS_URL=url, REDIS_KEY_PREFIX=prefix,
                      MAX_CONCURRENT_SEARCHES="8", SEARCH_CANDIDATES="3")
            for i in range(2)]
    async with bot_processes(fake, envs, tmp_path, {0, 1}):
        fake_pixabay.reset_counters()
        gate = asyncio.Semaphore(6)  # members in flight; each process queues a few more

        async def one(i: int):
            async with gate:
                # tags no photo has: one API request each, answered "nothing found"
                inter = await fake.invoke(
                    "findimage", {"tag": f"nothing{i}", "phrase": "anything"},
                    user=("alice", "bob")[i % 2], channel=("general", "general@1")[i % 2])
                return await inter.wait_followup(1, timeout=120)

        started = asyncio.get_running_loop().time()
        replies = await asyncio.gather(*(one(i) for i in range(TAGS)))
        took = asyncio.get_running_loop().time() - started
    assert took < 60, f"the {TAGS} searches took {took:.0f} s, not within a minute"
    limited = [r for r in replies if "rate limit is reached" in r.content]
    assert fake_pixabay.api_requests == 100  # the budget is used to the full, and no more
    assert fake_pixabay.most_in_window(60.0) <= 100
    assert len(limited) == TAGS - 100
    sentence = str(RateLimited(60.0)).split(" try again")[0]
    assert all(r.ephemeral and r.content.startswith(sentence) for r in limited)


@pytest.fixture(params=["data_dir", "postgresql"])
async def database_url(request):
    """None: the processes share one DATA_DIR (one machine); else a fresh PostgreSQL
    database that processes with a DATA_DIR each share (several machines)."""
    if request.param == "data_dir":
        yield None
        return
    from tests.pg import create_database, drop_database

    url = await create_database()
    yield url
    await drop_database(url)


async def test_a_tag_searched_in_one_process_then_another_makes_one_api_call_and_one_round_of_downloads(
        sharded_discord, fake_pixabay, redis_url, tmp_path, database_url):  # noqa: F811
    """Two processes on one machine share DATA_DIR's caches (SQLite, WAL); on two machines
    (a DATA_DIR each) they share PostgreSQL's through DATABASE_URL."""
    fake = sharded_discord
    url, prefix = redis_url
    extra = {"DATABASE_URL": database_url} if database_url else {}
    envs = [shard_env(fake, fake_pixabay, tmp_path / (f"data{i}" if database_url else "data"),
                      SHARD_COUNT="2", SHARD_IDS=str(i), REDIS_URL=url, REDIS_KEY_PREFIX=prefix,
                      SEARCH_CANDIDATES="20", **extra)
            for i in range(2)]
    async with bot_processes(fake, envs, tmp_path, {0, 1}, one_by_one=True):
        fake_pixabay.reset_counters()
        replies = []
        for channel in ("general", "general@1"):  # guild 0's shard, then guild 1's
            inter = await fake.invoke("findimage", {"tag": "circle", "phrase": "a red circle"},
                                      channel=channel)
            replies.append(await answered(fake, inter))
            if channel == "general":
                downloads = fake_pixabay.image_requests
        assert fake_pixabay.api_requests == 1
        assert downloads == 20 and fake_pixabay.image_requests == downloads
        assert [e["url"] for e in replies[0].embeds] == [e["url"] for e in replies[1].embeds]
    logs = read_logs(tmp_path, 2)
    assert "guild=" + str(fake.guild_ids[0]) in logs[fake.shard_of(fake.guild_ids[0])]
    assert "guild=" + str(fake.guild_ids[1]) in logs[fake.shard_of(fake.guild_ids[1])]


async def test_a_hand_off_with_two_processes_on_one_shard_posts_a_pick_once(
        fake_discord, fake_pixabay, redis_url, tmp_path):  # noqa: F811
    """The new process starts while the old one still runs: both hold shard 0, share the
    DATA_DIR on this machine, and receive every event."""
    fake = fake_discord
    url, prefix = redis_url
    env = shard_env(fake, fake_pixabay, tmp_path / "data", SHARD_COUNT="1", SHARD_IDS="0",
                    REDIS_URL=url, REDIS_KEY_PREFIX=prefix)
    async with bot_processes(fake, [env, env], tmp_path, {0}, one_by_one=True):
        await fake.wait_for(lambda: len([s for s in fake._sessions if s.conn]) == 2, 60,
                            what="both processes to hold shard 0")
        inter = await fake.invoke("findimage", {"tag": "circle", "phrase": "a red circle"})
        reply = await answered(fake, inter)
        assert len(inter.callbacks) == 1 and len(inter.followups) == 1
        await reactions_added(fake, reply.id, NUMBERS[:1])
        before = set(fake.messages)
        await press(fake, reply.id, NUMBERS[0])
        await fake.wait_for(lambda: any(m.interaction_id is None for i, m in
                                        fake.messages.items() if i not in before), 60,
                            what="the pick to be posted")
        # Both processes saw the press: the other says it let this one post (no sleep).
        await fake.wait_for(lambda: any("was shared within the last minute" in text
                                        for text in read_logs(tmp_path, 2)), 60,
                            what="the other process to step aside")
        posts = [m for i, m in fake.messages.items() if i not in before
                 and m.interaction_id is None]
        assert len(posts) == 1, [p.content for p in posts]
        assert posts[0].content.startswith(f"Shared by <@{fake.members['alice'].id}>")
    assert fake.identify_too_soon == []


async def test_redis_restarted_mid_run_searches_answer_throughout_and_share_again(
        fake_discord, fake_pixabay, private_redis, tmp_path):  # noqa: F811
    fake = fake_discord
    env = shard_env(fake, fake_pixabay, tmp_path / "data", REDIS_URL=private_redis.url,
                    REDIS_KEY_PREFIX="r:", SEARCH_CANDIDATES="3")

    async def search(tag: str):
        inter = await fake.invoke("findimage", {"tag": tag, "phrase": "a red circle"})
        return await inter.wait_followup(1, timeout=60)

    async with bot_processes(fake, [env], tmp_path, {0}):
        assert len((await search("circle")).embeds) == 3
        private_redis.stop()
        # While Redis is away a search still gets its answer, on this process's share.
        reply = await search("square")
        assert len(reply.embeds) == 3
        private_redis.start()
        back = asyncio.get_running_loop().time()
        raw = aioredis.Redis.from_url(private_redis.url)
        try:
            n = 0
            while not await raw.keys("r:budget:*:sent"):
                # within 15 s of its return the budget is kept in Redis again
                assert asyncio.get_running_loop().time() - back < 15, "Redis was not used again"
                await asyncio.sleep(0.5)
                n += 1
                reply = await search(f"nothing{n}")
                assert reply.ephemeral and reply.content  # a sentence, never silence
            # Redis had forgotten everything: this process put its requests of the window back
            (key,) = await raw.keys("r:budget:*:sent")
            assert await raw.zcard(key) == fake_pixabay.api_requests
        finally:
            await raw.aclose()
    log = read_logs(tmp_path, 1)[0]
    assert "is unreachable (ConnectionError)" in log and "answers again" in log


async def test_an_unreachable_redis_stops_the_start_with_one_line(fake_discord, fake_pixabay,
                                                                  tmp_path):
    env = shard_env(fake_discord, fake_pixabay, tmp_path / "data",
                    REDIS_URL="redis://127.0.0.1:9/0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert err.decode() == ("error: REDIS_URL redis://127.0.0.1:9/0 does not answer "
                            "(ConnectionError); start Redis there or fix REDIS_URL (empty keeps "
                            "everything in this process).\n")
    assert fake_discord.gateway_connections == 0
