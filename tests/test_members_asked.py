"""What members asked for (issue 17), through the real discord.py client against the fake
Discord, the fake Pixabay and the tiny model: embeds by default, grids that page without
downloads, Apps → Find similar images, tag suggestions, languages, and pictures fetched
from Discord's CDN only, under the caps."""

import json
import time

import pytest

from bench.fakes.scenes import Scene, jpeg_bytes, render
from bot.embeds import NEXT, NUMBERS, PREV
from search.config import Settings
from tests.conftest import bot_env
from tests.test_bot import ephemeral_error, image_id, press, reactions_added, running_bot, search
from tests.test_bot_beyond import share, tiles


def picture(shape: str, colour: str, background: str) -> bytes:
    return jpeg_bytes(render(Scene(shape, colour, background), 4242, 400, 300))


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


@pytest.fixture
async def bot(env):
    async with running_bot(Settings.from_mapping(env)) as b:
        yield b


def webhook_writes(fake, inter) -> list:
    return [r for r in fake.requests if r.path.startswith("/webhooks/") and inter.token in r.path
            and r.method in ("POST", "PATCH")]


# -- 1. the default page, the provisional page, grid page turns ---------------------------
async def test_the_default_page_is_one_embed_per_hit_with_link_image_score_and_credit(
        env, fake_discord, fake_pixabay):
    del env["RESULTS_LAYOUT"]  # the default: auto
    async with running_bot(Settings.from_mapping(env)):
        _, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
    assert not reply.attachments and len(reply.embeds) == 5
    for n, embed in enumerate(reply.embeds, 1):
        assert embed["title"].startswith(f"#{n} · score ")
        assert embed["url"].startswith("https://pixabay.com/photos/")
        assert embed["image"]["url"].startswith(fake_pixabay.api_url.replace("/api/", "/get/"))
        assert embed["footer"]["text"].endswith(" on Pixabay")


async def test_a_grid_answer_is_a_grid_while_it_is_still_ranking(env, fake_discord,
                                                                 fake_pixabay):
    env["SEARCH_CANDIDATES"] = "200"
    del env["RESULTS_LAYOUT"]  # auto: seven a page is a grid
    fake_pixabay.latency = 0.3  # a cold search of some seconds: provisional pages come
    async with running_bot(Settings.from_mapping(env)) as bot:
        cog = bot.get_cog("FindImage")
        cog.provisional_after, cog.edit_interval = 0.0, 0.4
        inter = await fake_discord.invoke("findimage", {"tag": "circle", "count": 7,
                                                        "phrase": "a red circle on snow"})
        reply = await inter.wait_followup(1, timeout=120)
        await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:7]))
    writes = webhook_writes(fake_discord, inter)
    provisional = [w for w in writes if "ranked " in (w.json or {}).get("content", "")
                   and "… · the order may still change" in w.json["content"]]
    assert provisional and len(provisional) < len(writes)
    for write in writes:  # every page the member saw was a sheet, never a list
        (embed,) = write.json["embeds"]
        assert embed["image"]["url"] == "attachment://results.jpg", write.json["content"]
        assert len(write.files) == 1
    (sheet,) = fake_discord.messages[reply.id].attachments
    assert tiles(sheet) == 7


async def test_turning_a_grid_page_downloads_nothing_already_downloaded(bot, fake_discord,
                                                                        fake_pixabay):
    _, reply = await search(fake_discord, tag="star", phrase="a blue star on grass",
                            layout="grid")
    fake_pixabay.reset_counters()
    for emoji, page in ((NEXT, 2), (NEXT, 3), (PREV, 2)):
        await press(fake_discord, reply.id, emoji)
        await fake_discord.wait_for(
            lambda p=page: f"page {p}/" in fake_discord.messages[reply.id].content, 30,
            what=f"page {page}")
        (sheet,) = fake_discord.messages[reply.id].attachments
        assert tiles(sheet) == 5
    assert fake_pixabay.image_requests == fake_pixabay.api_requests == 0
    assert len(bot.service.fetcher.recent) <= bot.service.fetcher.recent.max_entries


# -- 2. Apps → Find similar images ----------------------------------------------------
async def find_similar(fake, message_id: int, values: dict, user: str = "alice"):
    opened = await fake.invoke_message_command("Find similar images", message_id, user=user)
    callback = await opened.wait_response()
    assert callback["type"] == 9, callback  # the modal
    submitted = await fake.submit_modal(opened, values)
    return opened, submitted


async def test_find_similar_on_a_members_picture_asks_a_tag_and_ranks_by_it(
        bot, fake_discord, fake_pixabay):
    posted = await fake_discord.post(files=[("holiday.jpg", picture("square", "blue",
                                                                    "grass"))], user="bob")
    opened, submitted = await find_similar(fake_discord, posted.id, {"tag": "square"})
    modal = opened.modal
    assert modal["title"] == "Find similar images"
    inputs = [c for row in modal["components"] for c in row["components"]]
    assert [(c["label"], c.get("required", True)) for c in inputs] == [
        ("Tag", True), ("Phrase (optional)", False)]
    reply = await submitted.wait_followup(1, timeout=120)
    assert not reply.ephemeral and len(reply.embeds) == 5
    await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:5]))
    scenes = [fake_pixabay.truth[image_id(e)] for e in reply.embeds]
    assert sum((s.shape, s.colour) == ("square", "blue") for s in scenes) >= 4, scenes
    assert reply.content.startswith("**image holiday.jpg** · tag square")
    assert fake_discord.cdn_downloads == 1
    # a results message like any other: it pages
    await press(fake_discord, reply.id, NEXT)
    await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                20, what="page 2")


async def test_find_similar_on_our_own_pick_uses_its_stored_vector(bot, fake_discord,
                                                                   fake_pixabay):
    _, reply = await search(fake_discord, tag="star", phrase="a blue star on grass")
    pick = await share(fake_discord, reply.id)
    picked = image_id(pick.embeds[0])
    fake_pixabay.reset_counters()
    encoded = bot.service.encoder.stats.images
    _, submitted = await find_similar(fake_discord, pick.id, {"tag": "star",
                                                              "phrase": "on grass"})
    similar = await submitted.wait_followup(1, timeout=120)
    scenes = [fake_pixabay.truth[image_id(e)] for e in similar.embeds]
    assert sum((s.shape, s.colour) == ("star", "blue") for s in scenes) >= 4, scenes
    assert similar.content.startswith(f"**more like \\#{picked} + on grass**")
    assert fake_pixabay.image_requests == 0 and fake_discord.cdn_downloads == 0
    assert bot.service.encoder.stats.images == encoded  # no picture encoded either


async def test_find_similar_takes_the_members_search_turn_and_a_refusal_gives_it_back(
        env, fake_discord):
    env["USER_COOLDOWN_SECONDS"] = "60"
    async with running_bot(Settings.from_mapping(env)):
        posted = await fake_discord.post(files=[("holiday.jpg", picture("square", "blue",
                                                                        "grass"))], user="bob")
        _, refused = await find_similar(fake_discord, posted.id, {"tag": "   "})
        await fake_discord.wait_for(lambda: any(m.ephemeral for m in refused.followups), 60,
                                    what="the refusal")
        assert next(m for m in refused.followups if m.ephemeral).content.startswith(
            "The tag is empty")
        _, submitted = await find_similar(fake_discord, posted.id, {"tag": "square"})
        reply = await submitted.wait_followup(1, timeout=120)
        assert not reply.ephemeral and len(reply.embeds) == 5  # the refusal cost no turn
        text = await ephemeral_error(fake_discord, tag="circle", phrase="a red circle")
        assert text.startswith("Slow down: you can search again in ")  # this one did


@pytest.mark.parametrize(("message", "expected"), [
    ({"embeds": [{"image": {"url": "https://example.com/cat.jpg"}}]},
     "That picture is not on Discord's own servers, so I will not download it"),
    ({"content": "no picture here"}, "That message has no picture"),
])
async def test_find_similar_refuses_a_picture_elsewhere_in_one_sentence(
        bot, fake_discord, message, expected):
    posted = await fake_discord.post(**message)
    opened = await fake_discord.invoke_message_command("Find similar images", posted.id)
    callback = await opened.wait_response()
    assert callback["type"] == 4 and callback["data"]["flags"] & 64, callback
    assert callback["data"]["content"].startswith(expected)
    assert opened.modal is None


# -- 3. tag suggestions ---------------------------------------------------------------
async def test_tag_suggestions_come_from_this_servers_searches_and_cached_answers(
        bot, fake_discord, fake_pixabay):
    from bot.state import ResultsState
    from search.models import Filters
    from search.ranking import Ranking

    await search(fake_discord, tag="circle", phrase="a red circle on snow")
    # another server searched "cirrus" and "crossbow" here: never suggested to this one
    for tag in ("cirrus", "crossbow"):
        await bot.state.save_results(ResultsState(
            message_id=int(time.time() * 1000) + len(tag), channel_id=1, guild_id=42,
            requester_id=1, tag=tag, phrase="x", filters=Filters(), per_page=5, page=0,
            seconds=0.1, ranking=Ranking(())))
    fake_pixabay.reset_counters()
    texts = bot.service.encoder.stats.texts
    sent = time.monotonic()
    typed = await fake_discord.autocomplete("findimage", {"tag": "ci"}, "tag")
    callback = await typed.wait_response(timeout=3)
    assert callback["type"] == 8
    answered = next(r.at for r in fake_discord.requests if "/callback" in r.path
                    and str(typed.id) in r.path)
    assert answered - sent < 3.0  # Discord's limit
    assert [c["value"] for c in fake_discord.choices(typed)] == ["circle"]
    # the catalogue's words in cached answers: nobody searched "snow" or "red"
    for prefix, word in (("sn", "snow"), ("R", "red")):
        typed = await fake_discord.autocomplete("findimage", {"tag": prefix}, "tag")
        await typed.wait_response(timeout=3)
        assert word in [c["value"] for c in fake_discord.choices(typed)]
    typed = await fake_discord.autocomplete("findimage", {"tag": ""}, "tag")
    await typed.wait_response(timeout=3)
    everything = [c["value"] for c in fake_discord.choices(typed)]
    # what the circles carry: their shape, six colours, four backgrounds
    assert everything[0] == "circle" and len(everything) == 11
    assert "cirrus" not in everything and "crossbow" not in everything
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0
    assert bot.service.encoder.stats.texts == texts  # no model either


# -- 4. language -------------------------------------------------------------------------
async def test_lang_is_passed_to_pixabay_and_refused_for_openverse(
        env, fake_discord, fake_pixabay, fake_openverse):
    env.update(OPENVERSE_API_URL=fake_openverse.api_url, SEARCH_LANGUAGE="fr")
    async with running_bot(Settings.from_mapping(env)):
        await search(fake_discord, tag="circle", phrase="a red circle")
        assert {q["lang"] for q in fake_pixabay.queries} == {"fr"}  # the setting
        fake_pixabay.reset_counters()
        await search(fake_discord, tag="kreis", phrase="a red circle", lang="de")
        assert {q["lang"] for q in fake_pixabay.queries} == {"de"}  # the member's
        typed = await fake_discord.autocomplete("findimage", {"tag": "x", "lang": "deu"},
                                                "lang")
        await typed.wait_response(timeout=3)
        assert [c["value"] for c in fake_discord.choices(typed)] == ["de"]
        text = await ephemeral_error(fake_discord, tag="circle", phrase="x",
                                     source="openverse", lang="de")
        assert text == ("Openverse has no language parameter: its tags are searched as "
                        "typed; leave lang out, or choose source Pixabay.")
        text = await ephemeral_error(fake_discord, tag="circle", phrase="x", lang="xx")
        assert text.startswith("lang must be one of Pixabay's language codes (cs, da, de")
        assert fake_openverse.queries == []


# -- 5. pictures only from Discord's CDN, streamed under the caps -------------------------
async def test_an_attachment_on_another_loopback_port_is_refused(bot, fake_discord,
                                                                 fake_pixabay):
    target = fake_pixabay.entries[0].id
    url = fake_pixabay.image_url(target, 340)  # a real JPEG, one port over
    text = await ephemeral_error(fake_discord, tag="square",
                                 image=("mine.jpg", picture("square", "blue", "grass"),
                                        {"url": url}))
    assert text == ("I only download pictures from Discord's own servers, and your image is "
                    "somewhere else; attach the picture itself.")
    assert fake_pixabay.requests_for_image(target) == 0
    assert fake_pixabay.api_requests == 0


async def test_an_attachment_declaring_100_kb_but_serving_200_mb_is_cut_at_the_cap(
        bot, fake_discord, fake_pixabay):
    served = 200 * 1024 * 1024
    text = await ephemeral_error(fake_discord, tag="square",
                                 image=("big.jpg", picture("square", "blue", "grass"),
                                        {"size": 100_000, "serve_size": served}))
    assert text == "Your image is over 10 MB; attach one of at most 10 MB."
    # the cap is 10 MB; what the sockets' buffers held beyond it is all the CDN wrote
    assert fake_discord.cdn_bytes_sent < 40 * 1024 * 1024, fake_discord.cdn_bytes_sent
    assert fake_pixabay.api_requests == 0


async def test_a_connection_reset_on_the_cdn_asks_to_attach_it_again(bot, fake_discord):
    text = await ephemeral_error(fake_discord, tag="square",
                                 image=("mine.jpg", picture("square", "blue", "grass"),
                                        {"reset": True}))
    assert text == "I could not download your image from Discord; attach it again."


async def test_find_similar_on_a_huge_picture_is_cut_at_the_cap_too(bot, fake_discord):
    posted = await fake_discord.post(files=[("big.png", picture("square", "red", "snow"),
                                             {"size": 90_000, "serve_size": 64 * 2**20})])
    opened, submitted = await find_similar(fake_discord, posted.id, {"tag": "square"})
    await fake_discord.wait_for(lambda: any(m.ephemeral for m in submitted.followups), 60,
                                what="the sentence")
    (said,) = [m for m in submitted.followups if m.ephemeral]
    assert said.content == "That message's image is over 10 MB; attach one of at most 10 MB."
    assert fake_discord.cdn_bytes_sent < 40 * 1024 * 1024
    assert not [m for m in fake_discord.messages.values()
                if m.interaction_id == submitted.id and not m.ephemeral]


# -- 4. near-duplicates and negative terms, through the CLI and the bot -------------------
def with_copies(scene: Scene, n: int):
    """The default catalogue plus ``n`` re-uploads of photos of ``scene`` under new ids."""
    from dataclasses import replace

    from bench.fakes.pixabay import default_catalogue

    entries = list(default_catalogue(10))
    originals = [e for e in entries if e.scene == scene][:n]
    copies = [replace(e, id=990_000 + i * 7) for i, e in enumerate(originals)]
    return entries + copies, {c.id: o.id for c, o in zip(copies, originals, strict=True)}


async def test_cli_folds_near_duplicates_unless_told_not_to(tmp_path):
    from bench.fakes.pixabay import FakePixabay
    from tests.test_cli import cli

    entries, copy_of = with_copies(Scene("circle", "red", "snow"), 3)
    async with FakePixabay(entries) as fake:
        code, out, err = await cli(fake, tmp_path, "circle red snow", "a red circle on snow",
                                   "--top", "13", "--json")
        assert code == 0, err
        folded = json.loads(out)
        ids = [h["id"] for h in folded["hits"]]
        assert folded["folded"] == 3 and folded["candidates"] == 13
        assert len(ids) == 10 and [h["rank"] for h in folded["hits"]] == list(range(1, 11))
        for copy, original in copy_of.items():  # one of each pair stands for both
            assert (copy in ids) != (original in ids)
        code, out, err = await cli(fake, tmp_path, "circle red snow", "a red circle on snow",
                                   "--top", "13", "--json", "--no-dedupe")
        kept = json.loads(out)
        assert kept["folded"] == 0 and len(kept["hits"]) == 13
        assert set(copy_of) | set(copy_of.values()) <= {h["id"] for h in kept["hits"]}
        code, out, err = await cli(fake, tmp_path, "circle red snow", "a red circle on snow",
                                   "--top", "13")
        assert "note: 3 near-duplicates were folded into better-ranked images" in out


async def test_the_results_footer_says_how_many_were_folded(fake_discord, tmp_path):
    from bench.fakes.pixabay import FakePixabay

    entries, copy_of = with_copies(Scene("star", "blue", "grass"), 2)
    async with FakePixabay(entries) as fake:
        env = bot_env(fake_discord, fake, tmp_path / "data")
        async with running_bot(Settings.from_mapping(env)):
            _, reply = await search(fake_discord, tag="star blue grass", phrase="a blue star")
    assert "12 candidates ranked" in reply.content and "page 1/2" in reply.content
    assert "· 2 near-duplicates folded into better-ranked images" in reply.content
    shown = {image_id(e) for e in reply.embeds}
    for copy, original in copy_of.items():
        assert not {copy, original} <= shown


async def test_a_negative_term_ranks_red_circles_not_on_snow_first(fake_pixabay, tmp_path):
    from tests.test_cli import cli

    def backgrounds(out: str) -> list[tuple[str, str]]:
        return [(fake_pixabay.truth[h["id"]].colour, fake_pixabay.truth[h["id"]].background)
                for h in json.loads(out)["hits"]]

    args = ("--top", "10", "--candidates", "200", "--json")
    code, plain, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle", *args)
    assert code == 0, err
    code, minus, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle -snow", *args)
    assert code == 0, err
    assert sum(b == "snow" for _, b in backgrounds(plain)) >= 1, backgrounds(plain)
    assert backgrounds(minus) and all(c == "red" and b != "snow" for c, b in backgrounds(minus))
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "-snow -grass")
    assert code == 2 and out == ""
    assert err == ('error: Your phrase has only negative terms (-snow -grass); say what the '
                   'picture should show too, e.g. "a red circle -snow".\n')
    assert fake_pixabay.api_requests == 1  # one page, cached; the refusal asked nothing


# -- the settings -----------------------------------------------------------------------
def test_the_new_settings_default_and_refuse_bad_values_in_one_sentence():
    from search.errors import ConfigError

    s = Settings.from_mapping({})
    assert s.discord_cdn_hosts == ("cdn.discordapp.com", "media.discordapp.net")
    assert (s.search_language, s.dedupe_similarity) == ("en", 0.9995)
    s = Settings.from_mapping({"DISCORD_CDN_HOSTS": "127.0.0.1:8080, cdn.example.org",
                               "SEARCH_LANGUAGE": "DE", "DEDUPE_SIMILARITY": "0.97"})
    assert s.discord_cdn_hosts == ("127.0.0.1:8080", "cdn.example.org")
    assert (s.search_language, s.dedupe_similarity) == ("de", 0.97)
    for env, sentence in (
            ({"DISCORD_CDN_HOSTS": "https://cdn.discordapp.com/x"},
             "DISCORD_CDN_HOSTS must be a comma list of host names such as cdn.discordapp.com"),
            ({"SEARCH_LANGUAGE": "xx"}, "SEARCH_LANGUAGE must be one of cs, da, de"),
            ({"DEDUPE_SIMILARITY": "high"}, "DEDUPE_SIMILARITY must be a cosine from 0.5 to 1")):
        with pytest.raises(ConfigError, match=sentence):
            Settings.from_mapping(env)


def test_a_cdn_host_with_a_port_allows_that_port_only():
    from search.errors import ImageSkipped
    from search.images import check_url

    assert check_url("http://127.0.0.1:8080/a.jpg", ["127.0.0.1:8080"])
    with pytest.raises(ImageSkipped, match="host not allowed"):
        check_url("http://127.0.0.1:8081/a.jpg", ["127.0.0.1:8080"])
    with pytest.raises(ImageSkipped, match="host not allowed"):
        check_url("http://cdn.discordapp.com/a.jpg", ["cdn.discordapp.com"])  # https only
    assert check_url("https://media.discordapp.net/a.jpg", ["media.discordapp.net"])


def test_cached_answers_give_their_images_tags_for_both_sources():
    from search.store import hit_tags

    pixabay = {"hits": [{"tags": "Red, circle ,  snow"}, {"tags": 7}, {"id": 1}]}
    openverse = {"results": [{"tags": [{"name": "Tiger"}, {"name": "big  cat"}, "x"]}]}
    assert hit_tags(pixabay) == {"red", "circle", "snow"}
    assert hit_tags(openverse) == {"tiger", "big cat"}
    assert hit_tags({"hits": "not a list"}) == set()
