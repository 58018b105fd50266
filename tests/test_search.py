"""SearchService end to end: the real aiohttp client, the fake Pixabay, the tiny model."""

import asyncio
import os
import random
import sqlite3
import threading
from collections import Counter

import numpy as np
import pytest

from search.decode import decode_image
from search.errors import AllImagesFailed, InvalidQuery, NoResults
from search.models import Filters
from search.service import DOWNLOADS_IN_FLIGHT, SearchService
from search.sources.pixabay import user_page_url

PHRASES = [
    ("circle", "a red circle on snow"),
    ("star", "a blue star on grass"),
    ("triangle", "a yellow triangle on sand"),
    ("red", "a red square on night"),
]


def precision(fake, hits, phrase: str) -> float:
    return sum(fake.truth[h.hit.id].caption == phrase for h in hits) / len(hits)


@pytest.mark.parametrize(("tag", "phrase"), PHRASES)
async def test_phrase_ranks_matching_scenes_first(service, fake_pixabay, tag, phrase):
    result = await service.find(tag, phrase, top=5, candidates=200)
    assert result.candidates == 200
    assert precision(fake_pixabay, result.hits, phrase) >= 0.8, [
        fake_pixabay.truth[h.hit.id].caption for h in result.hits]
    assert [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    assert result.hits[0].score >= result.hits[-1].score
    first = result.hits[0].hit
    assert first.page_url.startswith("https://pixabay.com/photos/")
    assert first.user and user_page_url(first).startswith("https://pixabay.com/users/")
    assert set(result.timings) >= {"api", "download", "decode", "encode", "rank", "total"}


async def test_stage_times_are_work_not_waiting(service):
    """Decode is decode-thread time and encode is encoder time, not time spent queued."""
    t = (await service.find("circle", "a red circle on snow", candidates=200)).timings
    threads = service.decoder.threads
    assert 0 < t["decode"] <= t["total"] * threads
    assert 0 < t["encode"] <= t["total"]
    assert t["download"] <= t["total"]


async def test_second_phrase_on_same_tag_downloads_nothing(service, fake_pixabay):
    first = await service.find("circle", "a red circle on snow")
    assert first.downloaded == 200 and not first.cached
    fake_pixabay.reset_counters()
    second = await service.find("circle", "a green circle on grass")
    assert fake_pixabay.api_requests == 0
    assert fake_pixabay.image_requests == 0
    assert second.cached and second.embeddings_cached == 200
    assert precision(fake_pixabay, second.hits, "a green circle on grass") >= 0.8


async def test_offset_five_returns_ranks_six_to_ten_of_the_same_ranking(service, fake_pixabay):
    first = await service.find("star", "a purple star on sand", top=5)
    fake_pixabay.reset_counters()
    second = await service.find("star", "a purple star on sand", top=5, offset=5)
    assert [h.rank for h in second.hits] == [6, 7, 8, 9, 10]
    assert [h.hit.id for h in second.hits] == first.ranking.ids[5:10]
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0
    assert [h.hit.id for h in service.page(first.ranking, 5, 5)] == first.ranking.ids[5:10]


async def test_every_score_belongs_to_its_own_image_when_some_fail(
        service, fake_pixabay, tiny_encoder):
    ids = [e.id for e in fake_pixabay.entries if e.scene.shape == "circle"]
    rng = random.Random(7)
    for image_id in rng.sample(ids, 60):
        fake_pixabay.set_image_fault(image_id, rng.choice(["missing", "truncated", "html"]))
    result = await service.find("circle", "a red circle on snow", top=10)
    assert sum(result.skipped.values()) > 0
    text = (await tiny_encoder.encode_text("a red circle on snow")).vector
    check = result.hits + result.ranking.page(100, 3)
    for item in check:
        data = fake_pixabay.entry(item.hit.id).jpeg(340)
        pixels = tiny_encoder.preprocess(
            decode_image(data, min_side=min(tiny_encoder.image_size)))
        alone, _ = await tiny_encoder.encode_images(pixels[None])
        assert float(alone[0] @ text) == pytest.approx(item.score, abs=1e-4)


async def test_broken_images_are_skipped_counted_and_the_rest_ranked(service, fake_pixabay):
    ids = [e.id for e in fake_pixabay.entries
           if e.scene.shape == "hexagon" and e.id not in fake_pixabay.unsafe_ids]
    faults = {"missing": "http 404", "truncated": "truncated", "html": "not an image",
              "garbage": "not an image", "bomb": "too large",
              "foreign_host": "host not allowed"}
    for image_id, kind in zip(ids, faults, strict=False):
        fake_pixabay.set_image_fault(image_id, kind)
    readable = dict(zip(ids[10:13], ["rgba", "gif", "cmyk"], strict=True))
    for image_id, kind in readable.items():
        fake_pixabay.set_image_fault(image_id, kind)
    result = await service.find("hexagon", "a red hexagon on snow", candidates=500)
    assert result.skipped == dict(Counter(faults.values()))
    assert result.candidates == len(ids) - len(faults)
    assert set(readable) <= set(result.ranking.ids)
    foreign = ids[list(faults).index("foreign_host")]
    assert fake_pixabay.requests_for_image(foreign) == 0


async def test_every_image_failing_is_one_clear_error(service, fake_pixabay):
    red_crosses = [e.id for e in fake_pixabay.entries if e.scene.shape == "cross"
                   and e.scene.colour == "red" and e.id not in fake_pixabay.unsafe_ids]
    for image_id in red_crosses:
        fake_pixabay.set_image_fault(image_id, "missing")
    n = len(red_crosses)
    with pytest.raises(AllImagesFailed, match=rf"^None of the {n} images .*\({n} http 404\)\.$"):
        await service.find("cross red", "a red cross on snow")


async def test_unknown_tag_is_no_results(service):
    with pytest.raises(NoResults, match="no images tagged 'zebra'"):
        await service.find("zebra", "a zebra")


@pytest.mark.parametrize(("tag", "phrase", "match"), [
    ("", "a red circle", "tag is empty"),
    ("x" * 101, "a red circle", "101 characters"),
    ("circle", "   ", "phrase is empty"),
    ("circle", "y" * 301, "phrase is 301 characters"),
])
async def test_bad_input_is_refused_before_any_call(service, fake_pixabay, tag, phrase, match):
    with pytest.raises(InvalidQuery, match=match):
        await service.find(tag, phrase)
    assert fake_pixabay.api_requests == 0


async def test_long_phrase_is_truncated_and_the_result_says_so(service):
    long = "a red circle on snow " + "with many more words that the tiny model cannot read " * 3
    result = await service.find("circle", long)
    assert result.truncated
    assert not (await service.find("circle", "a red circle on snow")).truncated


async def test_filters_reach_pixabay_typed(service, fake_pixabay):
    await service.find("circle", "a red circle", filters=Filters(
        orientation="horizontal", colors=("red",), image_type="photo"))
    query = fake_pixabay.queries[-1]
    assert query["orientation"] == "horizontal" and query["colors"] == "red"
    assert query["safesearch"] == "true" and query["per_page"] == "200"
    assert "key" not in query


async def test_corrupt_cache_file_is_rebuilt_and_the_query_answers(settings, tiny_encoder,
                                                                   fake_pixabay):
    settings.data_dir.mkdir(parents=True)
    settings.db_path.write_bytes(b"garbage" * 1000)
    async with SearchService.open(settings, encoder=tiny_encoder) as service:
        result = await service.find("circle", "a red circle on snow", candidates=20)
        assert result.candidates == 20
        assert service.store.rebuilt == 1
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 20


async def test_another_model_does_not_reuse_these_vectors(settings, tiny_encoder, fake_pixabay):
    async with SearchService.open(settings, encoder=tiny_encoder) as service:
        await service.find("circle", "a red circle", candidates=10)
    async with SearchService.open(settings.replace(image_variant=180),
                                  encoder=tiny_encoder) as service:
        fake_pixabay.reset_counters()
        result = await service.find("circle", "a red circle", candidates=10)
        assert result.downloaded == 10 and fake_pixabay.image_requests == 10


async def test_downloads_run_in_parallel_but_never_more_than_the_bound(service, fake_pixabay):
    fake_pixabay.latency = 0.05  # every image request stays open a while, so they overlap
    result = await service.find("circle", "a red circle", candidates=150)
    assert result.downloaded == 150
    assert DOWNLOADS_IN_FLIGHT // 2 <= fake_pixabay.peak_image_requests <= DOWNLOADS_IN_FLIGHT


async def test_concurrent_queries_share_the_encoder(service, fake_pixabay):
    results = await asyncio.gather(
        service.find("circle", "a red circle on snow", candidates=40),
        service.find("square", "a blue square on grass", candidates=40),
        service.find("star", "a yellow star on sand", candidates=40))
    assert [r.candidates for r in results] == [40, 40, 40]
    assert all(np.isfinite(r.hits[0].score) for r in results)


async def test_encoder_and_decode_threads_yield_the_cpu_to_the_event_loop(service):
    await service.find("circle", "a red circle on snow", candidates=20)
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    background = [t for t in threading.enumerate() if t.name.startswith("decode")]
    background.append(service.encoder._thread)
    assert len(background) >= 2
    assert all(os.getpriority(os.PRIO_PROCESS, t.native_id) > loop_nice for t in background)
