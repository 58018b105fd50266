"""Search by image, and Openverse as a source, through SearchService with the tiny model."""

from collections import Counter

import numpy as np
import pytest

from bench.fakes.scenes import Scene, jpeg_bytes, render
from search.config import Settings
from search.errors import InvalidQuery
from search.imagequery import blend, more_like
from search.models import Source
from search.service import SearchService
from search.store import Store
from tests.conftest import engine_env


def picture(shape: str, colour: str, background: str, seed: int = 4242) -> bytes:
    """A photo that is not in the catalogue: what a member would attach."""
    return jpeg_bytes(render(Scene(shape, colour, background), seed, 400, 300))


async def test_an_image_of_a_blue_square_returns_blue_squares_first(service, fake_pixabay):
    result = await service.find("square", None, image=picture("square", "blue", "grass"),
                                top=8, candidates=200)
    scenes = [fake_pixabay.truth[h.hit.id] for h in result.hits]
    assert all((s.shape, s.colour) == ("square", "blue") for s in scenes), scenes
    assert result.by_image and result.phrase == ""


async def test_image_and_phrase_meet_halfway(service, fake_pixabay):
    image = picture("square", "blue", "grass")
    both = await service.find("square", "a green square", image=image, top=10,
                              candidates=200)
    colours = Counter(fake_pixabay.truth[h.hit.id].colour for h in both.hits)
    assert colours["blue"] >= 3 and colours["green"] >= 3, colours


def test_blend_is_the_normalised_mean_of_unit_vectors():
    image, text = np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.5, 0.0])  # norms do not count
    query = blend(image, text)
    assert np.allclose(query, [2 ** -0.5, 2 ** -0.5, 0.0])


@pytest.mark.parametrize(("image", "phrase", "message"), [
    (b"GIF89a not really", None, "The picture is not one I can read"),
    (b"\xff\xd8" + b"\x00" * (10 * 1024 * 1024), None, "The image is 10.5 MB"),
    (None, None, "The phrase is empty"),
])
async def test_a_bad_query_image_is_one_sentence(service, fake_pixabay, image, phrase,
                                                 message):
    with pytest.raises(InvalidQuery, match=message):
        await service.find("square", phrase, image=image)
    assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0  # refused first


async def test_more_like_ranks_the_cached_ranking_by_the_pick(service, fake_pixabay):
    result = await service.find("circle", "a red circle on snow", top=5, candidates=200)
    pick = result.hits[0].hit
    vectors = await service.store.get_embeddings(service.vectors_source("pixabay"),
                                                 service.model_key, result.ranking.ids)
    similar = more_like([h for h, _ in result.ranking.entries], vectors, pick)
    assert pick.id not in similar.ids and len(similar) == len(result.ranking) - 1
    top = [fake_pixabay.truth[i] for i in similar.ids[:5]]
    assert all((s.shape, s.colour) == ("circle", "red") for s in top), top


async def test_openverse_works_without_a_pixabay_key(fake_openverse, fake_pixabay, tmp_path,
                                                     tiny_encoder):
    env = engine_env(fake_pixabay, tmp_path / "data", OPENVERSE_API_URL=fake_openverse.api_url,
                     SEARCH_SOURCE="openverse")
    del env["PIXABAY_API_KEY"]
    async with SearchService.open(Settings.from_mapping(env), encoder=tiny_encoder) as svc:
        assert set(svc.sources) == {"openverse"}
        result = await svc.find("circle", "a red circle on snow", top=5, candidates=60)
        assert result.source == "openverse" and result.candidates == 60
        captions = [fake_openverse.truth[h.hit.id].caption for h in result.hits]
        assert captions.count("a red circle on snow") >= 4, captions
        assert {q["page_size"] for q in fake_openverse.queries} == {"20"}
        assert fake_openverse.thumb_requests == 60 and fake_pixabay.api_requests == 0
        fake_openverse.reset_counters()
        again = await svc.find("circle", "a blue circle", top=5, candidates=60)
        assert again.cached and fake_openverse.thumb_requests == 0
        with pytest.raises(InvalidQuery, match="Pixabay is not set up here"):
            await svc.find("circle", "x", source="pixabay")


async def test_embedding_cache_keeps_sources_apart(tmp_path):
    store = Store(tmp_path / "cache.sqlite3")
    pixabay = Source("pixabay", "https://pixabay.com/api/")
    openverse = Source("openverse", "https://api.openverse.org/v1/")
    uuid = "0b7e5a3c-0000-4000-8000-000000000001"
    await store.put_embeddings(pixabay, "m", [(100001, np.ones(4, np.float32))])
    await store.put_embeddings(openverse, "m", [(uuid, np.zeros(4, np.float32))])
    assert await store.get_embeddings(openverse, "m", [100001]) == {}
    assert list(await store.get_embeddings(openverse, "m", [uuid])) == [uuid]
    assert list(await store.get_embeddings(pixabay, "m", [100001])) == [100001]
    await store.aclose()
