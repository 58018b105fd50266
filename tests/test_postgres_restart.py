"""PostgreSQL stopped and started under a running bot (a private cluster of the test's own,
so no other test's server goes away): while it is down searches still answer and a press
on an older message gets one sentence; within 15 s of its return the old message pages
again, and nothing kept before or during the outage is lost."""

import asyncio
import time

import asyncpg

from bot.embeds import NEXT
from search.config import Settings
from search.storage import Unavailable
from tests.conftest import bot_env
from tests.pg import create_database, drop_database
from tests.test_bot import press, running_bot, search


def sentences(fake, user: str) -> list:
    mention = f"<@{fake.members[user].id}>"
    return [m for m in fake.messages.values()
            if m.content.startswith(mention) and Unavailable.SENTENCE in m.content]


async def test_postgresql_restarted_mid_run_answers_again_within_15_s_losing_nothing(
        pg_cluster, fake_discord, fake_pixabay, tmp_path):
    url = await create_database(pg_cluster.url)
    env = bot_env(fake_discord, fake_pixabay, tmp_path / "data", DATABASE_URL=url)
    try:
        async with running_bot(Settings.from_mapping(env)):
            _, before = await search(fake_discord, tag="circle", phrase="a red circle")
            await asyncio.to_thread(pg_cluster.stop)

            # Down: a search still answers (without its caches), and pages from memory.
            _, during = await search(fake_discord, tag="star", phrase="a red star", user="bob")
            assert len(during.embeds) == 5 and not during.ephemeral
            await press(fake_discord, during.id, NEXT, user="bob")
            await fake_discord.wait_for(
                lambda: "page 2/" in fake_discord.messages[during.id].content, 20,
                what="page 2 from the ranking kept in memory")
            # A press on a message whose ranking is in the database: one sentence.
            await fake_discord.react(before.id, NEXT, user="alice")
            await fake_discord.wait_for(lambda: sentences(fake_discord, "alice"), 20,
                                        what="the database-down sentence")
            assert "page 1/" in fake_discord.messages[before.id].content

            await asyncio.to_thread(pg_cluster.start)
            back = time.monotonic()
            for user in ("owner", "admin", "bob"):  # members press again, a moment apart
                await fake_discord.react(before.id, NEXT, user=user)
                try:
                    await fake_discord.wait_for(
                        lambda: "page 2/" in fake_discord.messages[before.id].content, 4,
                        what="page 2 of the message from before the outage")
                    break
                except TimeoutError:
                    continue
            assert "page 2/" in fake_discord.messages[before.id].content
            assert time.monotonic() - back < 15
            assert len(sentences(fake_discord, "alice")) == 1  # one sentence, not one a try
            _, after = await search(fake_discord, tag="cross", phrase="a red cross",
                                    user="alice")
        conn = await asyncpg.connect(url)
        try:
            kept = dict(await conn.fetch("SELECT message_id, page FROM results"))
        finally:
            await conn.close()
        assert kept == {before.id: 1, during.id: 1, after.id: 0}
    finally:
        await drop_database(url, pg_cluster.url)
