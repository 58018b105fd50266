"""Prometheus metrics: scraped over loopback from the running bot after a search, a share
and a refusal."""

import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.__main__ import run
from bot.embeds import MAGNIFIER, NUMBERS
from search.config import Settings
from search.errors import ConfigError
from tests.conftest import bot_env
from tests.test_bot import ephemeral_error, reactions_added, running_bot, search


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data", METRICS_PORT="0")


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_after_a_search_a_share_and_a_refusal(env, fake_discord,
                                                                  fake_pixabay):
    skipped = [e.id for e in fake_pixabay.entries if e.scene.shape == "triangle"
               and e.scene.colour == "green"]
    for i in skipped:
        fake_pixabay.set_image_fault(i, "missing")
    async with running_bot(Settings.from_mapping(env)) as bot:
        assert bot.metrics_url.startswith("http://127.0.0.1:")
        before = await scrape(bot.metrics_url)

        _, reply = await search(fake_discord, tag="triangle", phrase="a red triangle")
        await reactions_added(fake_discord, reply.id, NUMBERS[:1])
        posted = len(fake_discord.messages)
        await fake_discord.react(reply.id, NUMBERS[0], user="bob")
        await fake_discord.wait_for(lambda: len(fake_discord.messages) > posted, 30,
                                    what="the shared pick")
        pick = max(fake_discord.messages)  # the newest message: the pick
        await reactions_added(fake_discord, pick, (MAGNIFIER,))  # the share is recorded
        await ephemeral_error(fake_discord, tag="circle", phrase="a circle", safe=False)
        after = await scrape(bot.metrics_url)

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    pixabay = {"source": "pixabay"}
    assert moved("findimage_searches_total", outcome="results", **pixabay) == 1
    assert moved("findimage_searches_total", outcome="refused", **pixabay) == 1
    assert moved("findimage_search_seconds_count", cache="cold") == 1
    assert moved("findimage_search_seconds_count", cache="warm") == 0
    assert moved("findimage_upstream_requests_total", status="200", **pixabay) == 1
    assert value(after, "findimage_upstream_budget_remaining", **pixabay) == 99
    missing = sum(1 for i in skipped if fake_pixabay.requests_for_image(i))
    assert missing and moved("findimage_images_skipped_total", reason="http 404") == missing
    assert moved("findimage_encoder_batch_size_sum") == 60 - missing  # every image, batched
    assert moved("findimage_encoder_batch_size_count") >= 1
    assert moved("findimage_shares_total") == 1
    assert value(after, "findimage_queue_depth") == 0


async def test_metrics_are_off_unless_a_port_is_set(env, fake_discord):
    env.pop("METRICS_PORT")
    async with running_bot(Settings.from_mapping(env)) as bot:
        assert bot.metrics_url is None


async def test_a_port_in_use_stops_start_up_with_one_sentence(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env["METRICS_PORT"] = str(port)
        with pytest.raises(ConfigError) as caught:
            await run(Settings.from_mapping(env))
    assert str(caught.value).startswith(f"METRICS_PORT {port} on 127.0.0.1 cannot be opened (")
    assert str(caught.value).endswith("; pick a free port or leave METRICS_PORT empty.")
