"""Beyond the anchors, through the real discord.py client against the fake Discord: more like
this (🔍 on a pick), search by an attached image, Openverse as a source, the contact sheet."""

import io

import pytest
from PIL import Image

from bench.fakes.scenes import Scene, jpeg_bytes, render
from bot.embeds import MAGNIFIER, NEXT, NUMBERS, PREV
from search.config import Settings
from tests.test_bot import (
    ephemeral_error,
    press,
    reactions_added,
    running_bot,
    search,
)

GREY = (32, 32, 32)  # an empty slot of the sheet


def image_id(embed: dict) -> int:
    return int(embed["url"].rstrip("/").rsplit("-", 1)[1])


def picture(shape: str, colour: str, background: str) -> bytes:
    return jpeg_bytes(render(Scene(shape, colour, background), 4242, 400, 300))


@pytest.fixture
def env(fake_discord, fake_pixabay, fake_openverse, tmp_path):
    from tests.conftest import bot_env

    return bot_env(fake_discord, fake_pixabay, tmp_path / "data",
                   OPENVERSE_API_URL=fake_openverse.api_url, SEARCH_CANDIDATES="200")


@pytest.fixture
async def bot(env):
    async with running_bot(Settings.from_mapping(env)) as b:
        yield b


async def share(fake, results_id: int, n: int = 0, user: str = "alice"):
    """Press a number on a results message; the pick message, once it offers 🔍."""
    before = set(fake.messages)
    await fake.react(results_id, NUMBERS[n], user=user)
    await fake.wait_for(lambda: [m for i, m in fake.messages.items() if i not in before
                                 and m.attachments], 30, what="the pick")
    (pick,) = [m for i, m in fake.messages.items() if i not in before]
    await reactions_added(fake, pick.id, (MAGNIFIER,))
    return pick


async def more_like(fake, pick_id: int, user: str = "bob"):
    before = set(fake.messages)
    await fake.react(pick_id, MAGNIFIER, user=user)
    await fake.wait_for(lambda: [m for i, m in fake.messages.items() if i not in before], 30,
                        what="the more-like message")
    (message,) = [m for i, m in fake.messages.items() if i not in before]
    return message


def tiles(attachment) -> int:
    """How many slots of a contact sheet show a picture (empty slots stay grey)."""
    with Image.open(io.BytesIO(attachment.data)) as sheet:
        sheet = sheet.convert("RGB")
        cols, rows = sheet.width // 256, sheet.height // 256
        return sum(1 for r in range(rows) for c in range(cols)
                   if max(abs(a - b) for a, b in zip(sheet.getpixel((c * 256 + 128, r * 256 + 128)),
                                                     GREY, strict=True)) > 12)


async def test_magnifier_on_a_shared_red_circle_returns_red_circles_first(
        bot, fake_discord, fake_pixabay):
    _, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
    pick = await share(fake_discord, reply.id)
    picked = image_id(pick.embeds[0])
    fake_pixabay.reset_counters()
    encoded = (bot.service.encoder.stats.images, bot.service.encoder.stats.texts)

    similar = await more_like(fake_discord, pick.id)
    await reactions_added(fake_discord, similar.id, (PREV, NEXT, *NUMBERS[:5]))
    link = f"https://discord.com/channels/{fake_discord.guild_id}/{pick.channel_id}/{pick.id}"
    # the label is escaped like any phrase: Discord shows "more like #<id>", linked
    assert similar.content.startswith(f"[**more like \\#{picked}**]({link})")
    assert "199 candidates ranked in " in similar.content  # the pick itself is left out
    ids = [image_id(e) for e in similar.embeds]
    assert picked not in ids
    scenes = [fake_pixabay.truth[i] for i in ids]
    assert all((s.shape, s.colour) == ("circle", "red") for s in scenes), scenes
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0
    assert (bot.service.encoder.stats.images, bot.service.encoder.stats.texts) == encoded

    # it is a results message like any other: it pages and shares
    await press(fake_discord, similar.id, NEXT)
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[similar.id].content,
                                20, what="page 2 of more like")
    again = await share(fake_discord, similar.id, 0, user="bob")
    assert again.embeds[0]["title"] == f"more like \\#{picked}"


async def test_magnifier_works_after_a_restart_on_an_older_pick(env, fake_discord,
                                                                fake_pixabay):
    settings = Settings.from_mapping(env)
    async with running_bot(settings):
        _, reply = await search(fake_discord, tag="star", phrase="a blue star on grass")
        pick = await share(fake_discord, reply.id)
    fake_pixabay.reset_counters()
    async with running_bot(settings):
        similar = await more_like(fake_discord, pick.id)
        scenes = [fake_pixabay.truth[image_id(e)] for e in similar.embeds]
        assert sum((s.shape, s.colour) == ("star", "blue") for s in scenes) >= 4, scenes
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0


async def test_an_attached_blue_square_returns_blue_squares_first(bot, fake_discord,
                                                                  fake_pixabay):
    inter, reply = await search(fake_discord, tag="square",
                                image=("mine.jpg", picture("square", "blue", "grass")))
    assert fake_discord.cdn_downloads == 1  # read through Attachment.read()
    scenes = [fake_pixabay.truth[image_id(e)] for e in reply.embeds]
    assert all((s.shape, s.colour) == ("square", "blue") for s in scenes), scenes
    assert reply.content.startswith("**image mine.jpg** · tag square")
    _, both = await search(fake_discord, tag="square", phrase="a green square",
                           image=("mine.jpg", picture("square", "blue", "grass")))
    colours = {fake_pixabay.truth[image_id(e)].colour for e in both.embeds}
    assert "**image mine.jpg + a green square**" in both.content and "green" in colours


@pytest.mark.parametrize(("options", "expected"), [
    ({}, "Give a phrase, an image, or both"),
    ({"image": ("notes.txt", b"not a picture at all")},
     "The picture is not one I can read"),
    ({"image": ("huge.jpg", b"\xff\xd8" + bytes(11 * 1024 * 1024))},
     "Your image is 11.5 MB; attach one of at most 10 MB."),
    ({"source": "pixabay", "phrase": "x"}, "Pixabay is not set up here"),
])
async def test_image_and_source_refusals_are_one_ephemeral_sentence(
        env, fake_discord, options, expected):
    if options.get("source") == "pixabay":
        env.pop("PIXABAY_API_KEY")
        env["SEARCH_SOURCE"] = "openverse"
    async with running_bot(Settings.from_mapping(env)):
        text = await ephemeral_error(fake_discord, tag="square", **options)
        assert text.startswith(expected), text
    if "huge" in str(options):
        assert fake_discord.cdn_downloads == 0  # refused by its declared size


async def test_openverse_without_a_pixabay_key_credits_creator_and_licence(
        env, fake_discord, fake_openverse, fake_pixabay):
    env.pop("PIXABAY_API_KEY")
    env["SEARCH_SOURCE"] = "openverse"
    async with running_bot(Settings.from_mapping(env)):
        _, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
        assert "images from [Openverse](https://openverse.org)" in reply.content
        first = reply.embeds[0]
        hit_id = first["image"]["url"].split("/images/")[1].split("/")[0]
        assert fake_openverse.truth[hit_id].caption == "a red circle on snow"
        assert first["image"]["url"] == fake_openverse.thumb_url(hit_id)
        assert "Licence: [CC" in first["description"] or "Public Domain" in first["description"]
        assert "](https://creativecommons.org/" in first["description"]
        assert first["footer"]["text"].startswith("Image by ")
        assert {q["page_size"] for q in fake_openverse.queries} == {"20"}
        assert fake_pixabay.api_requests == 0
        pick = await share(fake_discord, reply.id)
        (attachment,) = pick.attachments
        assert attachment.filename == f"openverse-{hit_id}.jpg"
        with Image.open(io.BytesIO(attachment.data)) as full:
            assert max(full.size) == 1280  # the thumbnail endpoint, at full size
        assert "licence [" in pick.embeds[0]["description"]


async def test_a_grid_message_carries_one_image_with_a_tile_per_hit(bot, fake_discord):
    inter, reply = await search(fake_discord, tag="hexagon", phrase="a yellow hexagon",
                                count=7, layout="grid")
    await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:7]))
    (sheet,) = reply.attachments
    assert tiles(sheet) == 7
    (embed,) = reply.embeds
    assert embed["image"]["url"] == "attachment://results.jpg"
    assert [line.split(" · ")[0] for line in embed["description"].splitlines()] == [
        f"**{n}**" for n in range(1, 8)]
    await press(fake_discord, reply.id, NEXT)
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                30, what="page 2 of the grid")
    (turned,) = fake_discord.messages[reply.id].attachments
    assert turned.id != sheet.id and turned.data != sheet.data and tiles(turned) == 7
    assert fake_discord.messages[reply.id].embeds[0]["description"].splitlines()[0].startswith(
        "**1** · #8 · ")


async def test_auto_layout_is_a_grid_above_five_a_page(env, fake_discord):
    env["RESULTS_LAYOUT"] = "auto"
    async with running_bot(Settings.from_mapping(env)):
        _, five = await search(fake_discord, tag="cross", phrase="a red cross", count=5)
        assert len(five.embeds) == 5 and not five.attachments
        _, six = await search(fake_discord, tag="cross", phrase="a red cross", count=6)
        assert len(six.attachments) == 1 and tiles(six.attachments[0]) == 6


async def test_picks_list_shows_each_picks_thumbnail(bot, fake_discord, fake_pixabay):
    _, reply = await search(fake_discord, tag="triangle", phrase="a green triangle")
    pick = await share(fake_discord, reply.id)
    shown = await (await fake_discord.invoke("picks", {})).wait_reply()
    (embed,) = shown.embeds
    assert str(pick.id) in embed["description"]
    thumb = embed["thumbnail"]["url"]
    assert thumb == fake_pixabay.image_url(image_id(pick.embeds[0]), 340)



async def test_magnifier_without_the_cached_vectors_says_so(env, fake_discord, tmp_path):
    settings = Settings.from_mapping(env)
    async with running_bot(settings):
        _, reply = await search(fake_discord, tag="cross", phrase="a blue cross")
        pick = await share(fake_discord, reply.id)
    for old in settings.data_dir.glob("search.sqlite3*"):  # the cache was lost or rebuilt
        old.unlink()
    async with running_bot(settings):
        notice = await more_like(fake_discord, pick.id, user="bob")
        bob = fake_discord.members["bob"].id
        assert notice.content == (f"<@{bob}> I no longer have the images behind that pick; "
                                  "run the search again to find more like it.")
        assert not notice.embeds
