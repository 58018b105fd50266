"""Processes are disposable (DATABASE_URL): a real `python -m bot` killed with SIGKILL in
the middle of a search, a share and with results posted is replaced by a bot on a fresh,
empty DATA_DIR with the same database, which pages the dead one's message, answers its
search left "thinking…", and takes over its unposted pick."""

import asyncio

import asyncpg

from bot.embeds import NEXT, NUMBERS
from bot.recovery import RESTARTED
from search.config import Settings
from tests.conftest import bot_env
from tests.test_bot import image_id, press, running_bot, search
from tests.test_crash_recovery import bot_process, new_posts, until


async def until_no_unposted_claim(url: str, timeout: float = 60.0) -> None:
    conn = await asyncpg.connect(url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await conn.fetchval("SELECT count(*) FROM picks WHERE message_id IS NULL"):
            if loop.time() > deadline:
                raise TimeoutError("the dead process's claim was never dropped")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_killed_process_is_replaced_on_a_fresh_data_dir_with_nothing_lost(
        pg_url, fake_discord, fake_pixabay, tmp_path):
    first = bot_env(fake_discord, fake_pixabay, tmp_path / "a", DATABASE_URL=pg_url)
    async with bot_process(first, fake_discord, tmp_path):
        _, reply = await search(fake_discord, tag="circle", phrase="a yellow circle on sand")
        first_image = image_id(reply.embeds[0])
        fake_pixabay.hang_next(1)
        thinking = await fake_discord.invoke("findimage", {"tag": "star", "phrase": "a star"})
        await fake_pixabay.wait_for_hung(1, timeout=60)
        fake_pixabay.latency = 20  # the pick's download is running when the process dies
        await fake_discord.react(reply.id, NUMBERS[0], user="alice")
        await until(lambda: fake_pixabay.images_in_flight >= 1, 30, "the pick's download")
    assert thinking.original.loading
    fake_pixabay.latency = 0
    fake_pixabay.release_hung()

    second = bot_env(fake_discord, fake_pixabay, tmp_path / "b", DATABASE_URL=pg_url)
    before = set(fake_discord.messages)
    async with running_bot(Settings.from_mapping(second)):
        # the dead run stops beating; within its timeout the new process answers for it
        await fake_discord.wait_for(lambda: not thinking.original.loading, 60,
                                    what="the dead process's search to be answered")
        assert thinking.original.content == RESTARTED
        # its claim, never posted, is dropped once the new process has looked for the post
        # in the channel (a press before that finds the claim still held)
        await until_no_unposted_claim(pg_url)
        # and blocks nothing now: the next press posts the image once
        await fake_discord.react(reply.id, NUMBERS[0], user="bob")
        await fake_discord.wait_for(lambda: new_posts(fake_discord, before), 30,
                                    what="the pick taken over")
        # its results message pages from the shared database (DATA_DIR b is empty)
        await press(fake_discord, reply.id, NEXT, user="bob")
        await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                    20, what="page 2 of the dead process's message")
        # the other searches of the new process go on as usual
        _, later = await search(fake_discord, tag="square", phrase="a green square", user="bob")
    (pick,) = new_posts(fake_discord, before)
    assert pick.attachments[0].filename == f"pixabay-{first_image}.jpg"
    assert f"<@{fake_discord.members['bob'].id}>" in pick.content
    assert not list((tmp_path / "b").glob("*.sqlite3"))  # everything was in PostgreSQL
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pending_interactions") == 0
        assert await conn.fetchval("SELECT count(*) FROM picks WHERE message_id IS NULL") == 0
        assert {r[0] for r in await conn.fetch("SELECT message_id FROM results")} == {
            reply.id, later.id}
    finally:
        await conn.close()
