"""The bot end to end: the real discord.py client against the fake Discord, the fake Pixabay
and the tiny CLIP model, driven the way members drive it."""

import asyncio
import re
import signal
import sys
from contextlib import asynccontextmanager

import pytest

from bot.__main__ import run
from bot.embeds import NEXT, NUMBERS, PREV
from search.config import Settings
from tests.conftest import bot_env

INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_MESSAGE_CONTENT = 1 << 15


@asynccontextmanager
async def running_bot(settings: Settings):
    """The bot as `python -m bot` runs it, in-process, until the block ends."""
    started = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, bot_options={"guild_ready_timeout": 0.1},
                                   started=started))
    done, _ = await asyncio.wait({started, task}, timeout=60,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # start-up failed: raise it here
    bot = started.result()
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


@pytest.fixture
async def bot(env):
    async with running_bot(Settings.from_mapping(env)) as b:
        yield b


def image_id(embed: dict) -> int:
    return int(embed["url"].rstrip("/").rsplit("-", 1)[1])


async def answered(fake, inter):
    """The results message, once the bot has also added all its reactions."""
    reply = await inter.wait_followup(1, timeout=120)
    if not reply.ephemeral:
        await reactions_added(fake, reply.id, (PREV, NEXT, *NUMBERS[:len(reply.embeds)]))
    return reply


async def search(fake, *, user: str = "alice", channel: str = "general", **options):
    inter = await fake.invoke("findimage", options, user=user, channel=channel)
    return inter, await answered(fake, inter)


async def press(fake, message_id: int, emoji: str, user: str = "alice") -> None:
    """A member clicks a reaction: like a person, only once their last one has gone."""
    mine = (emoji, fake.members[user].id)
    await fake.wait_for(lambda: mine not in fake.reactions.get(message_id, set()), 20,
                        what=f"{user}'s {emoji} to be taken off")
    await fake.react(message_id, emoji, user=user)


async def reactions_added(fake, message_id: int, emojis) -> None:
    want = {(e, fake.bot_user_id) for e in emojis}
    await fake.wait_for(lambda: want <= fake.reactions.get(message_id, set()), 20,
                        what="the bot's reactions")


async def test_commands_are_synced_to_the_guild_with_minimal_intents(bot, fake_discord):
    names = {c["name"] for c in fake_discord.synced_commands[fake_discord.guild_id]}
    assert names == {"findimage", "picks", "findimage-setup", "Find similar images"}
    assert None not in fake_discord.synced_commands
    (identify,) = fake_discord.identify_payloads
    assert identify["intents"] & INTENT_GUILD_MESSAGE_REACTIONS
    assert not identify["intents"] & INTENT_MESSAGE_CONTENT
    assert fake_discord.token not in repr(identify.get("properties"))


async def test_findimage_answers_red_circles_on_snow_first(env, fake_discord, fake_pixabay):
    env["SEARCH_CANDIDATES"] = "200"
    async with running_bot(Settings.from_mapping(env)):
        inter, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
        assert inter.callbacks[0]["type"] == 5  # deferred at once: "thinking…"
        assert not reply.ephemeral
        assert len(reply.embeds) == 5
        captions = [fake_pixabay.truth[image_id(e)].caption for e in reply.embeds]
        assert captions.count("a red circle on snow") >= 4, captions
        first = reply.embeds[0]
        assert first["title"].startswith("#1 · score ")
        assert first["url"].startswith("https://pixabay.com/photos/")
        assert first["image"]["url"].startswith(fake_pixabay.api_url.replace("/api/", "/get/"))
        assert first["footer"]["text"].endswith(" on Pixabay")
        assert first["footer"]["text"].startswith("Image by ")
        assert "circle" in first["description"]
        assert "200 candidates" in reply.content and "page 1/40" in reply.content
        await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:5]))


async def test_next_edits_the_same_message_to_ranks_6_to_10_without_new_calls(
        bot, fake_discord, fake_pixabay):
    _, reply = await search(fake_discord, tag="star", phrase="a blue star on grass")
    await reactions_added(fake_discord, reply.id, (PREV, NEXT))
    first_ids = [image_id(e) for e in reply.embeds]
    fake_pixabay.reset_counters()
    encoded = (bot.service.encoder.stats.images, bot.service.encoder.stats.texts)

    await press(fake_discord, reply.id, NEXT, user="bob")
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                20, what="page 2")
    page2 = fake_discord.messages[reply.id]
    assert [e["title"].split(" ")[0] for e in page2.embeds] == ["#6", "#7", "#8", "#9", "#10"]
    assert not set(first_ids) & {image_id(e) for e in page2.embeds}
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0
    assert (bot.service.encoder.stats.images, bot.service.encoder.stats.texts) == encoded
    # the bot took bob's reaction off (it may: Manage Messages), so pressing again works
    await fake_discord.wait_for(
        lambda: (NEXT, fake_discord.members["bob"].id) not in fake_discord.reactions[reply.id],
        10, what="bob's reaction removed")
    await press(fake_discord, reply.id, NEXT, user="bob")
    await fake_discord.wait_for(lambda: "page 3/" in fake_discord.messages[reply.id].content,
                                20, what="page 3")
    await press(fake_discord, reply.id, PREV, user="alice")
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                20, what="back to page 2")


async def test_without_manage_messages_taking_the_reaction_off_is_the_next_press(
        bot, fake_discord):
    fake_discord.set_bot_can_manage_messages("general", False)
    _, reply = await search(fake_discord, tag="square", phrase="a green square", count=10)
    await reactions_added(fake_discord, reply.id, (PREV, NEXT))
    await fake_discord.react(reply.id, NEXT)
    await fake_discord.wait_for(lambda: "page 2/6" in fake_discord.messages[reply.id].content,
                                20, what="page 2")
    await fake_discord.unreact(reply.id, NEXT)
    await fake_discord.wait_for(lambda: "page 3/6" in fake_discord.messages[reply.id].content,
                                20, what="page 3")


async def test_pages_past_the_end_say_so(bot, fake_discord):
    _, reply = await search(fake_discord, tag="cross", phrase="a red cross", count=10)
    await reactions_added(fake_discord, reply.id, (PREV, NEXT))
    await press(fake_discord, reply.id, PREV)
    await fake_discord.wait_for(
        lambda: "This is the first page." in fake_discord.messages[reply.id].content, 20,
        what="first-page note")
    for n in range(2, 7):
        await press(fake_discord, reply.id, NEXT)
        await fake_discord.wait_for(
            lambda n=n: f"page {n}/6" in fake_discord.messages[reply.id].content, 20)
    await press(fake_discord, reply.id, NEXT)
    await fake_discord.wait_for(
        lambda: "That was the last page" in fake_discord.messages[reply.id].content, 20,
        what="last-page note")
    assert "page 6/6" in fake_discord.messages[reply.id].content


async def test_number_shares_the_pick_attached_crediting_the_member(bot, fake_discord,
                                                                    fake_pixabay):
    _, reply = await search(fake_discord, tag="circle", phrase="a yellow circle on sand")
    await reactions_added(fake_discord, reply.id, NUMBERS[:5])
    second = image_id(reply.embeds[1])
    before = set(fake_discord.messages)
    await fake_discord.react(reply.id, NUMBERS[1], user="alice")

    def posted():
        return [m for i, m in fake_discord.messages.items() if i not in before]

    await fake_discord.wait_for(lambda: posted(), 30, what="the shared pick")
    (pick,) = posted()
    alice = fake_discord.members["alice"].id
    assert pick.channel_id == fake_discord.channels["general"].id
    assert f"<@{alice}>" in pick.content and "Shared by" in pick.content
    (attachment,) = pick.attachments
    assert attachment.filename == f"pixabay-{second}.jpg"
    assert attachment.data == fake_pixabay.entry(second).jpeg(1280)
    (embed,) = pick.embeds
    assert embed["title"] == "a yellow circle on sand"
    assert embed["url"] == reply.embeds[1]["url"]
    assert embed["footer"]["text"] == reply.embeds[1]["footer"]["text"]
    assert embed["image"]["url"] == f"attachment://pixabay-{second}.jpg"

    # the same pick again within a minute, by anyone, is posted once
    await fake_discord.react(reply.id, NUMBERS[1], user="bob")
    await fake_discord.react(reply.id, NUMBERS[0], user="bob")
    await fake_discord.wait_for(lambda: len(posted()) == 2, 30, what="the other pick")
    assert [m.attachments[0].filename for m in posted()] == [
        f"pixabay-{second}.jpg", f"pixabay-{image_id(reply.embeds[0])}.jpg"]

    listing = await fake_discord.invoke("picks", {})
    shown = await listing.wait_reply()
    assert shown.ephemeral
    text = "\n".join(e["description"] for e in shown.embeds)
    assert f"/{fake_discord.guild_id}/{pick.channel_id}/{pick.id})" in text
    assert text.index(str(posted()[1].id)) < text.index(str(pick.id))  # newest first
    mine = await (await fake_discord.invoke("picks", {"member": "alice"})).wait_reply()
    assert str(pick.id) in mine.embeds[0]["description"]
    assert str(posted()[1].id) not in "".join(e["description"] for e in mine.embeds)


async def test_picks_channel_needs_manage_server_then_receives_picks(bot, fake_discord):
    refused = await fake_discord.invoke("findimage-setup", {"channel": "#picks"}, user="alice",
                                        subcommand="picks-channel", override_permissions=True)
    reply = await refused.wait_reply()
    assert reply.ephemeral
    assert reply.content == "You need the Manage Server permission to do that."

    done = await fake_discord.invoke("findimage-setup", {"channel": "#picks"}, user="admin",
                                     subcommand="picks-channel")
    picks = fake_discord.channels["picks"]
    assert (await done.wait_reply()).content == f"Picks will be posted in <#{picks.id}>."

    _, results = await search(fake_discord, tag="triangle", phrase="a red triangle")
    await reactions_added(fake_discord, results.id, NUMBERS[:1])
    await fake_discord.react(results.id, NUMBERS[0], user="bob")
    await fake_discord.wait_for(
        lambda: any(m.channel_id == picks.id for m in fake_discord.messages.values()), 30,
        what="a pick in #picks")


async def test_paging_works_on_an_old_message_after_a_restart(env, fake_discord, fake_pixabay):
    settings = Settings.from_mapping(env)
    async with running_bot(settings):
        _, reply = await search(fake_discord, tag="hexagon", phrase="a blue hexagon on snow")
        await reactions_added(fake_discord, reply.id, (PREV, NEXT))
    fake_pixabay.reset_counters()
    async with running_bot(settings):
        await fake_discord.react(reply.id, NEXT, user="bob")
        await fake_discord.wait_for(
            lambda: "page 2/" in fake_discord.messages[reply.id].content, 20, what="page 2")
        edit = [r for r in fake_discord.requests if r.method == "PATCH"][-1]
        assert edit.route == "PATCH /channels/{channel_id}/messages/{message_id}"
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0


async def test_gateway_drop_mid_search_still_delivers_the_answer(bot, fake_discord,
                                                                fake_pixabay):
    fake_pixabay.hang_next(1)
    inter = await fake_discord.invoke("findimage", {"tag": "star", "phrase": "a red star"})
    await fake_pixabay.wait_for_hung(1, timeout=20)
    await fake_discord.drop_gateway()
    await fake_discord.wait_for(lambda: fake_discord.resume_payloads, 20, what="RESUME")
    fake_pixabay.release_hung()
    reply = await answered(fake_discord, inter)
    assert len(reply.embeds) == 5 and not reply.ephemeral


async def ephemeral_error(fake, name="findimage", **options) -> str:
    inter = await fake.invoke(name, options)
    await fake.wait_for(lambda: any(m.ephemeral for m in inter.followups)
                        or (inter.original is not None and inter.original.ephemeral
                            and not inter.original.loading), 60, what="an ephemeral reply")
    public = [m for m in fake.messages.values() if m.interaction_id == inter.id
              and not m.ephemeral]
    assert not public, [m.content for m in public]  # nothing public left behind
    reply = next((m for m in inter.followups if m.ephemeral), inter.original)
    assert "Traceback" not in reply.content and "\n" not in reply.content
    return reply.content


async def test_safe_search_off_is_refused_outside_age_restricted_channels(bot, fake_discord,
                                                                          fake_pixabay):
    text = await ephemeral_error(fake_discord, tag="circle", phrase="a red circle", safe=False)
    assert text.startswith("Safe search can be turned off only in age-restricted channels")
    assert fake_pixabay.api_requests == 0
    await search(fake_discord, tag="circle", phrase="a red circle", safe=False, channel="nsfw")
    assert fake_pixabay.queries[-1]["safesearch"] == "false"


@pytest.mark.parametrize(("setup", "options", "expected"), [
    (lambda p: setattr(p, "rate_limit", 0), {"tag": "circle", "phrase": "x"},
     "Pixabay's rate limit is reached; try again in "),
    (None, {"tag": "zebra", "phrase": "a zebra"},
     "Pixabay has no images tagged 'zebra'; try a broader tag."),
    (lambda p: [p.set_image_fault(e.id, "missing") for e in p.entries
                if e.scene.shape == "star" and e.scene.colour == "red"],
     {"tag": "star red", "phrase": "a red star"}, "None of the "),
])
async def test_search_errors_are_one_ephemeral_sentence(bot, fake_discord, fake_pixabay, setup,
                                                         options, expected):
    if setup:
        setup(fake_pixabay)
    assert (await ephemeral_error(fake_discord, **options)).startswith(expected)


async def test_truncated_phrase_is_answered_and_noted(bot, fake_discord):
    long = "a red circle on snow " + "under a pale winter sky with drifting clouds " * 3
    inter, reply = await search(fake_discord, tag="circle", phrase=long)
    assert len(reply.embeds) == 5
    note = await inter.wait_followup(2, timeout=20)
    assert note.ephemeral
    assert note.content == ("Your phrase was longer than the model reads; only its beginning "
                            "was used.")


async def test_cooldown_tells_the_member_how_long_to_wait(env, fake_discord):
    env["USER_COOLDOWN_SECONDS"] = "60"
    async with running_bot(Settings.from_mapping(env)):
        await search(fake_discord, tag="circle", phrase="a red circle")
        text = await ephemeral_error(fake_discord, tag="circle", phrase="a blue circle")
        assert text.startswith("Slow down: you can search again in ")
        # another member is not held back
        _, reply = await search(fake_discord, tag="circle", phrase="x", user="bob")
        assert not reply.ephemeral


async def test_a_refused_command_does_not_use_up_the_members_cooldown(env, fake_discord):
    env["USER_COOLDOWN_SECONDS"] = "60"
    async with running_bot(Settings.from_mapping(env)):
        text = await ephemeral_error(fake_discord, tag="circle")  # no phrase: refused
        assert text.startswith("Give a phrase, an image, or both")
        _, reply = await search(fake_discord, tag="circle", phrase="a red circle")
        assert not reply.ephemeral and len(reply.embeds) == 5  # not "Slow down"
        # a query the search itself refuses (a tag of spaces) gives the turn back too
        inter = await fake_discord.invoke("findimage", {"tag": "   ", "phrase": "x"},
                                          user="bob")
        await fake_discord.wait_for(lambda: any(m.ephemeral for m in inter.followups), 60,
                                    what="bob's refusal")
        refused = next(m for m in inter.followups if m.ephemeral)
        assert refused.content.startswith("The tag is empty")
        _, reply = await search(fake_discord, tag="star", phrase="a blue star", user="bob")
        assert not reply.ephemeral
        # a search that ran does count
        text = await ephemeral_error(fake_discord, tag="circle", phrase="a blue circle")
        assert text.startswith("Slow down: you can search again in ")


async def test_full_queue_says_busy_instead_of_hanging(env, fake_discord, fake_pixabay):
    env["MAX_CONCURRENT_SEARCHES"] = "1"  # one running, two waiting, the fourth is turned away
    env["USER_COOLDOWN_SECONDS"] = "60"  # and "busy" costs the fourth member no turn
    async with running_bot(Settings.from_mapping(env)):
        fake_pixabay.hang_next(1)
        users = ["alice", "bob", "admin"]
        waiting = [await fake_discord.invoke("findimage", {"tag": t, "phrase": "x"}, user=u)
                   for t, u in zip(("circle", "square", "star"), users, strict=True)]
        await fake_pixabay.wait_for_hung(1, timeout=20)
        await fake_discord.wait_for(lambda: all(i.callbacks for i in waiting), 20)
        inter = await fake_discord.invoke("findimage", {"tag": "cross", "phrase": "x"},
                                          user="owner")
        reply = await inter.wait_reply()
        assert reply.ephemeral
        assert reply.content == ("I'm busy with other searches right now; try again in a few "
                                 "seconds.")
        fake_pixabay.release_hung()
        for i in waiting:
            assert len((await answered(fake_discord, i)).embeds) == 5
        _, reply = await search(fake_discord, tag="cross", phrase="x", user="owner")
        assert not reply.ephemeral and len(reply.embeds) == 5  # not "Slow down"


async def run_bot_process(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, err.decode()


@pytest.mark.parametrize(("missing", "fix"), [
    ("DISCORD_TOKEN", "put it in the environment or in .env (see .env.example)."),
    ("PIXABAY_API_KEY", "put your key from https://pixabay.com/api/docs/ in the environment or "
                        "in .env (see .env.example), or search Openverse, which needs no key: "
                        "SEARCH_SOURCE=openverse (the CLI: --source openverse)."),
])
async def test_missing_setting_exits_2_with_one_line(env, tmp_path, missing, fix):
    env.pop(missing)
    code, err = await run_bot_process(env)
    assert code == 2
    assert err == f"error: {missing} is not set; {fix}\n"


async def search_in_a_bot_process(env, fake_discord, tmp_path) -> tuple[int, str]:
    """`python -m bot` in a bare environment: online, one search, SIGTERM; (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await fake_discord.wait_for(
            lambda: fake_discord.guild_id in fake_discord.synced_commands
            and fake_discord.connected, 120, what="the bot process to come online")
        _, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
        assert len(reply.embeds) == 5
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode()


async def test_bot_process_serves_then_stops_cleanly_on_sigterm_without_logging_secrets(
        env, fake_discord, tmp_path):
    returncode, log = await search_in_a_bot_process(env, fake_discord, tmp_path)
    assert returncode == 0, log
    assert "closed cleanly" in log
    assert fake_discord.token not in log
    assert env["PIXABAY_API_KEY"] not in log
    assert "Traceback" not in log
    # the operator's log: one "time LEVEL logger: message" line each, nothing under root,
    # no library below WARNING, and the search's own line
    lines = [re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+) ([\w.]+): (.*)", line)
             for line in log.splitlines()]
    assert all(lines), log
    assert not [m[0] for m in lines if m[2] == "root" or m[1] in ("DEBUG", "INFO")
                and not m[2].startswith(("bot", "search"))]
    assert [m[2] for m in lines if m[3].startswith("search outcome=results ")] == [
        "bot.searches"]
