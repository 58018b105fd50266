"""The progressive answer: a slow cold search shows a provisional first page, edits it as
more candidates are ranked (never more often than the interval), and replaces it with the
final ranking, whose reactions come only then. The real discord.py client against the fake
Discord, the fake Pixabay slowed down, the tiny model."""

import re

import pytest

from bot.embeds import NEXT, NUMBERS, PREV
from search.config import Settings
from search.service import PartialRanking
from tests.conftest import bot_env
from tests.test_bot import image_id, reactions_added, running_bot

EDIT_INTERVAL = 0.4


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


def webhook_calls(fake, inter) -> list:
    """The bot's calls on this interaction's webhook (followups and their edits)."""
    return [r for r in fake.requests if r.path.startswith("/webhooks/") and inter.token in r.path]


@pytest.mark.parametrize("backend", ["torch", "auto"])
async def test_a_slow_search_shows_a_provisional_page_then_the_final_one_with_reactions(
        env, fake_discord, fake_pixabay, backend):
    env.update(SEARCH_CANDIDATES="200", CLIP_BACKEND=backend)
    fake_pixabay.latency = 0.3  # ~2 s of downloads for 200 images, 32 at a time
    async with running_bot(Settings.from_mapping(env)) as bot:
        cog = bot.get_cog("FindImage")
        cog.provisional_after, cog.edit_interval = 0.0, EDIT_INTERVAL
        inter = await fake_discord.invoke("findimage", {"tag": "circle",
                                                        "phrase": "a red circle on snow"})
        reply = await inter.wait_followup(1, timeout=120)
        await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:5]))

    calls = webhook_calls(fake_discord, inter)
    contents = [(c.json or {}).get("content", "") for c in calls if c.method in ("POST", "PATCH")]
    provisional = [m for c in contents if (m := re.search(r"ranked (\d+) of (\d+)…", c))]
    assert len(provisional) >= 2, contents
    counts = [(int(m[1]), int(m[2])) for m in provisional]
    assert len(provisional) == len(contents) - 1  # every write but the last is provisional
    assert all(total == 200 for _, total in counts)
    assert [n for n, _ in counts] == sorted(n for n, _ in counts) and counts[0][0] < 200
    # the final ranking replaced the provisional page: same message, last write
    assert "200 candidates ranked in" in contents[-1] and "page 1/40" in contents[-1]
    assert reply.id == inter.followups[0].id and len(inter.followups) == 1
    final = fake_discord.messages[reply.id]
    assert final.content == contents[-1] and len(final.embeds) == 5
    captions = [fake_pixabay.truth[image_id(e)].caption for e in final.embeds]
    assert captions.count("a red circle on snow") >= 4, captions
    # provisional edits at most once per interval (the final one comes when it is ready)
    writes = [c for c in calls if c.method in ("POST", "PATCH")]
    for before, after in zip(writes[:-2], writes[1:-1], strict=True):
        assert after.at - before.at >= EDIT_INTERVAL * 0.95
    # reactions only once the final ranking is there
    reacted = [r.at for r in fake_discord.requests
               if r.method == "PUT" and f"/messages/{reply.id}/reactions/" in r.path]
    assert reacted and min(reacted) > writes[-1].at


async def test_a_quick_search_posts_the_final_page_at_once(env, fake_discord, fake_pixabay):
    async with running_bot(Settings.from_mapping(env)):
        inter = await fake_discord.invoke("findimage", {"tag": "star",
                                                        "phrase": "a blue star on grass"})
        reply = await inter.wait_followup(1, timeout=120)
        await reactions_added(fake_discord, reply.id, (PREV, NEXT, *NUMBERS[:5]))
    writes = [c for c in webhook_calls(fake_discord, inter) if c.method in ("POST", "PATCH")]
    assert len(writes) == 1 and "candidates ranked in" in writes[0].json["content"]


async def test_the_service_hands_out_growing_partial_rankings(service):
    partials: list[PartialRanking] = []
    result = await service.find("circle", "a red circle on snow", candidates=120,
                                partial=partials.append, partial_interval=0.0)
    assert partials and partials[0].ranked < 120
    assert [p.ranked for p in partials] == sorted(p.ranked for p in partials)
    assert all(p.total == 120 and len(p.ranking) == p.ranked for p in partials)
    # the last partial ranks what the final ranks: same candidates, same order
    assert partials[-1].ranking.ids == result.ranking.ids
    # a query answered from the caches has nothing to wait for: no partial
    again: list[PartialRanking] = []
    await service.find("circle", "a green circle on grass", candidates=120,
                       partial=again.append, partial_interval=0.0)
    assert again == []
