"""The bot against hostile members and a hostile Pixabay, through the real discord.py client
and the fakes: the queue holds under a burst, embeds fit Discord's limits, untrusted text is
shown as typed, nothing pings, and every failure is our own sentence."""

import asyncio

import pytest

from bot.embeds import NUMBERS
from search.config import Settings
from tests.conftest import bot_env
from tests.test_bot import answered, ephemeral_error, image_id, reactions_added, running_bot

BUSY = "I'm busy with other searches right now; try again in a few seconds."


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


@pytest.fixture
async def bot(env):
    async with running_bot(Settings.from_mapping(env)) as b:
        yield b


async def test_a_burst_of_20_with_capacity_1_is_3_searches_and_17_busy_sentences(
        env, fake_discord, fake_pixabay):
    env["MAX_CONCURRENT_SEARCHES"] = "1"  # one running, two waiting
    async with running_bot(Settings.from_mapping(env)):
        fake_pixabay.hang_next(1)  # the first search holds its slot until released
        loop = asyncio.get_running_loop()
        started = loop.time()
        users = ("alice", "bob", "admin", "owner")
        burst = await asyncio.gather(*(
            fake_discord.invoke("findimage", {"tag": "circle", "phrase": f"a circle {i}"},
                                user=users[i % 4]) for i in range(20)))
        await fake_discord.wait_for(lambda: all(i.callbacks for i in burst),
                                    max(0.1, 3.0 - (loop.time() - started)),
                                    what="every command acknowledged within 3 s")
        accepted = [i for i in burst if i.callbacks[0]["type"] == 5]
        refused = [i for i in burst if i.callbacks[0]["type"] == 4]
        assert len(accepted) == 3 and len(refused) == 17
        for inter in refused:
            assert inter.original.ephemeral and inter.original.content == BUSY
        await fake_pixabay.wait_for_hung(1, timeout=20)
        fake_pixabay.release_hung()
        for inter in accepted:
            assert len((await answered(fake_discord, inter)).embeds) == 5


@pytest.mark.parametrize("fields, count", [
    ({"tags": "circle, " + "t" * 5000}, 5),  # description over 4096
    ({"tags": ", ".join(f"tag{n:03d}" for n in range(100))}, 10),  # 10 x ~700: over 6000
    ({"user": "U" * 3000}, 5),  # footer over 2048
    ({"pageURL": "javascript:alert(1)"}, 5),
])
async def test_hostile_hits_are_clipped_to_discords_limits_and_the_search_answers(
        bot, fake_discord, fake_pixabay, fields, count):
    fake_pixabay.extra_hit_fields = fields
    inter = await fake_discord.invoke("findimage", {"tag": "circle", "phrase": "a red circle",
                                                    "count": count})
    reply = await answered(fake_discord, inter)
    assert not reply.ephemeral and len(reply.embeds) == count
    assert sum(len(e.get("title", "")) + len(e.get("description", ""))
               + len(e.get("footer", {}).get("text", "")) for e in reply.embeds) <= 6000
    for embed in reply.embeds:
        assert embed["url"].startswith("https://pixabay.com/")
        assert len(embed.get("description", "")) <= 4096
        assert len(embed["footer"]["text"]) <= 2048


async def test_markdown_in_phrase_and_tag_is_shown_as_typed(bot, fake_discord):
    inter = await fake_discord.invoke("findimage", {
        "tag": "circle", "phrase": "[free nitro](https://evil.example/x) **bold"})
    reply = await answered(fake_discord, inter)
    assert reply.content.startswith(
        r"**\[free nitro\](https://evil.example/x) \*\*bold** · tag circle · ")
    assert "[free nitro](" not in reply.content


async def test_nothing_the_bot_sends_can_ping_anyone(bot, fake_discord, fake_pixabay):
    inter = await fake_discord.invoke("findimage", {"tag": "circle",
                                                    "phrase": "@everyone <@&1234> hi"})
    reply = await answered(fake_discord, inter)
    assert r"@​everyone \<@&1234\>" in reply.content
    text = await ephemeral_error(fake_discord, tag="@everyone", phrase="x")
    assert text == "Pixabay has no images tagged '@​everyone'; try a broader tag."
    await ephemeral_error(fake_discord, tag="<@&1234>", phrase="x", safe=False)
    await reactions_added(fake_discord, reply.id, NUMBERS[:1])
    before = set(fake_discord.messages)
    await fake_discord.react(reply.id, NUMBERS[0], user="bob")
    await fake_discord.wait_for(lambda: set(fake_discord.messages) - before, 30,
                                what="the shared pick")

    sent = []
    for request in fake_discord.requests:
        body = request.json if isinstance(request.json, dict) else {}
        body = body.get("data") if request.route and request.route.endswith("/callback") \
            else body
        if isinstance(body, dict) and ("content" in body or "embeds" in body):
            sent.append((request.route, body.get("allowed_mentions")))
    # the results, the no-results sentence, the refusal and the shared pick
    assert [route for route, _ in sent] == [
        "POST /webhooks/{app_id}/{token}", "POST /webhooks/{app_id}/{token}",
        "POST /interactions/{interaction_id}/{token}/callback",
        "POST /channels/{channel_id}/messages"]
    assert all(mentions == {"parse": []} for _, mentions in sent), sent


async def test_a_400_echoing_the_key_shows_our_sentence_not_pixabays(bot, fake_discord,
                                                                      fake_pixabay):
    fake_pixabay.reject_next()
    text = await ephemeral_error(fake_discord, tag="circle", phrase="a red circle")
    assert text == ("Pixabay refused the search (HTTP 400); try another tag or filters, "
                    "or ask the admins to read the log.")
    assert not any(fake_pixabay.key in m.content for m in fake_discord.messages.values())


async def test_images_left_out_at_the_deadline_are_counted_in_the_summary(
        env, fake_discord, fake_pixabay):
    env["SEARCH_DEADLINE_SECONDS"] = "2"
    fake_pixabay.slow_interval = 1.0
    slow = [e.id for e in fake_pixabay.entries
            if (e.scene.shape, e.scene.colour) == ("star", "green")][:3]
    for image_id_ in slow:
        fake_pixabay.set_image_fault(image_id_, "slow")
    async with running_bot(Settings.from_mapping(env)):
        inter = await fake_discord.invoke("findimage", {"tag": "star green", "phrase": "x"})
        reply = await answered(fake_discord, inter)
    assert not reply.ephemeral
    assert "3 images were still downloading after 2 s and left out." in reply.content
    assert not {image_id(e) for e in reply.embeds} & set(slow)
