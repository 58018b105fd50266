"""The bot killed (SIGKILL) at the worst moments, a full disk, and old results: nothing is
lost, nothing is left "thinking…", and every press after a restart does the right thing.

The killed bot is a real `python -m bot` process; the restarted one runs in-process (as
tests/test_bot.py runs it), both against the same fake Discord and the same DATA_DIR."""

import asyncio
import signal
import sqlite3
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.embeds import NEXT, NUMBERS, PREV
from bot.recovery import RESTARTED
from search.config import Settings
from tests.conftest import bot_env
from tests.test_bot import answered, image_id, press, reactions_added, running_bot, search


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


@asynccontextmanager
async def bot_process(env: dict[str, str], fake, tmp_path: Path):
    """`python -m bot` online against the fake; the block kills it with SIGKILL."""
    log = (tmp_path / "bot.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
        stdout=log, stderr=log)
    try:
        connections = fake.gateway_connections
        await fake.wait_for(lambda: fake.gateway_connections > connections and fake.connected,
                            120, what="the bot process to come online")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert proc.returncode == -signal.SIGKILL


async def until(predicate, timeout: float, what: str) -> None:
    """Poll a condition the fake Discord is not told about (the fake Pixabay's counters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def new_posts(fake, before: set[int]) -> list:
    """Messages posted in channels (picks) since ``before``; not command replies."""
    return [m for i, m in fake.messages.items() if i not in before and m.interaction_id is None]


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_a_search_killed_mid_way_is_answered_at_the_next_start(env, fake_discord,
                                                                     fake_pixabay, tmp_path):
    async with bot_process(env, fake_discord, tmp_path):
        fake_pixabay.hang_next(1)
        inter = await fake_discord.invoke("findimage", {"tag": "circle", "phrase": "a red circle"})
        await fake_pixabay.wait_for_hung(1, timeout=60)
        assert inter.callbacks[0]["type"] == 5  # "thinking…"
    assert inter.original.loading
    fake_pixabay.release_hung()
    async with running_bot(Settings.from_mapping(env)):
        await fake_discord.wait_for(lambda: not inter.original.loading, 30,
                                    what="the deferred reply to be answered")
        assert inter.original.content == RESTARTED
        (edit,) = [r for r in fake_discord.requests if r.path.endswith("/messages/@original")]
        assert edit.route == "PATCH /webhooks/{app_id}/{token}/messages/{message_id}"
        # an answered search leaves nothing pending
        _, reply = await search(fake_discord, tag="star", phrase="a red star")
    assert rows(Path(env["DATA_DIR"]) / "bot.sqlite3",
                "SELECT count(*) FROM pending_interactions") == [(0,)]


async def test_a_pick_killed_while_downloading_is_posted_by_the_next_press(
        env, fake_discord, fake_pixabay, tmp_path):
    async with bot_process(env, fake_discord, tmp_path):
        _, reply = await search(fake_discord, tag="circle", phrase="a yellow circle on sand")
        fake_pixabay.latency = 20  # the pick's download is still running when the bot dies
        await fake_discord.react(reply.id, NUMBERS[0], user="alice")
        await until(lambda: fake_pixabay.images_in_flight >= 1, 30, "the pick's download")
    fake_pixabay.latency = 0
    before = set(fake_discord.messages)
    async with running_bot(Settings.from_mapping(env)):
        await fake_discord.react(reply.id, NUMBERS[0], user="bob")
        await fake_discord.wait_for(lambda: new_posts(fake_discord, before), 30,
                                    what="the pick posted by the next press")
    (pick,) = new_posts(fake_discord, before)
    assert pick.attachments[0].filename == f"pixabay-{image_id(reply.embeds[0])}.jpg"
    assert f"<@{fake_discord.members['bob'].id}>" in pick.content


async def test_a_pick_killed_after_posting_is_recorded_and_listed_after_restart(
        env, fake_discord, fake_pixabay, tmp_path):
    async with bot_process(env, fake_discord, tmp_path):
        _, reply = await search(fake_discord, tag="square", phrase="a green square")
        before = set(fake_discord.messages)
        gate = fake_discord.set_pause_before("POST", "/channels/*/messages")
        await fake_discord.react(reply.id, NUMBERS[1], user="alice")
        await gate.wait_reached(30)
    gate.release()  # Discord posts the message; the bot that sent it is gone
    await fake_discord.wait_for(lambda: new_posts(fake_discord, before), 10,
                                what="the pick to be posted")
    (pick,) = new_posts(fake_discord, before)
    async with running_bot(Settings.from_mapping(env)):
        listing = await (await fake_discord.invoke("picks", {})).wait_reply()
        assert f"/{pick.channel_id}/{pick.id})" in listing.embeds[0]["description"]
        # within the minute, the same image pressed again is not posted twice
        await fake_discord.react(reply.id, NUMBERS[1], user="bob")
        await fake_discord.react(reply.id, NUMBERS[0], user="bob")
        await fake_discord.wait_for(lambda: len(new_posts(fake_discord, before)) == 2, 30,
                                    what="the other pick")
    posted = new_posts(fake_discord, before)
    assert [m.attachments[0].filename for m in posted] == [
        f"pixabay-{image_id(reply.embeds[1])}.jpg", f"pixabay-{image_id(reply.embeds[0])}.jpg"]


async def test_a_page_turn_killed_before_it_was_recorded_goes_on_from_the_shown_page(
        env, fake_discord, fake_pixabay, tmp_path):
    async with bot_process(env, fake_discord, tmp_path):
        _, reply = await search(fake_discord, tag="hexagon", phrase="a blue hexagon on snow")
        gate = fake_discord.set_pause_before("PATCH", f"/channels/*/messages/{reply.id}")
        await press(fake_discord, reply.id, NEXT)
        await gate.wait_reached(30)
    gate.release()  # the edit lands after the bot died
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                10, what="page 2 shown")
    async with running_bot(Settings.from_mapping(env)):
        await fake_discord.react(reply.id, NEXT, user="bob")
        await fake_discord.wait_for(
            lambda: "page 3/" in fake_discord.messages[reply.id].content, 20, what="page 3")
        await press(fake_discord, reply.id, PREV, user="bob")
        await fake_discord.wait_for(
            lambda: "page 2/" in fake_discord.messages[reply.id].content, 20, what="page 2")


async def test_a_page_turn_killed_before_its_edit_reached_discord_shows_the_next_page(
        env, fake_discord, fake_pixabay, tmp_path):
    async with bot_process(env, fake_discord, tmp_path):
        _, reply = await search(fake_discord, tag="hexagon", phrase="a blue hexagon on snow")
        gate = fake_discord.set_pause_before("PATCH", f"/channels/*/messages/{reply.id}")
        await press(fake_discord, reply.id, NEXT)
        await gate.wait_reached(30)
    gate.drop()  # the edit never reached Discord: the message still shows page 1
    assert "page 1/" in fake_discord.messages[reply.id].content
    async with running_bot(Settings.from_mapping(env)):
        await fake_discord.react(reply.id, NEXT, user="bob")
        await fake_discord.wait_for(
            lambda: "page 2/" in fake_discord.messages[reply.id].content, 20, what="page 2")


async def test_a_full_disk_still_answers_with_working_pages_and_no_apology(env, fake_discord):
    async with running_bot(Settings.from_mapping(env)) as bot:
        state = bot.state
        pages = await state.db.execute_raw("PRAGMA page_count")
        # SQLite's own cap on the file's size: past it every write fails with SQLITE_FULL,
        # exactly as on a full disk.
        await state.db.execute_raw(f"PRAGMA max_page_count = {pages}")
        inter, reply = await search(fake_discord, tag="star", phrase="a blue star on grass")
        assert len(reply.embeds) == 5 and not reply.ephemeral
        assert not [m for m in inter.followups if m.ephemeral]  # no apology
        await press(fake_discord, reply.id, NEXT)
        await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                    20, what="page 2 from the ranking kept in memory")
        await state.db.execute_raw("PRAGMA max_page_count = 1073741823")
        _, second = await search(fake_discord, tag="circle", phrase="a red circle", user="bob")
    saved = rows(Path(env["DATA_DIR"]) / "bot.sqlite3", "SELECT message_id, page FROM results")
    assert sorted(saved) == sorted([(reply.id, 1), (second.id, 0)])  # written once space returned


def backdate(path: Path, message_id: int, days: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE results SET created_at = created_at - ? WHERE message_id = ?",
                     (days * 86400, message_id))


async def test_results_past_the_keep_days_are_pruned_and_paging_them_says_so(env, fake_discord):
    settings = Settings.from_mapping({**env, "RESULTS_KEEP_DAYS": "2"})
    db = Path(env["DATA_DIR"]) / "bot.sqlite3"
    async with running_bot(settings):
        _, old = await search(fake_discord, tag="cross", phrase="a red cross")
        _, recent = await search(fake_discord, tag="star", phrase="a red star", user="bob")
    await asyncio.to_thread(backdate, db, old.id, 3)
    async with running_bot(settings) as bot:
        await fake_discord.react(old.id, NEXT, user="bob")
        await fake_discord.wait_for(
            lambda: "These results expired after 2 days; search again with /findimage."
            in fake_discord.messages[old.id].content, 20, what="the expiry note")
        await fake_discord.react(recent.id, NEXT, user="alice")
        await fake_discord.wait_for(
            lambda: "page 2/" in fake_discord.messages[recent.id].content, 20, what="page 2")
        locks = bot.get_cog("FindImage")._locks
        await until(lambda: len(locks) == 0, 10, "no lock to outlive its page turn")
    sizes = dict(rows(db, "SELECT message_id, length(ranking) FROM results"))
    assert sizes[old.id] == 0 and sizes[recent.id] > 1000


async def test_answered_search_results_survive_a_restart_with_their_page(env, fake_discord):
    async with running_bot(Settings.from_mapping(env)):
        inter = await fake_discord.invoke("findimage", {"tag": "circle", "phrase": "a red circle"})
        reply = await answered(fake_discord, inter)
        await reactions_added(fake_discord, reply.id, (PREV, NEXT))
        await press(fake_discord, reply.id, NEXT)
        await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                    20)
    assert rows(Path(env["DATA_DIR"]) / "bot.sqlite3",
                f"SELECT page, turning FROM results WHERE message_id={reply.id}") == [(1, 0)]
